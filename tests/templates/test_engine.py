"""The rendering engine: escaping, strict variables, one-line subjects, the cache, the sandbox."""

from __future__ import annotations

import pickle
import uuid
from datetime import timedelta
from typing import Any

import pytest

from mailsvc.kit.headers import one_line
from mailsvc.kit.time import utcnow
from mailsvc.templates.engine import (
    CompiledTemplate,
    Rendered,
    TemplateCache,
    TemplateRenderError,
    TemplateSource,
    TemplateSyntaxProblem,
    check_syntax,
    compile_template,
    referenced_names,
)
from mailsvc.templates.links import verify_link


def source(
    subject: str = "Hello", text: str | None = None, html: str | None = None, version: int = 1
) -> TemplateSource:
    return TemplateSource(
        name="t",
        subject=subject,
        text=text,
        html=html,
        transactional=True,
        version=version,
        builtin=False,
    )


def render(template: TemplateSource, **variables: Any) -> Rendered:
    return CompiledTemplate(template).render(variables, tenant_id=uuid.UUID(int=1))


def render_error(template: TemplateSource, **variables: Any) -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as caught:
        render(template, **variables)
    return caught.value


# -- escaping ---------------------------------------------------------------------------------


def test_html_is_escaped_subject_and_text_are_not() -> None:
    rendered = render(
        source(subject="Re: {{ x }}", text="Text {{ x }}", html="<p>{{ x }}</p>"),
        x='<b>Tom & "Jerry"</b>',
    )

    assert rendered == Rendered(
        subject='Re: <b>Tom & "Jerry"</b>',
        text='Text <b>Tom & "Jerry"</b>',
        html="<p>&lt;b&gt;Tom &amp; &#34;Jerry&#34;&lt;/b&gt;</p>",
    )


def test_blocks_leave_no_blank_lines_and_none_renders_empty() -> None:
    text = (
        "Hi{% if name %} {{ name }}{% endif %},\n{% if True %}\n  line\n{% endif %}\n{{ none }}end"
    )

    assert render(source(text=text), name="Ada", none=None).text == "Hi Ada,\n  line\nend"


def test_dict_keys_win_over_dict_methods() -> None:
    text = "{% for item in data.items %}{{ item.sku }} {% endfor %}{{ data.keys }}"

    rendered = render(source(text=text), data={"items": [{"sku": "A1"}, {"sku": "B2"}], "keys": 3})

    assert rendered.text == "A1 B2 3"


# -- missing variables ------------------------------------------------------------------------


def test_missing_nested_variable_names_the_part_the_path_and_the_line() -> None:
    template = source(html="<p>Hi</p>\n<p>\n<a href='{{ data.confirm_url }}'>Confirm</a></p>")

    error = render_error(template, data={})

    assert error.field == "html"
    assert error.variable == "data.confirm_url"
    assert error.missing_variable
    assert error.reason == (
        "missing variable data.confirm_url: 'dict object' has no attribute 'confirm_url' "
        "(line 3: <a href='{{ data.confirm_url }}'>Confirm</a></p>)"
    )
    assert str(error) == f"html: {error.reason}"


def test_missing_top_level_variable() -> None:
    error = render_error(source(subject="Hello {{ contact.name }}", text="x"))

    assert error.field == "subject"
    assert error.variable == "contact"
    assert (
        error.reason
        == "missing variable: 'contact' is undefined (line 1: Hello {{ contact.name }})"
    )


def test_a_missing_variable_is_an_error_even_in_a_test() -> None:
    error = render_error(source(text="{% if data.flag %}yes{% endif %}"), data={})

    assert error.variable == "data.flag"


def test_optional_variables_with_is_defined() -> None:
    template = source(text="{% if data.url is defined %}{{ data.url }}{% else %}none{% endif %}")

    assert render(template, data={}).text == "none"
    assert render(template, data={"url": "https://x.test"}).text == "https://x.test"


def test_subscript_paths_are_named_with_dots() -> None:
    error = render_error(source(text="{{ data['order']['total'] }}"), data={"order": {}})

    assert error.variable == "data.order.total"


# -- subjects and blanks ----------------------------------------------------------------------


def test_subject_line_breaks_cannot_inject_headers() -> None:
    rendered = render(
        source(subject="Hello {{ name }}", text="x"),
        name="Ada\r\nBcc: victim@example.net\n\tX-Evil: 1\x00",
    )

    assert rendered.subject == "Hello Ada Bcc: victim@example.net X-Evil: 1"


def test_one_line() -> None:
    assert one_line("  a\r\n b\u2028c\x85d \x0b e  ") == "a b c d e"


@pytest.mark.parametrize("subject", ["{{ x }}", "  {{ x }}  ", "{% if False %}x{% endif %}"])
def test_a_blank_subject_is_refused(subject: str) -> None:
    error = render_error(source(subject=subject, text="body"), x=" \r\n ")

    assert (error.field, error.reason) == ("subject", "the subject rendered empty")


def test_a_long_subject_is_refused() -> None:
    error = render_error(source(subject="{{ x }}", text="body"), x="a" * 999)

    assert error.reason == "the subject rendered longer than 998 characters"


def test_a_blank_part_is_left_out_but_never_both() -> None:
    template = source(text="{{ text }}", html="{{ html }}")

    assert render(template, text="\n", html="x") == Rendered("Hello", None, "x")
    assert render(template, text="x", html=" ") == Rendered("Hello", "x", None)
    error = render_error(template, text="", html="\n")
    assert (error.field, error.reason) == ("text", "the body rendered empty")


# -- syntax -----------------------------------------------------------------------------------


def test_syntax_problems_name_the_part_and_line() -> None:
    problems = check_syntax(
        source(subject="{{ x", text="a\n{{ x|no_such_filter }}", html="<p>\n\n{% for %}")
    )

    assert [(p.field, p.line) for p in problems] == [("subject", 1), ("text", 2), ("html", 3)]
    assert problems[1].reason == "No filter named 'no_such_filter'."
    assert (
        str(problems[2]) == "html at line 3: Expected an expression, got 'end of statement block'"
    )


def test_compiling_an_invalid_template_raises() -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        compile_template(source(text="{% if %}", version=99), cache_key=("test", "invalid"))

    assert (caught.value.field, caught.value.line) == ("text", 1)


def test_a_template_without_a_body_does_not_compile() -> None:
    with pytest.raises(TemplateSyntaxProblem, match="needs a text or html part"):
        CompiledTemplate(source())


# -- the cache --------------------------------------------------------------------------------


def test_cache_hits_per_version_and_a_new_version_recompiles() -> None:
    cache = TemplateCache()
    v1 = source(text="one {{ x }}")

    first = cache.compile(v1, cache_key=("tenant", "t"))
    again = cache.compile(source(text="one {{ x }}"), cache_key=("tenant", "t"))
    assert again is first
    assert (cache.hits, cache.misses) == (1, 1)

    v2 = cache.compile(source(text="two {{ x }}", version=2), cache_key=("tenant", "t"))
    assert v2 is not first
    assert v2.render({"x": 1}, tenant_id=uuid.UUID(int=1)).text == "two 1"
    assert (cache.hits, cache.misses) == (1, 2)

    other_tenant = cache.compile(v1, cache_key=("other", "t"))
    assert other_tenant is not first
    assert cache.misses == 3


def test_cache_never_serves_a_stale_source_for_a_reused_version() -> None:
    cache = TemplateCache()
    cache.compile(source(text="old"), cache_key=("tenant", "t"))

    recompiled = cache.compile(source(text="new"), cache_key=("tenant", "t"))

    assert recompiled.render({}, tenant_id=uuid.UUID(int=1)).text == "new"
    assert (cache.hits, cache.misses) == (0, 2)


def test_cache_evicts_the_least_recently_used() -> None:
    cache = TemplateCache(size=2)
    a = cache.compile(source(text="a"), cache_key=(None, "a"))
    cache.compile(source(text="b"), cache_key=(None, "b"))
    assert cache.compile(source(text="a"), cache_key=(None, "a")) is a  # a is now the newest
    cache.compile(source(text="c"), cache_key=(None, "c"))  # evicts b

    assert len(cache) == 2
    assert cache.compile(source(text="a"), cache_key=(None, "a")) is a
    misses = cache.misses
    cache.compile(source(text="b"), cache_key=(None, "b"))
    assert cache.misses == misses + 1


# -- the sandbox ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ cycler.__init__.__globals__ }}", "access to attribute '__init__'"),
        ("{{ data.update({'a': 1}) }}", "access to attribute 'update' of 'dict' object is unsafe"),
        ("{{ data.list.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
        ("{{ 'x' * 10**7 }}", "'*' may not build more than 1000000"),
        ("{{ 2 ** 100000 }}", "exponents above 256 are not allowed"),
        ("{{ '%999999d'|format(1) }}", "a width of 999999 is more than 1000"),
        ("{{ '%999999d' % 1 }}", "a width of 999999 is more than 1000"),
        ("{{ '{:>99999}'.format(1) }}", "a width of 99999 is more than 1000"),
        ("{{ '{:{w}}'.format(1, w=99999) }}", "nested replacement fields"),
        ("{{ 'x'|center(10**6) }}", "a width of 1000000 is more than 1000"),
        (
            "{% for i in range(60000) %}{% for j in range(60000) %}{% endfor %}{% endfor %}",
            "range() is limited to 100000 items in one render",
        ),
    ],
)
def test_the_sandbox_refuses(template: str, reason: str) -> None:
    error = render_error(source(text=template), data={"list": []})

    assert error.field == "text"
    assert error.reason.startswith(f"not allowed in a template: {reason}")
    assert not error.missing_variable


def test_lipsum_is_not_available() -> None:
    assert render_error(source(text="{{ lipsum(10**6) }}")).variable == "lipsum"


def test_other_errors_in_a_template_are_render_errors() -> None:
    error = render_error(source(text="line\n{{ 1 / n }}"), n=0)

    assert error.reason == "ZeroDivisionError: division by zero (line 2: {{ 1 / n }})"


def test_each_render_gets_its_own_range_budget() -> None:
    template = CompiledTemplate(source(text="{% for i in range(90000) %}{% endfor %}ok"))

    assert [template.render({}, tenant_id=uuid.UUID(int=1)).text for _ in range(3)] == [
        "ok",
        "ok",
        "ok",
    ]


def test_a_huge_rendered_body_is_refused() -> None:
    text = "{% for i in range(5) %}{{ chunk }}{% endfor %}"

    error = render_error(source(text=text), chunk="x" * 1_000_000)

    assert error.reason.startswith("not allowed in a template: the rendered text is longer than")


# -- signed links -----------------------------------------------------------------------------


def test_signed_link_global() -> None:
    template = source(
        text="{{ signed_link(url, email) }}\n{{ signed_link(url, email, hours=1) }}",
        html='<a href="{{ signed_link(url, email) }}">x</a>',
    )

    rendered = render(template, url="https://app.example.com/c?u=1", email="ada@example.net")

    assert rendered.text is not None
    default, short = rendered.text.split("\n")
    now = utcnow()
    assert (
        verify_link(default, tenant_id=uuid.UUID(int=1), now=now + timedelta(hours=47))
        == "ada@example.net"
    )
    assert (
        verify_link(short, tenant_id=uuid.UUID(int=1), now=now + timedelta(minutes=59))
        == "ada@example.net"
    )
    assert rendered.html is not None
    assert rendered.html.startswith('<a href="https://app.example.com/c?u=1&amp;token=')


def test_signed_link_with_a_missing_url_names_it() -> None:
    error = render_error(
        source(text="{{ signed_link(data.confirm_url, contact.email) }}"),
        data={},
        contact={"email": "ada@example.net"},
    )

    assert error.variable == "data.confirm_url"


def test_signed_link_refuses_a_relative_url() -> None:
    error = render_error(source(text="{{ signed_link('/confirm', 'a@example.net') }}"))

    assert error.reason.startswith("ValueError: a signed link needs an absolute http(s) URL")


def test_referenced_names() -> None:
    template = source(
        subject="{{ tenant.name }}",
        text="{% set x = 1 %}{{ x }}{{ contact.name }}{{ signed_link(data.url, contact.email) }}",
    )

    assert referenced_names(template) == ("contact", "data", "tenant")


@pytest.mark.parametrize(
    "template",
    [
        "{{ '{:,}'.format(data.total) }}",
        "{{ '{total:,}'.format(total=data.total) }}",
        "{{ '%d'|format(data.total) }}",
        "{{ '%d' % data.total }}",
        "{{ data.total + 1 }}",
    ],
)
def test_missing_variables_in_formatting_are_named(template: str) -> None:
    assert render_error(source(text=template), data={}).variable == "data.total"


def test_thousands_filter() -> None:
    template = source(text="{{ a|thousands }} {{ b|thousands }} {{ c|thousands }}")

    assert render(template, a=1284000, b=1234.5, c="n/a").text == "1,284,000 1,234.5 n/a"
    assert render_error(source(text="{{ data.n|thousands }}"), data={}).variable == "data.n"


def test_errors_survive_pickling() -> None:
    error = render_error(source(text="{{ data.x }}"), data={})
    problem = TemplateSyntaxProblem("html", 3, "unexpected '}'")

    again = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    problem_again = pickle.loads(pickle.dumps(problem))  # noqa: S301

    assert (again.field, again.reason, again.variable, str(again)) == (
        error.field,
        error.reason,
        "data.x",
        str(error),
    )
    assert (problem_again.field, problem_again.line, problem_again.reason) == (
        "html",
        3,
        "unexpected '}'",
    )
