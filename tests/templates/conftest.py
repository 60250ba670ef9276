"""A link secret for every template test, so signed_link works without the servers fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from mailsvc.config import Settings
from mailsvc.templates.links import set_link_settings, use_link_settings

LINK_SECRET = "test-link-secret"


def sign_with(**secrets: str | None) -> None:
    """Links are signed and verified from now on under these secrets (link_secret,
    link_secret_previous, jwt_secret), as a process started with them does."""
    values = {name: None if v is None else SecretStr(v) for name, v in secrets.items()}
    use_link_settings(Settings.model_validate(values))


@pytest.fixture(autouse=True)
def link_secret() -> Iterator[str]:
    before = use_link_settings(Settings(link_secret=SecretStr(LINK_SECRET)))
    yield LINK_SECRET
    set_link_settings(before)
