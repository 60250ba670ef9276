"""Mailgun: POST /v3/{domain}/messages, HTTP Basic (api:key), form fields."""

from __future__ import annotations

from email.headerregistry import Address as HeaderAddress
from urllib.parse import urlencode

import httpx

from mailsvc.delivery.http import HttpProviderConfig, new_client, post
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.transport import Receipt


def _address(address: Mailbox) -> str:
    return str(HeaderAddress(display_name=address.name or "", addr_spec=address.email))


def mailgun_form(email: OutgoingEmail) -> list[tuple[str, str]]:
    fields = [("from", _address(email.sender)), ("subject", email.subject)]
    fields += [("to", _address(a)) for a in email.to]
    fields += [("cc", _address(a)) for a in email.cc]
    fields += [("bcc", _address(a)) for a in email.bcc]
    if email.text:
        fields.append(("text", email.text))
    if email.html:
        fields.append(("html", email.html))
    fields.append(("h:Message-Id", email.message_id_header))
    if email.reply_to is not None:
        fields.append(("h:Reply-To", _address(email.reply_to)))
    fields += [(f"h:{name}", value) for name, value in email.headers.items()]
    fields += [("o:tag", tag) for tag in email.tags[:3]]  # Mailgun keeps at most 3 tags
    fields.append(("v:mailsvc-message-id", str(email.message_id)))
    return fields


class MailgunTransport:
    name = "mailgun"

    def __init__(self, config: HttpProviderConfig, api_key: str, domain: str) -> None:
        self.config = config
        self.url = f"{config.base_url.rstrip('/')}/v3/{domain}/messages"
        self.auth = httpx.BasicAuth("api", api_key)
        self.client: httpx.AsyncClient = new_client()

    async def send(self, email: OutgoingEmail) -> Receipt:
        answer = await post(
            self.client,
            self.url,
            within=self.config.timeout,
            content=urlencode(mailgun_form(email)).encode("ascii"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=self.auth,
        )
        return Receipt(provider_message_id=answer.message_id(self.name, "id"))

    async def close(self) -> None:
        await self.client.aclose()
