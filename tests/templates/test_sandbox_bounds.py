"""The sandbox's bounds: time, memory and sizes, against templates written to exhaust them."""

from __future__ import annotations

import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from mailsvc.kit.time import utcnow
from mailsvc.templates.engine import (
    CompiledTemplate,
    Rendered,
    TemplateRenderError,
    TemplateSource,
    check_syntax,
)
from mailsvc.templates.links import InvalidLink, verify_link
from mailsvc.templates.sandbox import MAX_LOOP_ITEMS, MAX_RENDER_CHARS, RENDER_TIME_LIMIT

TENANT = uuid.UUID(int=7)
MIB = 1024 * 1024
# Every attack below would make, unbounded, at least 100 Mi characters (or as many list items,
# or a second of CPU); refused, it may not cost more than this much memory.
MAX_PEAK = 64 * MIB
MARGIN = 0.5  # seconds a render may overshoot its time limit here, on a busy test machine


def source(text: str, *, html: bool = False) -> TemplateSource:
    return TemplateSource(
        name="t",
        subject="Hello",
        text=None if html else text,
        html=text if html else None,
        transactional=True,
        version=1,
        builtin=False,
    )


def render(text: str, /, *, html: bool = False, **variables: Any) -> Rendered:
    return CompiledTemplate(source(text, html=html)).render(variables, tenant_id=TENANT)


class Refusal:
    """How a render that was refused went: the error, how long it took, the memory it took."""

    def __init__(self, error: TemplateRenderError, seconds: float, peak: int) -> None:
        self.error = error
        self.seconds = seconds
        self.peak = peak


def refuse(
    text: str, /, *, html: bool = False, time_limit: float = RENDER_TIME_LIMIT, **variables: Any
) -> Refusal:
    template = CompiledTemplate(source(text, html=html))
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(TemplateRenderError) as caught:
            template.render(variables, tenant_id=TENANT, time_limit=time_limit)
        seconds = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Refusal(caught.value, seconds, peak)


# -- values that grow ---------------------------------------------------------------------------

WORD = "w" * 10_000
N = 500_000_000

# (template, variables, the reason it is refused): one of each way a value can be grown.
GROWERS: list[tuple[str, dict[str, Any], str]] = [
    # str methods
    ("{{ 'x'.ljust(n) }}", {"n": N}, "a width of 500000000 is more than 1000"),
    ("{{ 'x'.rjust(n) }}", {"n": N}, "a width of 500000000 is more than 1000"),
    ("{{ 'x'.center(n) }}", {"n": N}, "a width of 500000000 is more than 1000"),
    ("{{ '1'.zfill(n) }}", {"n": N}, "a width of 500000000 is more than 1000"),
    (
        "{{ tabs.expandtabs(1000) }}",
        {"tabs": "\t" * 200_000},
        "expandtabs() would build 200200000 characters, more than 4194304",
    ),
    (
        "{{ text.replace('a', word) }}",
        {"text": "a" * 20_000, "word": WORD},
        "replace() would build 200000000 characters, more than 4194304",
    ),
    (
        "{{ word.join(items) }}",
        {"word": WORD, "items": ["a"] * 20_000},
        "join() would build 200010000 characters, more than 4194304",
    ),
    (
        "{{ ('{0}' * 20000).format(word) }}",
        {"word": WORD},
        "format() would build 4200000 characters, more than 4194304",
    ),
    (
        "{{ ('{a}' * 20000).format_map(data) }}",
        {"data": {"a": WORD}},
        "format() would build 4200000 characters, more than 4194304",
    ),
    (
        "{{ ('%(a)s' * 20000) % data }}",
        {"data": {"a": WORD}},
        "'%' would build 4200000 characters, more than 4194304",
    ),
    # filters
    (
        "{{ items|center(80) }}",
        {"items": [WORD] * 20_000},
        "the center filter would build 400040016 characters, more than 4194304",
    ),
    (
        "{{ lines|indent(1000) }}",
        {"lines": "\n" * 200_000},
        "indent would build 200402002 characters, more than 4194304",
    ),
    (
        "{{ text|wordwrap(1, wrapstring=word) }}",
        {"text": "a " * 10_000, "word": WORD},
        "the wordwrap filter would build 400040000 characters, more than 4194304",
    ),
    (
        "{{ text|replace('a', word) }}",
        {"text": "a" * 20_000, "word": WORD},
        "the replace filter would build 200000000 characters, more than 4194304",
    ),
    (
        "{{ items|join(word) }}",
        {"items": ["a"] * 20_000, "word": WORD},
        "the join filter would build 200010000 characters, more than 4194304",
    ),
    (
        "{{ [1]|batch(n, 'x')|list|length }}",
        {"n": 50_000_000},
        "a list of 50000000 items is more than 1000000",
    ),
    (
        "{{ [1]|slice(n)|list|length }}",
        {"n": 5_000_000},
        "slice() into 5000000 parts is more than 1000",
    ),
    (
        "{{ ('%(a)s' * 20000)|format(a=word) }}",
        {"word": WORD},
        "format would build 4200000 characters, more than 4194304",
    ),
    # a list printed, or made a string, is as long as everything it refers to
    ("{{ items }}", {"items": [WORD] * 20_000}, "the output would build 400040016 characters"),
    ("{{ items|string }}", {"items": [WORD] * 20_000}, "the string filter would build"),
    ("{{ items|tojson }}", {"items": [WORD] * 20_000}, "the tojson filter would build"),
    ("{{ '%s' % (items,) }}", {"items": [WORD] * 20_000}, "'%' would build"),
    ("{{ '{}'.format(items) }}", {"items": [WORD] * 20_000}, "format() would build"),
    # operators
    (
        "{{ " + " ~ ".join(["a"] * 40) + " }}",
        {"a": "a" * 3_000_000},
        "'~' would build 6000000 characters, more than 4194304",
    ),
    ("{{ " + " + ".join(["a"] * 40) + " }}", {"a": "a" * 3_000_000}, "'+' would build 6000000"),
    (
        "{% set ns = namespace(x=3 ** 200) %}{% for i in range(16) %}"
        "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x|string|length }}",
        {},
        "'*' may not make an integer of more than 65536 bits",
    ),
    ("{{ (9 ** 256) ** 256 }}", {}, "'**' may not make an integer of more than 65536 bits"),
    # a value doubled at each step: a namespace attribute, or a chain of {% set %}
    (
        "{% set ns = namespace(s='x') %}{% for i in range(27) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        {},
        "'~' would build 8388608 characters, more than 4194304",
    ),
    (
        "{% set s = 'x' %}" + "{% set s = s ~ s %}" * 27 + "{{ s|length }}",
        {},
        "'~' would build 8388608 characters, more than 4194304",
    ),
    (
        "{% set s = 'x' %}" + "{% set s = s + s %}" * 27 + "{{ s|length }}",
        {},
        "'+' would build 8388608 characters, more than 4194304",
    ),
]


@pytest.mark.parametrize(("template", "variables", "reason"), GROWERS)
def test_a_value_that_would_grow_past_the_bounds_is_refused_before_it_is_made(
    template: str, variables: dict[str, Any], reason: str
) -> None:
    refusal = refuse(template, **variables)

    assert refusal.error.field == "text"
    assert refusal.error.reason.startswith("not allowed in a template: " + reason)
    assert refusal.peak < MAX_PEAK
    assert refusal.seconds < RENDER_TIME_LIMIT + MARGIN


def test_the_issues_own_ljust_is_refused_without_allocating() -> None:
    refusal = refuse("{{ 'x'.ljust(500000000) }}")

    assert refusal.error.reason == (
        "not allowed in a template: a width of 500000000 is more than 1000 "
        "(line 1: {{ 'x'.ljust(500000000) }})"
    )
    assert refusal.peak < MIB


def test_an_escaped_output_kept_in_a_buffer_is_counted() -> None:
    # Each {{ big }} escapes a copy of it into the macro's buffer, joined only at the end.
    template = "{% macro m() %}{% for i in range(40) %}{{ big }}{% endfor %}{% endmacro %}{{ m() }}"

    refusal = refuse(template, html=True, big="x" * 3_000_000)

    assert refusal.error.field == "html"
    assert refusal.error.reason.startswith(
        f"not allowed in a template: a render may build at most {MAX_RENDER_CHARS} characters"
    )
    assert refusal.peak < MAX_PEAK


def test_a_block_rendered_on_demand_is_capped_as_it_comes() -> None:
    template = (
        "{% if false %}{% block b %}{% for i in range(100000) %}{{ big }}{% endfor %}"
        "{% endblock %}{% endif %}{{ self.b()|length }}"
    )

    refusal = refuse(template, html=True, big="x" * 3_000_000)

    assert refusal.error.reason.startswith(
        "not allowed in a template: a block of more than 4194304 characters"
    )
    assert refusal.peak < MAX_PEAK


def test_many_values_within_the_limits_add_up_to_the_render_budget() -> None:
    refusal = refuse(
        "{% for i in range(10) %}{% set s = big ~ i %}{% endfor %}x", big="x" * 3_000_000
    )

    assert refusal.error.reason.startswith(
        f"not allowed in a template: a render may build at most {MAX_RENDER_CHARS} characters"
    )


def test_constants_are_not_folded_into_huge_values_when_compiling() -> None:
    # Jinja evaluates filters on constants at compile time, when a template is saved.
    text = "{{ '" + "a" * 2_000 + "'|replace('a', '" + "b" * 50_000 + "') }}"

    tracemalloc.start()
    try:
        problems = check_syntax(source(text))
        template = CompiledTemplate(source(text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert problems == []
    assert peak < MAX_PEAK
    with pytest.raises(TemplateRenderError, match="the replace filter would build 100000000"):
        template.render({}, tenant_id=TENANT)


def test_methods_that_cannot_be_bounded_or_would_mutate_are_not_available() -> None:
    data = {"a": 1}

    for template, reason in [
        ("{{ 'x'.translate({}) }}", "str.translate() is not allowed in a template"),
        ("{{ 'x'.maketrans('a', 'b') }}", "str.maketrans() is not allowed in a template"),
        ("{{ 'x'.encode() }}", "str.encode() is not allowed in a template"),
        ("{{ (1).to_bytes(n, 'big') }}", "int.to_bytes() is not allowed in a template"),
        ("{{ {}.fromkeys(range(10)) }}", "dict.fromkeys() is not allowed in a template"),
        ("{{ dict.update(data, {'b': 2}) }}", "calling dict.update is not allowed"),
    ]:
        refusal = refuse(template, data=data, n=N)
        assert refusal.error.reason.startswith(f"not allowed in a template: {reason}"), template

    assert data == {"a": 1}


# -- time -----------------------------------------------------------------------------------------

S = "a" * 10_000
# A long loop stops at the loop budget, or at the time limit when its iterations are slow.
STOPPED = (
    f"not allowed in a template: loops are limited to {MAX_LOOP_ITEMS} iterations in one render",
    f"the template took longer than {RENDER_TIME_LIMIT:g} s to render",
)


@pytest.mark.parametrize(
    ("iterable", "variables"),
    [
        ("s", {"s": S}),
        ("items", {"items": list(S)}),
        ("data", {"data": {f"k{i}": i for i in range(10_000)}}),
        ("data.items()", {"data": {f"k{i}": i for i in range(10_000)}}),
        ("s|map('upper')", {"s": S}),
        ("s|select", {"s": S}),
    ],
)
def test_nested_loops_over_any_iterable_stop_within_the_time_limit(
    iterable: str, variables: dict[str, Any]
) -> None:
    template = f"{{% for a in {iterable} %}}{{% for b in {iterable} %}}{{% endfor %}}{{% endfor %}}"

    refusal = refuse(template, **variables)

    # Whichever comes first, on a fast machine or a slow one.
    assert refusal.error.reason.startswith(STOPPED), refusal.error.reason
    assert refusal.seconds < RENDER_TIME_LIMIT + MARGIN


def test_a_recursive_loop_counts_the_children_it_walks() -> None:
    # 10 children at each of 6 levels: a million iterations, each one a loop(children) away.
    template = (
        "{% for x in items recursive %}{{ x }}"
        "{% if loop.depth < 6 %}{{ loop(items) }}{% endif %}{% endfor %}"
    )

    refusal = refuse(template, items=list(range(10)))

    assert refusal.error.reason.startswith(STOPPED), refusal.error.reason
    assert refusal.seconds < RENDER_TIME_LIMIT + MARGIN


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        # Two calls per call: 2**40 of them, no loop at all.
        (
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(40) }}",
            {},
        ),
        # Few iterations, each of them slow.
        ("{% for a in s %}{{ s|wordcount }}{% endfor %}", {"s": "a " * 5_000}),
        ("{{ items|map('wordcount')|list|length }}", {"items": ["a " * 5_000] * 10_000}),
        ("{% for a in s %}{{ 'c' in s }}{% endfor %}", {"s": "ab" * 49_000 + "c"}),
        ("{{ items|select('==', 'w' * 9999 ~ 'x')|list }}", {"items": [WORD] * 1_000_000}),
    ],
)
def test_the_time_limit_stops_a_render(template: str, variables: dict[str, Any]) -> None:
    refusal = refuse(template, time_limit=0.25, **variables)

    assert refusal.error.field == "text"
    assert refusal.error.reason.startswith("the template took longer than 0.25 s to render")
    assert refusal.seconds < 0.25 + MARGIN


def test_a_deep_macro_recursion_is_a_render_error() -> None:
    refusal = refuse("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}")

    assert refusal.error.reason.startswith("RecursionError: maximum recursion depth exceeded")
    assert refusal.seconds < RENDER_TIME_LIMIT + MARGIN


def test_comparing_a_value_that_refers_to_a_long_string_many_times_is_refused() -> None:
    # `needle in items` would compare 10,000 characters a million times, in C, unstoppable.
    needle = "w" * 9_999 + "x"

    for template in [
        "{{ needle in items }}",
        "{{ needle is in items }}",
        "{{ items.count(needle) }}",
    ]:
        refusal = refuse(template, needle=needle, items=[WORD] * 1_000_000)
        assert refusal.error.reason.startswith(
            "not allowed in a template: comparing or sorting values of more than 16777216 "
            "characters"
        ), template
        assert refusal.seconds < RENDER_TIME_LIMIT + MARGIN


# -- what stays as it was -------------------------------------------------------------------------


def test_an_ordinary_template_renders_as_before() -> None:
    template = (
        "{% set rows = range(1, 301)|list %}"
        "{% for row in rows|batch(100) %}{{ row|join(',')|length }}"
        "{{ ' %05d' % row|sum }}{{ ' {:>6}'.format(row|max) }}\n{% endfor %}"
        "{{ ('ab ' * 500)|wordwrap(70)|replace('ab', 'x')|length }} "
        "{{ names|map('upper')|select('ne', 'BOB')|join('/') }} "
        "{{ 'x' in names }} {{ names|sort|first }} {{ 2 ** 64 }}"
    )

    rendered = render(template, names=["ada", "bob", "x"])

    assert rendered.text == (
        "291 05050    100\n399 15050    200\n399 25050    300\n"
        "999 ADA/X True ada 18446744073709551616"
    )


def test_each_render_gets_its_own_budget() -> None:
    template = CompiledTemplate(source("{% for i in range(60000) %}{% endfor %}ok"))

    rendered = [template.render({}, tenant_id=TENANT).text for _ in range(3)]

    assert rendered == ["ok", "ok", "ok"]


# -- signed links ---------------------------------------------------------------------------------


def test_signed_links_are_bound_to_the_tenant_whose_template_renders() -> None:
    template = CompiledTemplate(source("{{ signed_link('https://app.example.com/c', email) }}"))
    other = uuid.UUID(int=8)
    links: dict[uuid.UUID, str] = {}
    errors: list[BaseException] = []

    def render_for(tenant_id: uuid.UUID) -> Callable[[], None]:
        def run() -> None:
            try:
                rendered = template.render({"email": "ada@example.net"}, tenant_id=tenant_id)
                links[tenant_id] = rendered.text or ""
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        return run

    # render() may run in worker threads: each render sees its own tenant.
    threads = [threading.Thread(target=render_for(tenant)) for tenant in (TENANT, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
    now = utcnow() + timedelta(minutes=1)
    assert verify_link(links[TENANT], tenant_id=TENANT, now=now) == "ada@example.net"
    assert verify_link(links[other], tenant_id=other, now=now) == "ada@example.net"
    with pytest.raises(InvalidLink, match="the link's signature does not match"):
        verify_link(links[TENANT], tenant_id=other, now=now)
