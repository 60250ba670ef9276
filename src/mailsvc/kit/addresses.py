"""Email address validation shared by every schema that takes one."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

# To, cc and bcc of one message together (and a weekly report's recipients): part of the API's
# contract, as the other sizes are, so clients can rely on it.
MAX_RECIPIENTS = 50


def normalise_email(value: str) -> str:
    """A valid address in ASCII form: IDN domains become punycode.

    Non-ASCII local parts need SMTPUTF8 end to end, which most providers refuse, so they are
    rejected here rather than failing later at delivery.
    """
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from exc
    return str(result.ascii_email or result.normalized)
