"""A link secret for every template test, so signed_link works without the servers fixture."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from mailsvc.config import settings

LINK_SECRET = "test-link-secret"


@pytest.fixture(autouse=True)
def link_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(settings, "link_secret", SecretStr(LINK_SECRET))
    return LINK_SECRET
