"""openapi.yaml, rendered from the application so the two cannot drift apart."""

from __future__ import annotations

import yaml

from mailsvc.app import create_app


def render_openapi() -> str:
    spec = create_app().openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
