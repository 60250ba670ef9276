"""Rendering templates: a Jinja2 sandbox, strict variables, autoescaped HTML, compiled once.

Templates are tenants' code, so they run in Jinja's immutable sandbox: no private attributes,
no mutation of the data they are given. Beyond what the sandbox guards, rendering is bounded:
`range` has a budget per render, `*`, `**` and `%` cannot build huge values, format widths are
capped, and each rendered part has a maximum size.

Conventions for template authors:
- a missing variable is an error (StrictUndefined); test optional ones with `is defined`;
- `None` renders as an empty string, never as "None";
- `data.items` reads the key "items" when the dict has one (keys win over dict methods);
- the subject is one line: line breaks become spaces, and it may not render empty;
- `signed_link(url, email, hours=None)` signs a link (links.py); `|thousands` groups digits.
"""

from __future__ import annotations

import re
import string
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, Undefined, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import do_center, do_format, do_indent
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailsvc.config import settings
from mailsvc.kit.time import utcnow
from mailsvc.templates.links import sign_link

Part = Literal["subject", "text", "html"]
ErrorField = Literal["subject", "text", "html", "template"]

PARTS: tuple[Part, ...] = ("subject", "text", "html")
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit; the API takes no longer subject either
MAX_BODY_CHARS = 4 * 1024 * 1024  # per rendered part
MAX_RANGE_ITEMS = 100_000  # across every range() of one render
MAX_SEQUENCE_ITEMS = 1_000_000  # what `*` may build
MAX_EXPONENT = 256
MAX_WIDTH = 1_000  # format widths, center() and indent()
MAX_LINK_HOURS = 24 * 366
CACHE_SIZE = 1024
_FILENAME = "<template>"


@dataclass(frozen=True)
class TemplateSource:
    """A template as stored: a built-in, or a tenant's own row."""

    name: str
    subject: str
    text: str | None
    html: str | None
    transactional: bool
    version: int
    builtin: bool
    description: str = ""
    variables: tuple[str, ...] = ()  # what a built-in needs, e.g. "data.confirm_url"

    def part(self, part: Part) -> str | None:
        return {"subject": self.subject, "text": self.text, "html": self.html}[part]


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


class TemplateRenderError(Exception):
    """A template could not be rendered with the variables given: never send what it made."""

    def __init__(self, field: ErrorField, reason: str, *, variable: str | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field: ErrorField = field
        self.reason = reason
        # The missing variable, when that is the cause ("data.confirm_url", or just
        # "confirm_url" when the expression cannot be told from the line).
        self.variable = variable

    @property
    def missing_variable(self) -> bool:
        return self.variable is not None

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.field, self.reason), {"variable": self.variable})


class TemplateSyntaxProblem(Exception):
    """A part of a template is not valid Jinja."""

    def __init__(self, field: Part, line: int | None, reason: str) -> None:
        where = f" at line {line}" if line is not None else ""
        super().__init__(f"{field}{where}: {reason}")
        self.field: Part = field
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.field, self.line, self.reason))


# -- bounds the sandbox alone does not set -------------------------------------------------------

_range_budget: ContextVar[list[int] | None] = ContextVar("template_range_budget", default=None)
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_width(width: object) -> None:
    if isinstance(width, int) and abs(width) > MAX_WIDTH:
        raise SecurityError(f"a width of {width} is more than {MAX_WIDTH}")


@lru_cache(maxsize=512)  # format strings are nearly always literals: check each once
def _check_format_string(fmt: str) -> None:
    """Refuse str.format specs that would build huge strings ("{:>999999999}")."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format itself reports the malformed string
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("nested replacement fields in a format spec are not allowed")
        for number in re.findall(r"\d+", spec):
            _check_width(int(number))


@lru_cache(maxsize=512)
def _check_printf_string(fmt: str) -> None:
    for width, precision in _PRINTF_SPEC.findall(fmt):
        for value in (width, precision):
            if value == "*":
                raise SecurityError("'*' widths are not allowed in format strings")
            if value:
                _check_width(int(value))


def _fail_if_undefined(value: object) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    budget = _range_budget.get()
    if budget is not None:
        budget[0] -= len(numbers)
        if budget[0] < 0:
            raise SecurityError(f"range() is limited to {MAX_RANGE_ITEMS} items in one render")
    elif len(numbers) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() is limited to {MAX_RANGE_ITEMS} items")
    return numbers


def _format_filter(value: str, *args: Any, **kwargs: Any) -> str:
    for argument in (value, *args, *kwargs.values()):
        _fail_if_undefined(argument)
    _check_printf_string(str(value))
    return do_format(value, *args, **kwargs)


def _center_filter(value: str, width: int = 80) -> str:
    _check_width(width)
    return do_center(value, width)


def _thousands_filter(value: Any) -> str:
    """12840 -> "12,840": counts in reports read better grouped."""
    _fail_if_undefined(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _indent_filter(
    value: str, width: int | str = 4, first: bool = False, blank: bool = False
) -> str:
    _check_width(width if isinstance(width, int) else len(width))
    return do_indent(value, width, first, blank)


def signed_link(url: Any, email: Any, hours: Any = None) -> str:
    """`url` with a signed, expiring `token` for `email` (see links.py)."""
    _fail_if_undefined(url)
    _fail_if_undefined(email)
    _fail_if_undefined(hours)
    if not isinstance(url, str) or not isinstance(email, str):
        raise TypeError("signed_link(url, email) takes two strings")
    ttl_hours = settings.link_ttl_hours if hours is None else hours
    if not isinstance(ttl_hours, int | float) or not 0 < ttl_hours <= MAX_LINK_HOURS:
        raise ValueError(f"signed_link hours must be between 0 and {MAX_LINK_HOURS}")
    return sign_link(url, email, now=utcnow(), ttl=timedelta(hours=ttl_hours))


def link_ttl_hours() -> int:
    """How long signed_link's links last by default, for the text that says so."""
    return settings.link_ttl_hours


def _finalize(value: Any) -> Any:
    return "" if value is None else value


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
            cache_size=0,  # compiled templates are cached per version by TemplateCache
            auto_reload=False,
        )
        del self.globals["lipsum"]  # lipsum(n) builds n paragraphs: a way to exhaust memory
        self.globals.update(
            range=_bounded_range, signed_link=signed_link, link_ttl_hours=link_ttl_hours
        )
        self.filters.update(
            format=_format_filter,
            center=_center_filter,
            indent=_indent_filter,
            thousands=_thousands_filter,
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if len(sequence) * times > MAX_SEQUENCE_ITEMS:
                        raise SecurityError(f"'*' may not build more than {MAX_SEQUENCE_ITEMS}")
        elif operator == "**":
            if isinstance(right, int) and isinstance(left, int) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
        elif operator == "%" and isinstance(left, str):
            _check_printf_string(left)
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Event data is plain JSON: `data.items` should read the key, not dict.items.
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format_string(value.__self__)
        format_ = wrapped

        def strict_format(*args: Any, **kwargs: Any) -> str:
            # Undefined.__format__ would fail with a TypeError that hides the variable's name.
            for argument in (*args, *kwargs.values()):
                _fail_if_undefined(argument)
            return format_(*args, **kwargs)

        return strict_format


_plain = _Sandbox(autoescape=False)  # subject and text
_html = _Sandbox(autoescape=True)


def environment(part: Part) -> ImmutableSandboxedEnvironment:
    return _html if part == "html" else _plain


# -- errors, as precise as Jinja lets them be ----------------------------------------------------

_NO_ATTRIBUTE = re.compile(r"has no (?:attribute|element) '([^']+)'")
_IS_UNDEFINED = re.compile(r"^'([^']+)' is undefined")


def _template_line(exc: BaseException) -> int | None:
    """The line of the innermost template frame: Jinja rewrites tracebacks to point there."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _FILENAME:
            line = lineno
    return line


def _source_line(source: str, line: int | None) -> str | None:
    if line is None:
        return None
    lines = source.splitlines()
    if not 0 < line <= len(lines):
        return None
    text = lines[line - 1].strip()
    return text if len(text) <= 120 else text[:117] + "..."


def _missing_variable(message: str, line_text: str | None) -> str | None:
    """The variable an UndefinedError is about, as a dotted path when the line shows it."""
    undefined = _IS_UNDEFINED.match(message)
    if undefined:
        return undefined.group(1)
    attribute = _NO_ATTRIBUTE.search(message)
    if attribute is None:
        return None
    name = attribute.group(1)
    if line_text:
        paths = set(
            re.findall(
                rf"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[['\"][^'\"]*['\"]\])*)"
                rf"(?:\.{re.escape(name)}\b|\[['\"]{re.escape(name)}['\"]\])",
                line_text,
            )
        )
        if len(paths) == 1:
            return re.sub(r"\[['\"](\w+)['\"]\]", r".\1", f"{paths.pop()}.{name}")
    return name


def _render_error(part: Part, source: str, exc: Exception) -> TemplateRenderError:
    line = _template_line(exc)
    line_text = _source_line(source, line)
    where = f" (line {line}: {line_text})" if line_text else f" (line {line})" if line else ""
    if isinstance(exc, UndefinedError) and not isinstance(exc, SecurityError):
        message = exc.message or str(exc)
        variable = _missing_variable(message, line_text)
        if variable and variable not in message:
            reason = f"missing variable {variable}: {message}{where}"
        else:
            reason = f"missing variable: {message}{where}"
        return TemplateRenderError(part, reason, variable=variable or "?")
    if isinstance(exc, SecurityError):
        return TemplateRenderError(part, f"not allowed in a template: {exc}{where}")
    if isinstance(exc, TemplateError):
        return TemplateRenderError(part, f"{exc.message or exc}{where}")
    return TemplateRenderError(part, f"{type(exc).__name__}: {exc}{where}")


# -- compiling and rendering --------------------------------------------------------------------


def _compile_part(part: Part, source: str) -> Template:
    env = environment(part)
    try:
        code = env.compile(source, name=None, filename=_FILENAME)
        return env.template_class.from_code(env, code, env.make_globals(None))
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(part, exc.lineno, exc.message or str(exc)) from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateSyntaxProblem(part, None, "the template is nested too deeply") from exc


def check_syntax(source: TemplateSource) -> list[TemplateSyntaxProblem]:
    """Every part that does not compile, in subject, text, html order."""
    problems = []
    for part in PARTS:
        text = source.part(part)
        if text is not None:
            try:
                _compile_part(part, text)
            except TemplateSyntaxProblem as exc:
                problems.append(exc)
    return problems


def _render_part(template: Template, part: Part, variables: Mapping[str, Any]) -> str:
    limit = MAX_SUBJECT_CHARS * 4 if part == "subject" else MAX_BODY_CHARS
    chunks: list[str] = []
    size = 0
    stream: Iterator[str] = template.generate(variables)
    for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise SecurityError(f"the rendered {part} is longer than {limit} characters")
        chunks.append(chunk)
    return "".join(chunks)


_SUBJECT_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(subject: str) -> str:
    """A subject as one header line: line breaks and controls become spaces, runs collapsed."""
    return " ".join(_SUBJECT_BREAKS.sub(" ", subject).split())


class CompiledTemplate:
    """The parts of one template version, compiled; render() is safe to call from any thread."""

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self._parts: dict[Part, Template] = {}
        for part in PARTS:
            text = source.part(part)
            if text is not None:
                self._parts[part] = _compile_part(part, text)
        if "text" not in self._parts and "html" not in self._parts:
            raise TemplateSyntaxProblem("text", None, "a template needs a text or html part")

    def render(self, variables: Mapping[str, Any]) -> Rendered:
        """Subject, text and html; TemplateRenderError if any part fails or comes out blank."""
        token = _range_budget.set([MAX_RANGE_ITEMS])
        try:
            out: dict[Part, str | None] = {}
            for part, template in self._parts.items():
                try:
                    out[part] = _render_part(template, part, variables)
                except Exception as exc:  # a template is tenants' code: any error is theirs
                    raise _render_error(part, self.source.part(part) or "", exc) from exc
        finally:
            _range_budget.reset(token)

        subject = one_line(out["subject"] or "")
        if not subject:
            raise TemplateRenderError("subject", "the subject rendered empty")
        if len(subject) > MAX_SUBJECT_CHARS:
            raise TemplateRenderError(
                "subject", f"the subject rendered longer than {MAX_SUBJECT_CHARS} characters"
            )
        text = out.get("text")
        html = out.get("html")
        # A part that renders blank is left out; both blank would send an empty email.
        text = text if text and text.strip() else None
        html = html if html and html.strip() else None
        if text is None and html is None:
            field: Part = "text" if "text" in self._parts else "html"
            raise TemplateRenderError(field, "the body rendered empty")
        return Rendered(subject=subject, text=text, html=html)


CacheKey = tuple[Hashable, str]  # (tenant id, or None for a built-in; template name)


class TemplateCache:
    """Compiled templates, least recently used out, keyed by (cache_key, version).

    A hit also checks that the source is the one compiled, so a version number reused (a row
    deleted and made again) can never serve a stale template.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[CacheKey, int], CompiledTemplate] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, source: TemplateSource, *, cache_key: CacheKey) -> CompiledTemplate:
        key = (cache_key, source.version)
        with self._lock:
            compiled = self._entries.get(key)
            if compiled is not None and compiled.source == source:
                self._entries.move_to_end(key)
                self.hits += 1
                return compiled
            self.misses += 1
        compiled = CompiledTemplate(source)
        with self._lock:
            self._entries[key] = compiled
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


default_cache = TemplateCache()


def compile_template(source: TemplateSource, *, cache_key: CacheKey) -> CompiledTemplate:
    """The compiled template, from the process-wide cache; TemplateSyntaxProblem if invalid."""
    return default_cache.compile(source, cache_key=cache_key)


def referenced_names(source: TemplateSource) -> tuple[str, ...]:
    """The top-level variables a template reads (`contact`, `data` …), for the listing."""
    names: set[str] = set()
    for part in PARTS:
        text = source.part(part)
        if text is None:
            continue
        env = environment(part)
        try:
            names |= meta.find_undeclared_variables(env.parse(text))
        except TemplateSyntaxError:
            continue
    return tuple(sorted(names - set(_plain.globals)))
