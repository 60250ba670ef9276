"""The message the benchmarks send: about 3 KB of text and HTML, like a real notification."""

from __future__ import annotations

from typing import Any

_PARAGRAPH = (
    "Thanks for signing up. We are glad to have you with us, and we wanted to make sure your "
    "account is set up the way you expect. Here is a short summary of what happens next. "
)


def message_body(i: int) -> dict[str, Any]:
    text = f"Hello user {i},\n\n" + _PARAGRAPH * 7 + "\n\n— The Example team\n"
    html = (
        f"<html><body><p>Hello user {i},</p>"
        + f"<p>{_PARAGRAPH * 7}</p>"
        + "<p>&mdash; The Example team</p></body></html>"
    )
    return {
        "to": [f"user{i}@example.net"],
        "subject": f"Welcome aboard, user {i}",
        "text": text,
        "html": html,
        "tags": ["bench"],
    }
