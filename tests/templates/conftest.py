"""A link secret for every template test, so signed_link works without the servers fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailsvc.templates.links import link_settings, set_link_settings
from tests.support.links import LINK_SECRET, sign_with


@pytest.fixture(autouse=True)
def link_secret() -> Iterator[str]:
    before = link_settings()
    sign_with(link_secret=LINK_SECRET)
    yield LINK_SECRET
    set_link_settings(before)
