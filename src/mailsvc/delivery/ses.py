"""Amazon SES API v2 SendEmail (POST /v2/email/outbound-emails) with the raw MIME message,
signed with Signature Version 4 by botocore's signer."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mailsvc.delivery.http import HttpProviderConfig, new_client, post
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.transport import Receipt


def ses_payload(email: OutgoingEmail) -> dict[str, Any]:
    destination: dict[str, list[str]] = {"ToAddresses": [a.email for a in email.to]}
    if email.cc:
        destination["CcAddresses"] = [a.email for a in email.cc]
    if email.bcc:  # Bcc is in no header: the envelope is the only place it can go
        destination["BccAddresses"] = [a.email for a in email.bcc]
    return {
        "FromEmailAddress": email.sender.email,
        "Destination": destination,
        "Content": {"Raw": {"Data": base64.b64encode(ensure_raw(email)).decode("ascii")}},
        "EmailTags": [{"Name": "mailsvc_message_id", "Value": str(email.message_id)}],
    }


class SesTransport:
    name = "ses"

    def __init__(
        self, config: HttpProviderConfig, *, access_key_id: str, secret_access_key: str, region: str
    ) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/v2/email/outbound-emails"
        self.signer = SigV4Auth(Credentials(access_key_id, secret_access_key), "ses", region)
        self.client: httpx.AsyncClient = new_client()

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        request = AWSRequest(
            method="POST", url=self.url, data=body, headers={"Content-Type": "application/json"}
        )
        self.signer.add_auth(request)
        return dict(request.headers.items())

    async def send(self, email: OutgoingEmail) -> Receipt:
        body = json.dumps(ses_payload(email)).encode()
        answer = await post(
            self.client,
            self.url,
            within=self.config.timeout,
            content=body,
            headers=self._signed_headers(body),
        )
        return Receipt(provider_message_id=answer.message_id(self.name, "MessageId"))

    async def close(self) -> None:
        await self.client.aclose()
