"""SendGrid v3 Mail Send: POST /v3/mail/send with a bearer key and a JSON body."""

from __future__ import annotations

from typing import Any

import httpx

from mailsvc.delivery.http import HttpProviderConfig, new_client, post
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.transport import Receipt


def _address(address: Mailbox) -> dict[str, str]:
    return (
        {"email": address.email, "name": address.name} if address.name else {"email": address.email}
    )


def sendgrid_payload(email: OutgoingEmail) -> dict[str, Any]:
    personalization: dict[str, Any] = {"to": [_address(a) for a in email.to]}
    if email.cc:
        personalization["cc"] = [_address(a) for a in email.cc]
    if email.bcc:
        personalization["bcc"] = [_address(a) for a in email.bcc]
    # text/plain must come first when both are present.
    content = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", email.text), ("text/html", email.html))
        if value
    ]
    payload: dict[str, Any] = {
        "personalizations": [personalization],
        "from": _address(email.sender),
        "subject": email.subject,
        "content": content,
        "headers": {"Message-ID": email.message_id_header, **email.headers},
        "custom_args": {"mailsvc_message_id": str(email.message_id)},
    }
    if email.reply_to is not None:
        payload["reply_to"] = _address(email.reply_to)
    if email.tags:
        payload["categories"] = email.tags[:10]
    return payload


class SendGridTransport:
    name = "sendgrid"

    def __init__(self, config: HttpProviderConfig, api_key: str) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/v3/mail/send"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.client: httpx.AsyncClient = new_client()

    async def send(self, email: OutgoingEmail) -> Receipt:
        answer = await post(
            self.client,
            self.url,
            within=self.config.timeout,
            json=sendgrid_payload(email),
            headers=self.headers,
        )
        # The id is in a header (a 202's body is empty), so no body can fail an accepted send.
        return Receipt(provider_message_id=answer.headers.get("x-message-id"))

    async def close(self) -> None:
        await self.client.aclose()
