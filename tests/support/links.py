"""The link secrets template tests sign with, as a process started with them would."""

from __future__ import annotations

from pydantic import SecretStr

from mailsvc.config import Settings
from mailsvc.templates.links import use_link_settings

LINK_SECRET = "test-link-secret"


def sign_with(**secrets: str | None) -> None:
    """Links are signed and verified from now on under these secrets (link_secret,
    link_secret_previous, jwt_secret), as a process started with them does."""
    values = {name: None if v is None else SecretStr(v) for name, v in secrets.items()}
    use_link_settings(Settings.model_validate(values))
