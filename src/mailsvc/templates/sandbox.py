"""The sandbox tenants' templates run in: Jinja2's immutable sandbox, and a budget per render.

Templates are tenants' code. Beyond what Jinja's sandbox guards (private attributes, mutation of
the data given), every render has a wall-clock limit, a budget of loop iterations, and limits on
the size of every value it builds and on the total it builds, each checked before the value is
made wherever one operation could amplify its inputs. engine.py compiles and renders within it.
"""

from __future__ import annotations

import re
import string
import types
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from functools import lru_cache, update_wrapper
from itertools import chain
from time import monotonic
from types import BuiltinMethodType, GeneratorType, MethodType
from typing import Any

from jinja2 import StrictUndefined, Template, Undefined, nodes
from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame, operators, optimizeconst
from jinja2.exceptions import FilterArgumentError, SecurityError, TemplateRuntimeError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, Macro, markup_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace, pass_context, pass_environment, pass_eval_context
from markupsafe import Markup, escape, soft_str

from mailsvc.kit.time import utcnow
from mailsvc.templates.links import link_settings, sign_link

# -- bounds ---------------------------------------------------------------------------------------
# One render (all its parts) gets RENDER_TIME_LIMIT seconds and the budgets below. Values are
# sized *before* they are built wherever one operation can amplify its inputs, so a refusal
# costs no memory; every string, list or dict a template operation makes is then counted.
MAX_LINK_HOURS = 24 * 366  # signed_link(hours=…)
RENDER_TIME_LIMIT = 1.0  # seconds; a preview answers within about this
MAX_BODY_CHARS = 4 * 1024 * 1024  # per rendered part
MAX_VALUE_CHARS = MAX_BODY_CHARS  # one string: a longer one could never be sent
# Built by template operations in one render, freed or not: four full-size parts, so a template
# may transform its largest possible body a few times, while many values cannot add up (16 Mi
# chars is 16 to 64 MiB, depending on the widest character).
MAX_RENDER_CHARS = 4 * MAX_BODY_CHARS
MAX_SEQUENCE_ITEMS = 1_000_000  # what `*` may build (chars or items); also the longest list
# List and dict items made in one render (8 MiB of references), plus the output pieces that
# loops append to buffers: a loop body's outputs cost that many items per iteration.
MAX_RENDER_ITEMS = 1_000_000
MAX_RANGE_ITEMS = 100_000  # across every range() of one render
MAX_LOOP_ITEMS = 100_000  # iterations across every {% for %} of one render, recursion included
MAX_EXPONENT = 256
MAX_INT_BITS = 65_536  # what `*` and `**` may make; str() stops at 4300 digits anyway
MAX_WIDTH = 1_000  # format widths, center(), ljust(), indent() ...
# Inputs of the filters that run in pure Python without a look at the clock, so that one call
# stays near 100 ms at worst (measured at these caps on their worst inputs: title, wordwrap
# ~110 ms, sort ~85 ms, urlize, striptags ~65 ms, on a busy 2-core machine).
MAX_SORT_ITEMS = 20_000  # sort, groupby, dictsort; tojson with indent
MAX_SLOW_TEXT_CHARS = 256 * 1024  # striptags, title, indent, Markup.unescape
MAX_WRAP_CHARS = 32 * 1024  # wordwrap (textwrap)
MAX_URLIZE_CHARS = 16 * 1024  # urlize
MAX_URLIZE_SCHEMES = 16
_CLOCK_EVERY = 32  # cheap steps (loop items, operators) between two looks at the clock
_BIG_STEP_CHARS = 64 * 1024  # a value this large is worth a look at the clock by itself


class RenderTimeLimitExceeded(TemplateRuntimeError):
    """The render ran out of wall-clock time (checked cooperatively, see _Budget)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the template took longer than {limit:g} s to render")


# -- the budget of one render ---------------------------------------------------------------------
#
# Python cannot stop a thread, so the time limit is cooperative: every place where a template can
# spend time without bound passes through a guard that counts and, often enough, looks at the
# clock. Those places are: the items every {% for %} takes from its iterable (_Sandbox._parse
# wraps each For.iter in `environment.loop_items(iter, n)`, which also charges the n output pieces
# one run of the body can append to a buffer; call() wraps the `children` of a recursive
# `loop(children)`; and where LoopContext may take all the items ahead, for loop.length, _parse
# puts `environment.loop_tick(n)` first in the body), every call and method call (call()), every
# filter (the code generator wraps each in `environment.filtered(...)`), the `+ * ** % //`
# operators and `~`, the output, the items lazy filters produce or consume, and the walks that
# size values.
# Straight-line code between two guards is bounded by the template's own size. What one guarded
# step can cost is bounded too: values are capped, and the filters written in pure Python take
# capped inputs, so a render overshoots its limit by little.


class _Budget:
    __slots__ = ("chars", "deadline", "items", "loop_items", "range_items", "steps", "time_limit")

    def __init__(self, time_limit: float) -> None:
        self.time_limit = time_limit
        self.deadline = monotonic() + time_limit
        self.steps = _CLOCK_EVERY
        self.chars = MAX_RENDER_CHARS
        self.items = MAX_RENDER_ITEMS
        self.loop_items = MAX_LOOP_ITEMS
        self.range_items = MAX_RANGE_ITEMS

    def check_clock(self) -> None:
        self.steps = _CLOCK_EVERY
        if monotonic() > self.deadline:
            raise RenderTimeLimitExceeded(self.time_limit)

    def count_loop(self, iterations: int, pieces: int) -> None:
        """Charge loop iterations (as steps too), and the output pieces each appends."""
        self.loop_items -= iterations
        if self.loop_items < 0:
            raise SecurityError(f"loops are limited to {MAX_LOOP_ITEMS} iterations in one render")
        self.items -= iterations * pieces
        if self.items < 0:
            raise SecurityError(f"a render may build at most {MAX_RENDER_ITEMS} list items")
        self.check_clock()

    def charge_chars(self, count: int) -> None:
        if count > MAX_VALUE_CHARS:
            raise SecurityError(f"a value of {count} characters is more than {MAX_VALUE_CHARS}")
        self.chars -= count
        if self.chars < 0:
            raise SecurityError(f"a render may build at most {MAX_RENDER_CHARS} characters")
        if count > _BIG_STEP_CHARS:
            self.check_clock()

    def charge_items(self, count: int) -> None:
        if count > MAX_SEQUENCE_ITEMS:
            raise SecurityError(f"a list of {count} items is more than {MAX_SEQUENCE_ITEMS}")
        self.items -= count
        if self.items < 0:
            raise SecurityError(f"a render may build at most {MAX_RENDER_ITEMS} list items")

    def room(self, chars: int, what: str) -> None:
        """Refuse, before it is built, a string of `chars` characters."""
        if chars > MAX_VALUE_CHARS:
            raise SecurityError(
                f"{what} would build {chars} characters, more than {MAX_VALUE_CHARS}"
            )
        if chars > self.chars:
            raise SecurityError(f"a render may build at most {MAX_RENDER_CHARS} characters")

    def room_items(self, count: int, what: str) -> None:
        if count > MAX_SEQUENCE_ITEMS:
            raise SecurityError(f"{what} would build {count} items, more than {MAX_SEQUENCE_ITEMS}")
        if count > self.items:
            raise SecurityError(f"a render may build at most {MAX_RENDER_ITEMS} list items")


_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)
_render_tenant: ContextVar[uuid.UUID | None] = ContextVar("template_tenant", default=None)


def _current() -> _Budget:
    budget = _budget.get()
    if budget is None:
        # Jinja folds constant expressions at compile time by calling filters: refusing here
        # leaves them to the render, where they are bounded.
        raise SecurityError("templates run only inside CompiledTemplate.render")
    return budget


def _step() -> _Budget:
    """The budget, after a cheap step: the clock is read every _CLOCK_EVERY steps, as reading it
    costs about as much as the step itself."""
    budget = _budget.get()
    if budget is None:
        return _current()
    budget.steps -= 1
    if budget.steps < 0:
        budget.check_clock()
    return budget


_SIZED_RESULTS: dict[type, int] = {
    str: 1,
    Markup: 1,
    list: 2,
    tuple: 2,
    dict: 2,
    set: 2,
    frozenset: 2,
    GeneratorType: 3,
    int: 0,
    float: 0,
    bool: 0,
    type(None): 0,
}


def _checked(budget: _Budget, value: Any) -> Any:
    """Count a value a template operation made; lazy results are counted as they are consumed."""
    kind = _SIZED_RESULTS.get(type(value))
    if kind == 0:
        return value
    if kind == 1:
        size = len(value)
        if size > _BIG_STEP_CHARS or size > budget.chars:
            budget.charge_chars(size)
        else:
            budget.chars -= size
        return value
    if kind is None:
        kind = (
            1
            if isinstance(value, str)
            else 2
            if isinstance(value, list | tuple | dict | set | frozenset)
            else 0
        )
    if kind == 1:
        budget.charge_chars(len(value))
    elif kind == 2:
        budget.charge_items(len(value))
    elif kind == 3 and value.gi_code not in _PRETICKED:
        return _ticking(value, budget)
    return value


def _ticking(
    items: Iterable[Any], budget: _Budget, limit: int = MAX_SEQUENCE_ITEMS
) -> Iterator[Any]:
    """`items`, with a look at the clock every 64 and at most `limit` of them."""
    count = 0
    for item in items:
        count += 1
        if not count & 63:
            if count > limit:
                raise SecurityError(f"a sequence of more than {limit} items is not allowed")
            budget.check_clock()
        yield item


_LOOP_CHUNK = 16
_SLICEABLE = frozenset({list, tuple, str, range})


def _loop_items(source: Any, budget: _Budget, pieces: int) -> Iterator[Any]:
    """What a {% for %} iterates: its iterable, counted (with a look at the clock) every
    _LOOP_CHUNK items and at the end. A list, tuple, string or range is handed out in slices,
    so that its items themselves pass at C speed."""
    if type(source) in _SLICEABLE:
        if len(source) <= _LOOP_CHUNK:
            budget.count_loop(len(source), pieces)
            return iter(source)
        return chain.from_iterable(_loop_slices(source, budget, pieces))
    return _loop_each(source, budget, pieces)


def _loop_slices(source: Any, budget: _Budget, pieces: int) -> Iterator[Any]:
    for start in range(0, len(source), _LOOP_CHUNK):
        part = source[start : start + _LOOP_CHUNK]
        budget.count_loop(len(part), pieces)
        yield part


def _loop_each(source: Any, budget: _Budget, pieces: int) -> Iterator[Any]:
    count = 0
    for item in source:
        count += 1
        if count == _LOOP_CHUNK:
            budget.count_loop(count, pieces)
            count = 0
        yield item
    budget.count_loop(count, pieces)


def _materialise(
    value: Any, budget: _Budget, what: str, limit: int = MAX_SEQUENCE_ITEMS
) -> list[Any] | tuple[Any, ...]:
    """The items of `value`, refused past `limit` before (or while) they are collected."""
    if type(value) is list or type(value) is tuple:
        items: list[Any] | tuple[Any, ...] = value
    elif isinstance(value, str | dict | range | set | frozenset):
        if len(value) > limit:
            raise SecurityError(f"{what} takes at most {limit} items")
        return list(value)
    else:
        items = list(_ticking(value, budget, limit))
    if len(items) > limit:
        raise SecurityError(f"{what} takes at most {limit} items")
    return items


# -- sizing values before they are built ----------------------------------------------------------

_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_COLLECTIONS: tuple[type[Collection[Any]], ...] = (list, tuple, set, frozenset, *_DICT_VIEWS)
_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_OTHER_REPR = 100  # a float, None, a loop or a macro: their str() and repr() are short


def _repr_size(text: str) -> int:
    # repr() doubles backslashes and quotes, and spells an unprintable character in up to 10.
    return (2 if text.isprintable() else 10) * len(text) + 2 + (0 if type(text) is str else 10)


def _text_size(
    value: Any, budget: _Budget, *, as_repr: bool = False, limit: int = MAX_VALUE_CHARS
) -> int:
    """An upper bound of len(str(value)) (of repr(value) with as_repr), exact for a string.

    Containers are walked, every reference counted: a list that holds one big string a million
    times is as big as its str() would be. The walk stops once past `limit`.
    """
    if isinstance(value, str):
        return _repr_size(value) if as_repr else len(value)
    total = 0
    steps = 0
    todo: list[Iterator[Any]] = [iter((value,))]  # an iterator per open container: no copies
    while todo and total <= limit:
        item = next(todo[-1], _END)
        if item is _END:
            todo.pop()
            continue
        steps += 1
        if not steps & 4095:
            budget.check_clock()
        if isinstance(item, str):
            total += _repr_size(item)
        elif type(item) is int:
            total += item.bit_length() // 3 + 2
        elif isinstance(item, _COLLECTIONS):
            total += 16 + 2 * len(item)  # brackets, a type name, ", " between items
            flat = _flat_size(item, as_json=False)
            if flat is None:
                todo.append(iter(item))
            else:
                total += flat
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            todo.append(chain.from_iterable(item.items()))
        elif isinstance(item, Namespace):
            total += 16
            todo.append(iter((object.__getattribute__(item, "_Namespace__attrs"),)))
        else:
            total += _OTHER_REPR
    return total


_END = object()


def _flat_size(items: Collection[Any], *, as_json: bool) -> int | None:
    """The size of items all strings, or all integers (or floats), in a repr or in JSON, at C
    speed; None for anything else, which is walked item by item."""
    kinds = set(map(type, items))
    if kinds <= {str}:
        chars = sum(map(len, items))
        if as_json:  # an escape is at most 6 characters, a non-BMP character two of them
            return (6 if all(map(str.isascii, items)) else 12) * chars
        if 2 * chars > MAX_VALUE_CHARS:
            return 2 * chars  # too long already: no need to look at every character
        printable = all(map(str.isprintable, items))
        return (2 if printable else 10) * chars + 2 * len(items)
    if kinds <= {int, bool}:  # ... and "False" is 5 characters
        return len(items) * max(max(map(int.bit_length, items), default=0) // 3 + 2, 5)
    if kinds <= {float, bool, type(None)}:
        return 24 * len(items)
    return None


def _check_operand(value: Any, budget: _Budget, limit: int = MAX_RENDER_CHARS) -> None:
    """Refuse to compare, sort or search a value whose contents are too long: `x in [big] * n`
    compares x with the same long string n times, at C speed but without end."""
    kind = type(value)
    if kind in _SCALARS or ((kind is str or kind is Markup) and len(value) <= _BIG_STEP_CHARS):
        return
    if _text_size(value, budget, limit=limit) > limit:
        raise SecurityError(f"comparing or sorting values of more than {limit} characters")


def _escaped_size(value: Any, budget: _Budget) -> int:
    """An upper bound of len(escape(value)); exact for a long string."""
    if hasattr(value, "__html__"):
        return _text_size(value, budget)
    if not isinstance(value, str):
        return 5 * _text_size(value, budget)
    if 5 * len(value) <= MAX_VALUE_CHARS:
        return 5 * len(value)  # "&#34;" is the longest entity: no need to count
    return (
        len(value)
        + 4 * (value.count("&") + value.count('"') + value.count("'"))
        + 3 * (value.count("<") + value.count(">"))
    )


def _total_size(items: Collection[Any], budget: _Budget, *, escaped: bool = False) -> int:
    """The sum of _text_size (of _escaped_size) over `items`, at C speed for plain strings and
    numbers (whose str() escape() leaves as it is)."""
    kinds = set(map(type, items))
    if kinds <= {str}:
        size = sum(map(len, items))
        if not escaped:
            return size
        if 5 * size <= MAX_VALUE_CHARS:
            return 5 * size
    elif kinds <= {int, bool}:
        return len(items) * max(max(map(int.bit_length, items), default=0) // 3 + 2, 5)
    elif kinds <= {float, bool, type(None)}:
        return 24 * len(items)
    # One by one; stopping once too big matters: sizing one string may take O(its length), and
    # a list can hold the same long string a million times.
    size_of = _escaped_size if escaped else _text_size
    total = 0
    for item in _ticking(items, budget):
        total += size_of(item, budget)
        if total > MAX_VALUE_CHARS:
            break
    return total


def _number_size(value: Any, precision: int = 0) -> int:
    if isinstance(value, int):
        return value.bit_length() // 3 + 3 + precision
    return 330 + precision  # a float: at most 309 digits, a sign, a point, an exponent


def _line_breaks(text: str) -> int:
    return sum(map(text.count, _LINE_BREAKS))


_NUMBERS = frozenset({int, float})


def _check_power(base: int, exponent: int) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
    if exponent > 0 and base.bit_length() * exponent > MAX_INT_BITS:
        raise SecurityError(f"'**' may not make an integer of more than {MAX_INT_BITS} bits")


def _check_width(width: object) -> None:
    if isinstance(width, int) and abs(width) > MAX_WIDTH:
        raise SecurityError(f"a width of {width} is more than {MAX_WIDTH}")


def _fail_if_undefined(value: object) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


# -- formatting: '%' and str.format ---------------------------------------------------------------

_PrintfSpec = tuple[str | None, int, int | None, str]  # mapping key, width, precision, type
_DIGITS = "0123456789"


def _printf_number(fmt: str, start: int) -> tuple[int, int]:
    """The decimal number at fmt[start:] (0 if none) and where it ends; widths checked."""
    end = start
    while end < len(fmt) and fmt[end] in _DIGITS:
        end += 1
    return _printf_width(fmt[start:end]), end


_NUMBER_CHARS = 4_400  # str(int) stops at 4300 digits; a float takes at most 330 characters
_CACHED_FORMAT_CHARS = 256  # the cache keeps its keys: only short format strings go in it


# The conversions; a bound of the result when they all print numbers; when they take no keys
# and no repr(), the part of a bound that does not depend on the arguments.
_PrintfFormat = tuple[tuple[_PrintfSpec, ...], int | None, int | None]
_printf_cache: dict[str, _PrintfFormat] = {}  # format strings are nearly always literals


def _printf_specs(fmt: str) -> _PrintfFormat:
    """The conversions of a %-format string, and a bound of its result when they are all
    numbers (else None); '*' and wide widths refused."""
    parsed = _printf_cache.get(fmt)
    if parsed is None:
        parsed = _parse_printf(fmt)
        if len(fmt) <= _CACHED_FORMAT_CHARS:  # the cache keeps its keys
            if len(_printf_cache) >= 512:
                _printf_cache.clear()
            _printf_cache[fmt] = parsed
    return parsed


_PRINTF_SPEC = re.compile(r"%(?:\(([^()]*)\))?[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)


def _parse_printf(fmt: str) -> _PrintfFormat:
    specs: list[_PrintfSpec] = []
    for count, match in enumerate(_PRINTF_SPEC.finditer(fmt)):
        if count and not count & 1023:
            _current().check_clock()  # a format string made by `*` can hold 250,000 of them
        key, width, precision, conversion = match.groups()
        if key is None and fmt.startswith("(", match.start() + 1):
            return _parse_printf_exactly(fmt)  # a key with parentheses in it
        if width == "*" or precision == "*":
            raise SecurityError("'*' widths are not allowed in format strings")
        if conversion != "%":
            specs.append(
                (
                    key,
                    _printf_width(width),
                    None if precision is None else _printf_width(precision),
                    conversion,
                )
            )
    return _printf_format(fmt, specs)


def _printf_width(digits: str) -> int:
    if len(digits) > 6:
        raise SecurityError(f"a width of {digits[:12]}... is more than {MAX_WIDTH}")
    width = int(digits) if digits else 0
    _check_width(width)
    return width


def _parse_printf_exactly(fmt: str) -> _PrintfFormat:
    """As CPython's PyUnicode_Format reads a format, for keys with parentheses in them."""
    specs: list[_PrintfSpec] = []
    at = fmt.find("%")
    while at != -1 and at + 1 < len(fmt):
        if specs and not len(specs) & 1023:
            _current().check_clock()
        at += 1
        key = None
        if fmt[at] == "(":
            depth, end = 1, at + 1
            while end < len(fmt) and depth:
                if fmt[end] == ")":
                    depth -= 1
                elif fmt[end] == "(":
                    depth += 1
                end += 1
            key, at = fmt[at + 1 : end - 1], end
        while at < len(fmt) and fmt[at] in "-+ #0":
            at += 1
        if fmt.startswith("*", at):
            raise SecurityError("'*' widths are not allowed in format strings")
        width, at = _printf_number(fmt, at)
        precision = None
        if fmt.startswith(".", at):
            if fmt.startswith("*", at + 1):
                raise SecurityError("'*' widths are not allowed in format strings")
            precision, at = _printf_number(fmt, at + 1)
        if fmt.startswith(("h", "l", "L"), at):
            at += 1
        if at >= len(fmt):
            break  # "incomplete format": '%' itself says so
        if fmt[at] != "%":
            specs.append((key, width, precision, fmt[at]))
        at = fmt.find("%", at + 1)
    return _printf_format(fmt, specs)


def _printf_format(fmt: str, specs: list[_PrintfSpec]) -> _PrintfFormat:
    if any(key is not None for key, _, _, _ in specs):
        return tuple(specs), None, None
    if any(conversion in "sra" for _, _, _, conversion in specs):
        # Without keys or repr(), each argument is formatted once, padded or made more precise
        # at most by its spec: what _printf_size adds to the arguments' own sizes.
        quick = None if any(c in "ra" for _, _, _, c in specs) else len(fmt)
        if quick is not None:
            quick += sum(width + (p or 0) for _, width, p, _ in specs)
        return tuple(specs), None, quick
    numbers_only = len(fmt) + sum(max(width, _NUMBER_CHARS + (p or 0)) for _, width, p, _ in specs)
    return tuple(specs), numbers_only, None


_SCALARS = frozenset({int, float, bool, type(None)})


def _printf_size(budget: _Budget, fmt: str, args: Any) -> int:
    """An upper bound of len(fmt % args), from what each conversion takes."""
    specs, numbers_only, quick = _printf_specs(fmt)
    if numbers_only is not None and numbers_only <= _BIG_STEP_CHARS:
        return numbers_only
    escapes = hasattr(fmt, "__html__")  # Markup % escapes what it formats
    if quick is not None and type(args) is tuple and not escapes:
        for arg in args:
            kind = type(arg)
            if kind is str:
                quick += len(arg)
            elif kind is int:
                quick += arg.bit_length() // 3 + 3
            elif kind is float:
                quick += 330
            else:
                break
        else:
            return quick
    keyed = any(key is not None for key, _, _, _ in specs)
    positional = args if isinstance(args, tuple) else (args,)
    total = len(fmt)
    index = 0
    value: Any
    for key, width, precision, conversion in specs:
        if key is not None:
            value = args.get(key) if keyed and isinstance(args, Mapping) else None
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
        kind = type(value)
        if conversion in "sra":
            if kind is str and conversion == "s":
                size = len(value)
            else:
                size = _text_size(value, budget, as_repr=conversion != "s")
            if escapes and not hasattr(value, "__html__"):
                size *= 5
            if precision is not None:
                size = min(size, precision)
        elif kind is int or kind is float:
            size = _number_size(value, precision or 0)
        else:
            size = _NUMBER_CHARS + (precision or 0)
        total += max(size, width)
        if total > MAX_VALUE_CHARS:
            break  # as in _total_size
    return total


def _check_format_string(fmt: str) -> int:
    """Refuse str.format specs that would build huge strings ("{:>999999999}"); the widest one."""
    if len(fmt) <= _CACHED_FORMAT_CHARS:
        return _cached_format_check(fmt)
    return _format_check(fmt)


@lru_cache(maxsize=512)
def _cached_format_check(fmt: str) -> int:
    return _format_check(fmt)


def _format_check(fmt: str) -> int:
    widest = 0
    try:
        for _, _, spec, _ in string.Formatter().parse(fmt):
            if not spec:
                continue
            if "{" in spec:
                raise SecurityError("nested replacement fields in a format spec are not allowed")
            for number in re.findall(r"\d+", spec):
                _check_width(int(number))
                widest = max(widest, int(number))
    except ValueError:
        pass  # str.format itself reports the malformed string
    return widest


class _BoundedFormatting:
    """str.format for templates: each field is sized before it is made, the total capped."""

    def __init__(self, env: Any, budget: _Budget, widest: int, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)  # type: ignore[call-arg]
        self._budget = budget
        self._widest = widest
        self._escapes = "escape" in kwargs
        self.size = 0

    def _field_size(self, value: Any, as_repr: bool = False) -> int:
        if isinstance(value, int | float) and not as_repr:
            size = _number_size(value, self._widest) * 2  # grouping separators included
        elif self._escapes and not hasattr(value, "__html__"):
            size = 5 * _text_size(value, self._budget, as_repr=as_repr)
        else:
            size = _text_size(value, self._budget, as_repr=as_repr)
        return max(size, self._widest)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            self._budget.room(self.size + self._field_size(value, conversion != "s"), "format()")
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        _step()
        self.size += self._field_size(value)
        self._budget.room(self.size, "format()")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _BoundedFormatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


# -- method calls ---------------------------------------------------------------------------------

_Args = tuple[Any, ...]
_Kwargs = dict[str, Any]
_Guard = Callable[[_Budget, Any, _Args, _Kwargs], _Args]


def _guard_width(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    _check_width(args[0] if args else kwargs.get("width"))
    return args


def _guard_expandtabs(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    tabsize = args[0] if args else kwargs.get("tabsize", 8)
    if isinstance(tabsize, int) and "\t" in owner:
        budget.room(len(owner) + owner.count("\t") * max(tabsize, 0), "expandtabs()")
    return args


def _replaced_size(
    budget: _Budget, text: str, old: str, new: Any, count: Any, escapes: bool
) -> int:
    """An upper bound of len(text.replace(old, new, count)); Markup escapes `new`."""
    if old and len(old) > len(text):
        return len(text)
    hits = text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    new_size = _escaped_size(new, budget) if escapes else _text_size(new, budget)
    return len(text) + hits * max(new_size - len(old), 0)


def _guard_replace(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        escapes = isinstance(owner, Markup)
        old = str(escape(args[0])) if escapes and len(args[0]) <= len(owner) else args[0]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        budget.room(_replaced_size(budget, owner, old, args[1], count, escapes), "replace()")
    return args


def _guard_join(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if not args:
        return args
    items = _materialise(args[0], budget, "join()")
    escapes = isinstance(owner, Markup)  # Markup.join escapes the items
    if not escapes and not set(map(type, items)) <= {str}:
        return (items, *args[1:])  # str.join refuses anything but strings before it builds
    size = len(owner) * max(len(items) - 1, 0) + _total_size(items, budget, escaped=escapes)
    budget.room(size, "join()")
    return (items, *args[1:])


def _guard_split(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if len(owner) < MAX_SEQUENCE_ITEMS:
        return args  # at most len + 1 pieces
    # Splitting at most once past the limit makes a list that _checked then refuses.
    sep = args[0] if args else kwargs.pop("sep", None)
    maxsplit = args[1] if len(args) > 1 else kwargs.pop("maxsplit", -1)
    if isinstance(maxsplit, int) and not 0 <= maxsplit <= MAX_SEQUENCE_ITEMS:
        maxsplit = MAX_SEQUENCE_ITEMS
    return (sep, maxsplit)


def _guard_splitlines(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if len(owner) >= MAX_SEQUENCE_ITEMS:
        budget.room_items(_line_breaks(owner) + 1, "splitlines()")
    return args


def _guard_case(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if not owner.isascii():  # "ß".upper() is "SS": a case mapping can triple a string
        budget.room(3 * len(owner), "changing case")
    return args


def _guard_slow_text(budget: _Budget, owner: str, args: _Args, kwargs: _Kwargs) -> _Args:
    if len(owner) > MAX_SLOW_TEXT_CHARS:
        raise SecurityError(
            f"striptags() and unescape() take at most {MAX_SLOW_TEXT_CHARS} characters"
        )
    return args


def _guard_escape(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    if args:
        budget.room(_escaped_size(args[0], budget), "escape()")
    return args


# Methods a template may call, by the type they are bound to: None when the result can be no
# larger than the object itself, else a guard that sizes the result first. Anything else is
# refused, in particular str.encode (bytes), translate and maketrans (not worth bounding),
# dict.fromkeys, int.to_bytes, set.union, and methods reached through a class (`dict.update`).
_STR_METHODS: dict[str, _Guard | None] = {
    **dict.fromkeys(
        (
            "count endswith find index isalnum isalpha isascii isdecimal isdigit isidentifier "
            "islower isnumeric isprintable isspace istitle isupper lstrip partition "
            "removeprefix removesuffix rfind rindex rpartition rstrip startswith strip"
        ).split()
    ),
    **dict.fromkeys(("center", "ljust", "rjust", "zfill"), _guard_width),
    **dict.fromkeys(("capitalize", "casefold", "lower", "swapcase", "title", "upper"), _guard_case),
    **dict.fromkeys(("split", "rsplit"), _guard_split),
    **dict.fromkeys(("striptags", "unescape"), _guard_slow_text),
    "expandtabs": _guard_expandtabs,
    "join": _guard_join,
    "replace": _guard_replace,
    "splitlines": _guard_splitlines,
}


def _guard_operands(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    for value in (owner, *args):
        _check_operand(value, budget)
    return args


_SEQUENCE_METHODS: dict[str, _Guard | None] = {
    "copy": None,
    "count": _guard_operands,
    "index": _guard_operands,
}
_DICT_METHODS: dict[str, _Guard | None] = dict.fromkeys(("copy", "get", "items", "keys", "values"))
_NUMBER_METHODS: dict[str, _Guard | None] = dict.fromkeys(
    ("as_integer_ratio", "bit_count", "bit_length", "conjugate", "fromhex", "hex", "is_integer")
)
_SET_METHODS: dict[str, _Guard | None] = dict.fromkeys(
    ("copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset")
)
_NO_METHODS: dict[str, _Guard | None] = {}
# Methods reached through a class rather than bound to a value: `dict.update(data, ...)` would
# otherwise mutate the caller's data, past the immutable sandbox.
_DESCRIPTORS = frozenset(
    {
        types.ClassMethodDescriptorType,
        types.GetSetDescriptorType,
        types.MemberDescriptorType,
        types.MethodDescriptorType,
        types.MethodWrapperType,
        types.WrapperDescriptorType,
    }
)


_GUARDS: dict[tuple[type, Any, str], _Guard | None] = {}  # few: (method type, owner type, name)


def _method_guard(method: Any) -> _Guard | None:
    owner = method.__self__
    key = (type(method), owner if isinstance(owner, type) else type(owner), method.__name__)
    try:
        return _GUARDS[key]
    except KeyError:
        guard = _GUARDS[key] = _find_method_guard(method)
        return guard


def _find_method_guard(method: Any) -> _Guard | None:
    owner = method.__self__
    name = method.__name__
    if isinstance(owner, str):
        table = _STR_METHODS
    elif type(method) is MethodType:
        if isinstance(owner, type) and issubclass(owner, Markup) and name == "escape":
            return _guard_escape
        if isinstance(owner, LoopContext) and name == "changed":
            return _guard_operands  # it compares its arguments with the last ones
        return None  # Jinja's own runtime objects: loop.cycle(), cycler.next(), ...
    elif isinstance(owner, list | tuple | range):
        table = _SEQUENCE_METHODS
    elif isinstance(owner, dict):
        table = _DICT_METHODS
    elif isinstance(owner, int | float):
        table = _NUMBER_METHODS
    elif isinstance(owner, set | frozenset):
        table = _SET_METHODS
    elif isinstance(owner, _DICT_VIEWS):
        table = {"isdisjoint": None}
    else:
        table = _NO_METHODS
    try:
        return table[name]
    except KeyError:
        where = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        if owner is None:
            where = "str"  # str.maketrans, a static method
        raise SecurityError(f"{where}.{name}() is not allowed in a template") from None


# -- filters --------------------------------------------------------------------------------------

_PASS_MARKERS = {
    "context": pass_context,
    "eval_context": pass_eval_context,
    "environment": pass_environment,
}


# Filters that can take a good part of the capped time on their largest input: the clock is read
# after each call. The others cost about what a C string method does on a capped value.
_SLOW_FILTERS = frozenset(
    (
        "dictsort groupby indent join list map max min reject rejectattr replace select "
        "selectattr slice sort striptags sum title tojson unique urlencode urlize wordcount "
        "wordwrap xmlattr"
    ).split()
)


# Filters that return a number, or an object that already exists, in constant time: their
# results need no counting (a loop that calls one is counted by the loop).
_UNCOUNTED_FILTERS = frozenset(
    "abs attr count d default first float int last length random round wordcount".split()
)


def _text_input(value: Any, what: str, *, cap: int | None = None, case: bool = False) -> None:
    """Size, before a filter's str() (or case mapping) makes it, the string the filter works on."""
    kind = type(value)
    if kind in _SCALARS or (kind is str and cap is None and not (case and not value.isascii())):
        return
    budget = _current()
    size = len(value) if isinstance(value, str) else _text_size(value, budget)
    if cap is not None and size > cap:
        raise SecurityError(f"{what} takes at most {cap} characters")
    if case and not (isinstance(value, str) and value.isascii()):
        size *= 3  # "ß".upper() is "SS", "ﬃ" is "FFI"
    budget.room(size, what)


def _case_filter(
    func: Callable[[str], str], name: str, cap: int | None = None
) -> Callable[..., str]:
    what = f"the {name} filter"

    def case_filter(s: Any) -> str:
        _text_input(s, what, cap=cap, case=True)
        return func(s)

    return case_filter


def _string_filter(value: Any) -> str:
    if type(value) is str:
        return value
    _text_input(value, "the string filter")
    return soft_str(value)


def _safe_filter(value: Any) -> Markup:
    _text_input(value, "the safe filter")
    return jinja_filters.do_mark_safe(value)


def _trim_filter(value: Any, chars: str | None = None) -> str:
    _text_input(value, "the trim filter")
    return jinja_filters.do_trim(value, chars)


@pass_environment
def _truncate_filter(
    env: Any,
    s: Any,
    length: int = 255,
    killwords: bool = False,
    end: str = "...",
    leeway: int | None = None,
) -> str:
    if type(s) is not str:
        _text_input(s, "the truncate filter")
    return jinja_filters.do_truncate(env, s, length, killwords, end, leeway)


def _striptags_filter(value: Any) -> str:
    _text_input(value, "the striptags filter", cap=MAX_SLOW_TEXT_CHARS)
    return jinja_filters.do_striptags(value)


def _format_filter(value: str, *args: Any, **kwargs: Any) -> str:
    for argument in (value, *args, *kwargs.values()):
        _fail_if_undefined(argument)
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    if type(value) is not str:
        _text_input(value, "the format filter")
    budget = _current()
    fmt = value if isinstance(value, str) else soft_str(value)
    size = _printf_size(budget, fmt, kwargs or args)
    if size > _BIG_STEP_CHARS:
        budget.room(size, "format")
    return fmt % (kwargs or args)  # as jinja2.filters.do_format


def _center_filter(value: str, width: int = 80) -> str:
    _check_width(width)
    _text_input(value, "the center filter")
    return jinja_filters.do_center(value, width)


def _thousands_filter(value: Any) -> str:
    """12840 -> "12,840": counts in reports read better grouped."""
    _fail_if_undefined(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}"
    _text_input(value, "the thousands filter")
    return str(value)


def _indent_filter(
    value: str, width: int | str = 4, first: bool = False, blank: bool = False
) -> str:
    _check_width(width if isinstance(width, int) else len(width))
    _text_input(value, "the indent filter", cap=MAX_SLOW_TEXT_CHARS)
    text = soft_str(value)
    prefix = width if isinstance(width, int) else len(width)
    _current().room(len(text) + (_line_breaks(text) + 2) * (max(prefix, 0) + 1), "indent")
    return jinja_filters.do_indent(value, width, first, blank)


@pass_eval_context
def _replace_filter(
    eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None
) -> str:
    """Jinja's replace, sized first: the escaping follows jinja2.filters.do_replace."""
    budget = _current()
    for value in (s, old, new):
        budget.room(_text_size(value, budget), "the replace filter")
    if count is None:
        count = -1
    text: str
    if not eval_ctx.autoescape:
        text, old_text, new_text = str(s), str(old), str(new)
    elif hasattr(old, "__html__") or (hasattr(new, "__html__") and not hasattr(s, "__html__")):
        budget.room(_escaped_size(s, budget), "the replace filter")
        text, old_text, new_text = escape(s), soft_str(old), soft_str(new)
    else:
        text, old_text, new_text = soft_str(s), soft_str(old), soft_str(new)
    escapes = isinstance(text, Markup)
    if escapes and len(old_text) <= len(text):
        old_text = escape(old_text)
    budget.room(
        _replaced_size(budget, text, old_text, new_text, count, escapes), "the replace filter"
    )
    return text.replace(old_text, new_text, count)


@pass_eval_context
def _join_filter(
    eval_ctx: EvalContext, value: Any, d: Any = "", attribute: str | int | None = None
) -> str:
    budget = _current()
    items = _materialise(value, budget, "the join filter")
    if attribute is not None:
        getter = jinja_filters.make_attrgetter(eval_ctx.environment, attribute)
        items = list(map(getter, _ticking(items, budget)))
    # With autoescape, a Markup separator or item makes the other items escaped (do_join).
    escapes = eval_ctx.autoescape and (hasattr(d, "__html__") or not set(map(type, items)) <= {str})
    separator = (_escaped_size if escapes else _text_size)(d, budget)
    size = _total_size(items, budget, escaped=escapes)
    budget.room(size + separator * max(len(items) - 1, 0), "the join filter")
    return jinja_filters.sync_do_join(eval_ctx, items, d)


def _list_filter(value: Any) -> list[Any]:
    return list(_materialise(value, _current(), "the list filter"))


def _batch_filter(value: Any, linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    budget = _current()
    items = _materialise(value, budget, "the batch filter")
    fill = (
        -len(items) % linecount
        if fill_with is not None and isinstance(linecount, int) and linecount > 0
        else 0
    )
    budget.charge_items(len(items) + fill)
    return jinja_filters.do_batch(items, linecount, fill_with)


def _slice_filter(value: Any, slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    budget = _current()
    items = _materialise(value, budget, "the slice filter")
    if isinstance(slices, int) and slices > max(len(items), MAX_WIDTH):
        # It loops `slices` times however short the input: 10**9 empty columns is no layout.
        raise SecurityError(
            f"slice() into {slices} parts is more than {max(len(items), MAX_WIDTH)}"
        )
    budget.charge_items(len(items) + (slices if isinstance(slices, int) else 0))
    return jinja_filters.sync_do_slice(items, slices, fill_with)


@pass_environment
def _sum_filter(
    environment: Any, iterable: Any, attribute: str | int | None = None, start: Any = 0
) -> Any:
    budget = _current()
    parts = _materialise(iterable, budget, "the sum filter")
    if attribute is not None:
        getter = jinja_filters.make_attrgetter(environment, attribute)
        parts = list(map(getter, _ticking(parts, budget)))
    if not isinstance(start, list | tuple):
        return sum(_ticking(parts, budget), start)
    # sum() of sequences copies the growing result at each step: join them in one pass instead.
    kind = list if isinstance(start, list) else tuple
    if not set(map(type, parts)) <= {kind}:
        for part in _ticking(parts, budget):
            if not isinstance(part, kind):
                name = kind.__name__
                raise TypeError(
                    f'can only concatenate {name} (not "{type(part).__name__}") to {name}'
                )
    budget.room_items(len(start) + sum(map(len, parts)), "the sum filter")
    return kind(chain(start, *parts))


def _sorting(func: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A filter that sorts with a key in pure Python: its input is capped (MAX_SORT_ITEMS)."""

    @pass_environment
    def sorting(environment: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        items = _materialise(value, budget, what, MAX_SORT_ITEMS)
        _check_operand(items, budget, MAX_VALUE_CHARS)  # its comparisons run in C
        return func(environment, items, *args, **kwargs)

    return sorting


def _dictsort_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, Mapping):
        if len(value) > MAX_SORT_ITEMS:
            raise SecurityError(f"the dictsort filter takes at most {MAX_SORT_ITEMS} items")
        _check_operand(value, _current(), MAX_VALUE_CHARS)
    return jinja_filters.do_dictsort(value, *args, **kwargs)


def _consuming(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that iterates its input in Python: the items are counted as they are taken.

    map, select, unique, min... all take the context or the environment first."""
    marker = func.jinja_pass_arg  # type: ignore[attr-defined]

    def consuming(first: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(value, list | tuple | str | dict) and not value):
            value = _ticking(value, _current())
        return func(first, value, *args, **kwargs)

    return _PASS_MARKERS[marker.name](consuming)


# Generators whose every item comes from an input _consuming already counts.
_PRETICKED = frozenset(
    func.__code__
    for func in (
        jinja_filters.sync_do_map,
        jinja_filters.sync_do_reject,
        jinja_filters.sync_do_rejectattr,
        jinja_filters.sync_do_select,
        jinja_filters.sync_do_selectattr,
        jinja_filters.sync_do_unique,
    )
)

_WORD = re.compile(r"\w+")


def _wordcount_filter(s: Any) -> int:
    """Jinja's wordcount without the list of every word it would make."""
    _text_input(s, "the wordcount filter")
    budget = _current()
    count = 0
    for count, _ in enumerate(_WORD.finditer(soft_str(s)), 1):
        if not count & 4095:
            budget.check_clock()
    return count


def _escape_filter(value: Any) -> Markup:
    budget = _current()
    budget.room(_escaped_size(value, budget), "escaping")
    return escape(value)


def _forceescape_filter(value: Any) -> Markup:
    budget = _current()
    budget.room(5 * _text_size(value, budget), "escaping")
    return jinja_filters.do_forceescape(value)


@pass_environment
def _wordwrap_filter(
    environment: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    _text_input(s, "the wordwrap filter", cap=MAX_WRAP_CHARS)
    budget = _current()
    text = soft_str(s)
    separator = _text_size(
        environment.newline_sequence if wrapstring is None else wrapstring, budget
    )
    if isinstance(width, int) and width > 0 and (len(text) + 1) * separator > _BIG_STEP_CHARS:
        # Two lines in a row hold more than `width` characters, or the second would have fit.
        lines = 2 * len(text) // width + _line_breaks(text) + 2
        budget.room(len(text) + lines * separator, "the wordwrap filter")
    return jinja_filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


_SPACE_RUN = re.compile(r"\s+")


@pass_eval_context
def _urlize_filter(
    eval_ctx: EvalContext,
    value: Any,
    trim_url_limit: int | None = None,
    nofollow: bool = False,
    target: str | None = None,
    rel: str | None = None,
    extra_schemes: Iterable[str] | None = None,
) -> str:
    _text_input(value, "the urlize filter", cap=MAX_URLIZE_CHARS)
    budget = _current()
    text = soft_str(value)
    if extra_schemes is not None:
        extra_schemes = _materialise(
            extra_schemes, budget, "urlize's extra_schemes", MAX_URLIZE_SCHEMES
        )
    policies = eval_ctx.environment.policies
    # Each word may become <a href="https://WORD" rel="..." target="...">WORD</a>, escaped.
    attributes = 5 * sum(
        _text_size(extra, budget)
        for extra in (rel, target, policies["urlize.rel"], policies["urlize.target"])
        if extra is not None
    )
    words = 1 + sum(1 for _ in _SPACE_RUN.finditer(text))
    budget.room(10 * len(text) + words * (attributes + 64), "the urlize filter")
    return jinja_filters.do_urlize(
        eval_ctx, value, trim_url_limit, nofollow, target, rel, extra_schemes
    )


def _json_size(value: Any, budget: _Budget, indent: int, limit: int) -> tuple[int, int]:
    """An upper bound of the length of htmlsafe JSON for `value`, and how many values it holds
    (the walk stops past `limit` values or MAX_VALUE_CHARS)."""
    total = 0
    count = 0
    todo: list[Iterator[Any]] = [iter((value,))]  # as in _text_size; the depth is its length
    while todo and total <= MAX_VALUE_CHARS and count <= limit:
        item = next(todo[-1], _END)
        if item is _END:
            todo.pop()
            continue
        count += 1
        if not count & 4095:
            budget.check_clock()
        # A value on a line of its own when indented; an escape is at most 12 characters.
        line = 4 + (indent * len(todo) + 1 if indent else 0)
        total += line
        if isinstance(item, str):
            total += (6 if item.isascii() else 12) * len(item)
        elif isinstance(item, list | tuple):
            flat = _flat_size(item, as_json=True)
            if flat is None:
                todo.append(iter(item))
            else:
                count += len(item)
                total += flat + len(item) * (line + indent)
        elif isinstance(item, dict):
            todo.append(chain.from_iterable(item.items()))
        elif type(item) is int:
            total += item.bit_length() // 3 + 2
        else:
            total += 24
    return total, count


@pass_eval_context
def _tojson_filter(eval_ctx: EvalContext, value: Any, indent: int | str | None = None) -> Markup:
    budget = _current()
    width = 0
    if indent is not None:
        width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
        _check_width(width)
    limit = MAX_SORT_ITEMS if indent is not None else MAX_SEQUENCE_ITEMS * 8
    size, count = _json_size(value, budget, max(width, 0), limit)
    if indent is not None and count > MAX_SORT_ITEMS:  # json indents in pure Python
        raise SecurityError(f"tojson with an indent takes at most {MAX_SORT_ITEMS} values")
    budget.room(size, "the tojson filter")
    return jinja_filters.do_tojson(eval_ctx, value, indent)  # type: ignore[arg-type]


def _urlencode_filter(value: Any) -> str:
    budget = _current()
    # A character is at most 4 UTF-8 bytes, each spelled %XX; "&" and "=" join the pairs.
    if isinstance(value, str):
        size = (3 if value.isascii() else 12) * len(value)
    else:
        size = 12 * _text_size(value, budget)
    budget.room(size, "the urlencode filter")
    return jinja_filters.do_urlencode(value)


@pass_eval_context
def _xmlattr_filter(eval_ctx: EvalContext, d: Any, autospace: bool = True) -> str:
    budget = _current()
    if isinstance(d, Mapping):
        budget.room(
            _total_size(list(chain.from_iterable(d.items())), budget, escaped=True) + 4 * len(d),
            "the xmlattr filter",
        )
    return jinja_filters.do_xmlattr(eval_ctx, d, autospace)


_COMPARING_TESTS = "!= < <= == > >= eq equalto ge greaterthan gt in le lessthan lt ne".split()


def _comparing_test(test: Any) -> Callable[..., Any]:
    """A test that compares its value with another (==, in ...), both sized first."""

    def comparing(value: Any, other: Any) -> Any:
        budget = _step()
        _check_operand(value, budget)
        _check_operand(other, budget)
        return test(value, other)

    return update_wrapper(comparing, test)


def _filters(defaults: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Every filter, bounded; pprint is left out (pure Python, O(depth x items) output). Results
    are counted by _Sandbox.filtered, which the code generator wraps around each filter call."""
    filters = {name: func for name, func in defaults.items() if name != "pprint"}
    filters.update(
        batch=_batch_filter,
        capitalize=_case_filter(jinja_filters.do_capitalize, "capitalize"),
        center=_center_filter,
        dictsort=_dictsort_filter,
        e=_escape_filter,
        escape=_escape_filter,
        forceescape=_forceescape_filter,
        format=_format_filter,
        groupby=_sorting(jinja_filters.sync_do_groupby, "the groupby filter"),
        indent=_indent_filter,
        join=_join_filter,
        list=_list_filter,
        lower=_case_filter(jinja_filters.do_lower, "lower"),
        map=_consuming(jinja_filters.sync_do_map),
        max=_consuming(jinja_filters.do_max),
        min=_consuming(jinja_filters.do_min),
        reject=_consuming(jinja_filters.sync_do_reject),
        rejectattr=_consuming(jinja_filters.sync_do_rejectattr),
        replace=_replace_filter,
        safe=_safe_filter,
        select=_consuming(jinja_filters.sync_do_select),
        selectattr=_consuming(jinja_filters.sync_do_selectattr),
        slice=_slice_filter,
        sort=_sorting(jinja_filters.do_sort, "the sort filter"),
        string=_string_filter,
        striptags=_striptags_filter,
        sum=_sum_filter,
        thousands=_thousands_filter,
        title=_case_filter(jinja_filters.do_title, "title", MAX_SLOW_TEXT_CHARS),
        tojson=_tojson_filter,
        trim=_trim_filter,
        truncate=_truncate_filter,
        unique=_consuming(jinja_filters.sync_do_unique),
        upper=_case_filter(jinja_filters.do_upper, "upper"),
        urlencode=_urlencode_filter,
        urlize=_urlize_filter,
        wordcount=_wordcount_filter,
        wordwrap=_wordwrap_filter,
        xmlattr=_xmlattr_filter,
    )
    return filters


# -- the environment ------------------------------------------------------------------------------


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    budget = _budget.get()
    if budget is not None:
        budget.range_items -= len(numbers)
        if budget.range_items < 0:
            raise SecurityError(f"range() is limited to {MAX_RANGE_ITEMS} items in one render")
    elif len(numbers) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() is limited to {MAX_RANGE_ITEMS} items")
    return numbers


def signed_link(url: Any, email: Any, hours: Any = None) -> str:
    """`url` with a signed, expiring `token` for `email`, bound to the rendering tenant."""
    _fail_if_undefined(url)
    _fail_if_undefined(email)
    _fail_if_undefined(hours)
    if not isinstance(url, str) or not isinstance(email, str):
        raise TypeError("signed_link(url, email) takes two strings")
    if hours is not None and (
        not isinstance(hours, int | float) or not 0 < hours <= MAX_LINK_HOURS
    ):
        raise ValueError(f"signed_link hours must be between 0 and {MAX_LINK_HOURS}")
    ttl = link_settings().ttl if hours is None else timedelta(hours=hours)
    tenant_id = _render_tenant.get()
    if tenant_id is None:
        raise SecurityError("signed_link() signs only while a tenant's template renders")
    return sign_link(url, email, tenant_id=tenant_id, now=utcnow(), ttl=ttl)


def link_ttl_hours() -> int:
    """How long signed_link's links last by default, for the text that says so."""
    return int(link_settings().ttl / timedelta(hours=1))


_LOOP_GUARDS = frozenset({"loop_items", "loop_tick"})
# What a loop body may read of `loop` without LoopContext taking every item ahead.
_LOOP_STREAMING = frozenset(
    "changed cycle depth depth0 first index index0 last nextitem previtem".split()
)


def _may_count_ahead(loop: nodes.For) -> bool:
    """Whether the body uses `loop` other than by the attributes that read one item ahead."""
    uses = sum(1 for name in loop.find_all(nodes.Name) if name.name == "loop")
    streaming = sum(
        1
        for attribute in loop.find_all(nodes.Getattr)
        if isinstance(attribute.node, nodes.Name)
        and attribute.node.name == "loop"
        and attribute.attr in _LOOP_STREAMING
    )
    return uses > streaming


def _size_output(value: Any, *, escaped: bool, kept: bool) -> None:
    """Size the string that printing `value` makes (escape() copies even a plain string), and
    count it when it is `kept` in a buffer until the buffer is joined."""
    kind = type(value)
    if kind is float or kind is bool or (kind is int and value.bit_length() <= 64):
        return  # a short string: output pieces are counted per loop iteration
    budget = _budget.get() or _current()
    if kind is str or kind is Markup:
        size = len(value)
        if escaped and kind is str and 5 * size > MAX_VALUE_CHARS:
            size = _escaped_size(value, budget)
    elif kind is int:
        size = value.bit_length() // 3 + 2
    else:
        size = (_escaped_size if escaped else _text_size)(value, budget)
    if size > _BIG_STEP_CHARS:
        budget.room(size, "the output")
    if not kept:
        return
    if size > _BIG_STEP_CHARS or size > budget.chars:
        budget.charge_chars(size)
    else:
        budget.chars -= size


def _output_pieces(body: list[nodes.Node]) -> int:
    """How many output pieces one run of `body` can append, its own loops and macros aside."""
    pieces = 0
    todo: list[nodes.Node] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, nodes.Output):
            pieces += len(node.nodes)
        elif isinstance(node, nodes.For):
            pieces += 1 + _output_pieces(node.else_)  # its body is charged by its own guard
            continue
        elif isinstance(node, nodes.Macro | nodes.CallBlock):
            pieces += 1  # a macro's body runs when called, into a buffer of its own
            continue
        todo.extend(node.iter_child_nodes())
    return pieces


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~`, `{{ output }}` and the loop guards going through the
    environment, and every filter's result through _Sandbox.filtered."""

    def _make_finalize(self) -> CodeGenerator._FinalizeInfo:
        # Constants are finalized at compile time; the rest by _output_child_pre below.
        return self._FinalizeInfo(lambda value: str("" if value is None else value), None)

    def _output_child_pre(
        self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo
    ) -> None:
        # Yielded output is capped by _render_part; a buffer (a macro's, a block's) keeps every
        # piece until it is joined, so what goes there is counted as it is made.
        kept = frame.buffer is not None
        if frame.eval_ctx.volatile:
            self.write(f"environment.output(context.eval_ctx.autoescape, {kept}, ")
        elif frame.eval_ctx.autoescape:
            self.write(
                "environment.output_html(" if not kept else "environment.output(True, True, "
            )
        else:
            self.write(
                "environment.output_text(" if not kept else "environment.output(False, True, "
            )

    def _output_child_post(
        self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo
    ) -> None:
        self.write(")")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.concat_values({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    @optimizeconst
    def visit_Filter(self, node: nodes.Filter, frame: Frame) -> None:
        if node.name in _UNCOUNTED_FILTERS:
            super().visit_Filter(node, frame)
            return
        self.write("environment.filtered(")
        super().visit_Filter(node, frame)
        self.write(", True)" if node.name in _SLOW_FILTERS else ")")

    @optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        self.write("(")
        self._visit_operand(node.expr, frame)
        for operand in node.ops:
            self.visit(operand, frame)
        self.write(")")

    def visit_Operand(self, node: nodes.Operand, frame: Frame) -> None:
        self.write(f" {operators[node.op]} ")
        self._visit_operand(node.expr, frame)

    def _visit_operand(self, node: nodes.Expr, frame: Frame) -> None:
        if isinstance(node, nodes.Const):
            self.visit(node, frame)
        else:
            self.write("environment.operand(")
            self.visit(node, frame)
            self.write(")")

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        # The loop guards _parse adds: called directly, not through the sandbox's call().
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name in _LOOP_GUARDS:
            self.write(f"environment.{node.node.name}(")
            for arg in node.args:
                self.visit(arg, frame)
                self.write(", ")
            self.write(")")
            return
        super().visit_Call(node, frame, forward_caller=forward_caller)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%", "//"})
    code_generator_class = _CodeGenerator

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            cache_size=0,  # compiled templates are cached per version by TemplateCache
            auto_reload=False,
        )
        del self.globals["lipsum"]  # lipsum(n) builds n paragraphs: a way to exhaust memory
        self.globals.update(
            range=_bounded_range, signed_link=signed_link, link_ttl_hours=link_ttl_hours
        )
        self.filters = _filters(self.filters)
        for name in _COMPARING_TESTS:
            self.tests[name] = _comparing_test(self.tests[name])

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        template = super()._parse(source, name, filename)
        for loop in list(template.find_all(nodes.For)):
            pieces = _output_pieces(loop.body)
            # LoopContext may take all the items at once (for loop.length, revindex) and hand
            # them out unguarded, and `loop(children)` recurses: then the body counts for itself.
            if loop.recursive or _may_count_ahead(loop):
                tick = nodes.Call(
                    nodes.EnvironmentAttribute("loop_tick"), [nodes.Const(pieces)], [], None, None
                )
                loop.body.insert(0, nodes.ExprStmt(tick).set_lineno(loop.lineno))
                pieces = 0
            items = nodes.Call(
                nodes.EnvironmentAttribute("loop_items"),
                [loop.iter, nodes.Const(pieces)],
                [],
                None,
                None,
            )
            items.set_lineno(loop.lineno)
            loop.iter = items
        return template

    def loop_items(self, iterable: Any, pieces: int) -> Iterator[Any]:
        return _loop_items(iterable, _current(), pieces)

    def loop_tick(self, pieces: int) -> None:
        budget = _step()
        if pieces:
            budget.items -= pieces
            if budget.items < 0:
                raise SecurityError(f"a render may build at most {MAX_RENDER_ITEMS} list items")

    def output_text(self, value: Any) -> str:
        """What `{{ value }}` yields where nothing is escaped: None as ""; str() sized first."""
        kind = type(value)
        if kind is str:
            return value  # type: ignore[no-any-return]
        if kind is float or (kind is int and value.bit_length() <= 64):
            return str(value)
        if value is None:
            return ""
        _size_output(value, escaped=False, kept=False)
        return str(value)

    def output_html(self, value: Any) -> Markup:
        """What `{{ value }}` yields in HTML: escape(value), sized first; None as ""."""
        if type(value) is Markup:
            return value
        if value is None:
            return Markup()
        if type(value) is not str or 5 * len(value) > MAX_VALUE_CHARS:
            _size_output(value, escaped=True, kept=False)
        return escape(value)

    def output(self, autoescape: bool, kept: bool, value: Any) -> str:
        """`{{ value }}` written to a buffer, or under an {% autoescape %} known only now."""
        if value is None:
            return Markup() if autoescape else ""
        kind = type(value)
        if kind is not (Markup if autoescape else str):  # else it prints as itself
            _size_output(value, escaped=autoescape, kept=kept)
        return escape(value) if autoescape else str(value)

    def operand(self, value: Any) -> Any:
        """A value being compared (==, <, in ...): sized first, see _check_operand."""
        _check_operand(value, _step())
        return value

    def filtered(self, value: Any, slow: bool = False) -> Any:
        """A filter's result: a step on the clock (a look at it after a slow one), counted."""
        budget = _budget.get() or _current()
        budget.steps -= 1
        if slow or budget.steps < 0:
            budget.check_clock()
        if type(value) is str:  # the common case, inline
            size = len(value)
            if size > _BIG_STEP_CHARS or size > budget.chars:
                budget.charge_chars(size)
            else:
                budget.chars -= size
            return value
        return _checked(budget, value)

    def call_filter(
        self,
        name: str,
        value: Any,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        context: Context | None = None,
        eval_ctx: EvalContext | None = None,
    ) -> Any:
        """A filter called by another one (map): counted like those the template calls."""
        result = super().call_filter(name, value, args, kwargs, context, eval_ctx)
        return self.filtered(result, name in _SLOW_FILTERS)

    def concat(self, pieces: Iterable[str]) -> str:
        """Joins the output buffer of a macro, a block or {% set %}: sized before it is joined."""
        budget = _current()
        if type(pieces) is not list:
            # A block's output, made on demand (`self.block()`): its pieces were not counted
            # as they were made, so they are capped as they come.
            kept: list[str] = []
            size = 0
            for piece in pieces:
                size += len(piece)
                if size > MAX_VALUE_CHARS:
                    raise SecurityError(f"a block of more than {MAX_VALUE_CHARS} characters")
                kept.append(piece)
            pieces = kept
        size = sum(map(len, pieces))
        if size > _BIG_STEP_CHARS or size > budget.chars:
            budget.charge_chars(size)
        else:
            budget.chars -= size
        return "".join(pieces)

    def concat_values(self, join: Callable[[Iterable[Any]], str], values: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`: sized before it is joined (markup_join escapes all but Markup)."""
        budget = _step()
        escapes = join is markup_join and any(hasattr(value, "__html__") for value in values)
        size = 0
        for value in values:
            if escapes and not hasattr(value, "__html__"):
                size += _escaped_size(value, budget)
            elif isinstance(value, str):
                size += len(value)
            else:
                size += _text_size(value, budget)
            if size > MAX_VALUE_CHARS:
                break  # sizing the rest could take long: see _total_size
        budget.room(size, "'~'")
        return _checked(budget, join(values))  # type: ignore[no-any-return]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget.get() or _current()
        budget.steps -= 1
        if budget.steps < 0:
            budget.check_clock()
        if type(left) in _NUMBERS and type(right) in _NUMBERS:
            if type(left) is int and type(right) is int:
                if operator == "*" and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError(
                        f"'*' may not make an integer of more than {MAX_INT_BITS} bits"
                    )
                if operator == "**":
                    _check_power(left, right)
            return self.binop_table[operator](left, right)
        if operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                # Markup + str escapes the str, and str + Markup too.
                left_markup, right_markup = hasattr(left, "__html__"), hasattr(right, "__html__")
                size = (
                    _escaped_size(left, budget) if right_markup and not left_markup else len(left)
                ) + (
                    _escaped_size(right, budget) if left_markup and not right_markup else len(right)
                )
                budget.room(size, "'+'")
            elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
                budget.room_items(len(left) + len(right), "'+'")
        elif operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    size = len(sequence) * times
                    if size > MAX_SEQUENCE_ITEMS:
                        raise SecurityError(f"'*' may not build more than {MAX_SEQUENCE_ITEMS}")
                    if isinstance(sequence, str):
                        budget.room(size, "'*'")
                    else:
                        budget.room_items(size, "'*'")
            if isinstance(left, int) and isinstance(right, int):  # bools
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError(
                        f"'*' may not make an integer of more than {MAX_INT_BITS} bits"
                    )
        elif operator == "**":
            if isinstance(right, int) and isinstance(left, int):
                _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            budget.room(_printf_size(budget, left, right), "'%'")
        return _checked(budget, self.binop_table[operator](left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.get() or _current()
        budget.steps -= 1
        if budget.steps < 0:
            budget.check_clock()
        kind = type(__obj)
        if kind is Macro:
            # Safe and without a context, so called directly (as Context.call would); its output
            # was sized and counted when its buffer was joined.
            kwargs.pop("_loop_vars", None)
            kwargs.pop("_block_vars", None)
            return __obj(*args, **kwargs)
        if kind is BuiltinMethodType or kind is MethodType:
            guard = _method_guard(__obj)
            if guard is not None:
                args = guard(budget, __obj.__self__, args, kwargs)
            if kind is BuiltinMethodType:  # allow-listed above, and takes no context
                kwargs.pop("_loop_vars", None)
                kwargs.pop("_block_vars", None)
                return _checked(budget, __obj(*args, **kwargs))
        elif kind is LoopContext and args:
            # `loop(children)` in a recursive loop: the children count as the loop's items.
            args = (_loop_items(args[0], budget, 0), *args[1:])
        elif kind in _DESCRIPTORS:
            raise SecurityError(
                f"calling {getattr(__obj, '__qualname__', kind.__name__)} is not allowed"
            )
        return _checked(budget, super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Event data is plain JSON: `data.items` should read the key, not dict.items.
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, with Jinja's sandboxed lookups and bounded output."""
        if not isinstance(value, MethodType | BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        template = value.__self__
        if not isinstance(template, str):
            return None
        widest = _check_format_string(template)
        result_type = type(template)
        is_format_map = value.__name__ == "format_map"
        escape_ = template.escape if isinstance(template, Markup) else None
        env = self

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            # Undefined.__format__ would fail with a TypeError that hides the variable's name.
            for argument in (*args, *kwargs.values()):
                _fail_if_undefined(argument)
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            budget = _current()
            formatter: _BoundedFormatting
            if escape_ is None:
                formatter = _BoundedFormatter(env, budget, widest)
            else:
                formatter = _BoundedEscapeFormatter(env, budget, widest, escape=escape_)
            formatter.size = len(template)
            return result_type(formatter.vformat(template, args, kwargs))

        return update_wrapper(bounded_format, value)


_plain = _Sandbox(autoescape=False)  # subject and text
_html = _Sandbox(autoescape=True)


def environment(part: str) -> ImmutableSandboxedEnvironment:
    """The html part's environment autoescapes; the subject's and the text's do not."""
    return _html if part == "html" else _plain


@contextmanager
def budgeted(tenant_id: uuid.UUID, time_limit: float) -> Iterator[None]:
    """One render's budget and tenant, for the code inside (set in the thread that renders)."""
    budget_token = _budget.set(_Budget(time_limit))
    tenant_token = _render_tenant.set(tenant_id)
    try:
        yield
    finally:
        _render_tenant.reset(tenant_token)
        _budget.reset(budget_token)


def render_stream(
    template: Template, variables: Mapping[str, Any], *, limit: int, what: str
) -> str:
    """The template's output for `variables`, at most `limit` characters, within the budget."""
    budget = _current()
    chunks: list[str] = []
    size = 0
    look_at = min(limit, _BIG_STEP_CHARS)  # the clock, every so many characters of output
    stream: Iterator[str] = template.generate(variables)
    for chunk in stream:
        size += len(chunk)
        if size > look_at:
            if size > limit:
                raise SecurityError(f"the rendered {what} is longer than {limit} characters")
            budget.check_clock()
            look_at = min(limit, size + _BIG_STEP_CHARS)
        chunks.append(chunk)
    return "".join(chunks)
