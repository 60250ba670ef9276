"""Compiling and rendering templates: strict variables, autoescaped HTML, compiled once.

Every render runs in the sandbox (sandbox.py): Jinja2's immutable sandbox, within a budget of
wall-clock time, loop iterations and the size of what it builds.

Conventions for template authors:
- a missing variable is an error (StrictUndefined); test optional ones with `is defined`;
- `None` renders as an empty string, never as "None";
- `data.items` reads the key "items" when the dict has one (keys win over dict methods);
- the subject is one line: line breaks become spaces, and it may not render empty;
- `signed_link(url, email, hours=None)` signs a link (links.py); `|thousands` groups digits.
"""

from __future__ import annotations

import re
import threading
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import Template, TemplateError, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError

from mailsvc.kit.headers import one_line
from mailsvc.templates.sandbox import (
    MAX_BODY_CHARS,
    RENDER_TIME_LIMIT,
    budgeted,
    environment,
    render_stream,
)

Part = Literal["subject", "text", "html"]
ErrorField = Literal["subject", "text", "html", "template"]

PARTS: tuple[Part, ...] = ("subject", "text", "html")
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit; the API takes no longer subject either
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

    def render(
        self,
        variables: Mapping[str, Any],
        *,
        tenant_id: uuid.UUID,
        time_limit: float = RENDER_TIME_LIMIT,
    ) -> Rendered:
        """Subject, text and html for `tenant_id`'s message; TemplateRenderError if any part
        fails, comes out blank, or the whole takes longer than `time_limit` seconds."""
        # Set here, not by the caller: render() may run in a worker thread, with its own context.
        with budgeted(tenant_id, time_limit):
            out: dict[Part, str | None] = {}
            for part, template in self._parts.items():
                limit = MAX_SUBJECT_CHARS * 4 if part == "subject" else MAX_BODY_CHARS
                try:
                    out[part] = render_stream(template, variables, limit=limit, what=part)
                except Exception as exc:  # a template is tenants' code: any error is theirs
                    error = _render_error(part, self.source.part(part) or "", exc)
                    # The frames hold whatever the template built: do not keep them alive with
                    # the error (render_one returns errors in a list for the whole batch).
                    raise error from exc.with_traceback(None)

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
    return tuple(sorted(names - set(environment("text").globals)))
