"""Request and response bodies of the templates API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MAX_SUBJECT_CHARS = 998
MAX_BODY_BYTES = 512 * 1024


def _body_size(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_BODY_BYTES:
        raise ValueError(f"must be at most {MAX_BODY_BYTES // 1024} KiB (UTF-8)")
    return value


Body = Annotated[str, AfterValidator(_body_size)]


class TemplateCreate(BaseModel):
    """A template: Jinja2 for the subject and a text and/or html body."""

    model_config = ConfigDict(extra="forbid")

    subject: Annotated[
        str,
        Field(min_length=1, max_length=MAX_SUBJECT_CHARS, description="One line once rendered."),
    ]
    text: Body | None = None
    html: Annotated[Body | None, Field(description="Rendered with HTML autoescaping.")] = None
    transactional: bool = Field(
        default=True,
        description="Messages from a transactional template default to the high-priority lane.",
    )

    @model_validator(mode="after")
    def _some_body(self) -> TemplateCreate:
        if self.text is None and self.html is None:
            raise ValueError("give text, html or both")
        return self


class Template(BaseModel):
    """A tenant's stored template."""

    name: str
    subject: str
    text: str | None
    html: str | None
    transactional: bool
    version: int
    builtin: bool = Field(description="The name is a built-in's.")
    overridden: bool = Field(description="This tenant's template replaces the built-in.")
    created_at: datetime
    updated_at: datetime


class TemplateSummary(BaseModel):
    """A template as listed: a built-in, a tenant's override of one, or a tenant's own."""

    name: str
    subject: str
    builtin: bool
    overridden: bool
    transactional: bool
    version: int
    variables: list[str] = Field(
        description="What a built-in needs (dotted paths); for a tenant's own, the top-level "
        "names it reads."
    )
    description: str
    updated_at: datetime | None = Field(description="None for a built-in not overridden.")


class TemplateList(BaseModel):
    data: list[TemplateSummary]


class TemplatePreviewRequest(BaseModel):
    """The variables to render a template with."""

    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="The template's variables. As when sending, `tenant` defaults to "
        '{"name": <the tenant\'s name>} and `data` to {}.',
    )


class TemplatePreview(BaseModel):
    """A rendered template: what would be sent."""

    subject: str
    text: str | None
    html: str | None


class LinkCheck(BaseModel):
    """A link from an email mailsvc sent (account confirmation), to check before acting on it."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=4096)]


class LinkOwner(BaseModel):
    """The address the link was signed for: the one that clicked it proves it reads that inbox."""

    email: str
