"""The fallback chain: try each configured provider in order until one accepts.

A transient failure (network, timeout, 429, 5xx, a refused key) moves the same attempt on to
the next provider and counts against the provider's circuit. A permanent refusal (the message
or an address is refused) stops at once: another provider would refuse it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailsvc.config import Settings
from mailsvc.delivery.breaker import Breaker
from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.http import HttpProviderConfig
from mailsvc.delivery.mailgun import MailgunTransport
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.sendgrid import SendGridTransport
from mailsvc.delivery.ses import SesTransport
from mailsvc.delivery.smtp import SmtpConfig, SmtpTransport
from mailsvc.delivery.transport import Receipt, Transport
from mailsvc.kit.time import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Try:
    provider: str
    started_at: datetime
    finished_at: datetime
    error: DeliveryError | None  # None: accepted
    note: str | None = None  # on acceptance: recipients the provider refused


@dataclass
class ChainResult:
    receipt: Receipt | None = None  # from the provider that took the message
    provider: str | None = None
    tries: list[Try] = field(default_factory=list)
    error: DeliveryError | None = None

    def failure(self) -> DeliveryError:
        """Why nothing was accepted (the chain sets it whenever no provider accepted)."""
        if self.error is None:
            raise ValueError("the message was accepted: there is no failure")
        return self.error

    @property
    def retry_after(self) -> float | None:
        """The longest wait any provider asked for."""
        asked = [t.error.retry_after for t in self.tries if t.error and t.error.retry_after]
        return max(asked) if asked else None


class ProviderChain:
    def __init__(self, transports: Sequence[Transport], breaker: Breaker | None = None) -> None:
        if not transports:
            raise ValueError("no provider is configured")
        self.transports = list(transports)
        self.breaker = breaker

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transports]

    async def preferred(self) -> str:
        """The provider the next send will most likely go to: the first whose circuit is not open.

        Rate limits for a batch are taken from it; the rare failover send is not counted."""
        for transport in self.transports:
            if self.breaker is None or not await self.breaker.is_open(transport.name):
                return transport.name
        return self.transports[0].name

    async def send(self, email: OutgoingEmail) -> ChainResult:
        result = ChainResult()
        skipped = []
        for transport in self.transports:
            if self.breaker is not None and not await self.breaker.allow(transport.name):
                skipped.append(transport.name)
                continue
            started = utcnow()
            error: DeliveryError
            try:
                receipt = await transport.send(email)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # a transport bug counts as that provider failing
                log.exception(
                    "transport failed unexpectedly", extra={"fields": {"p": transport.name}}
                )
                error = TransientDeliveryError("transport_error", f"{type(exc).__name__}: {exc}")
            else:
                result.tries.append(
                    Try(transport.name, started, utcnow(), None, note=receipt.refused)
                )
                if self.breaker is not None:
                    await self.breaker.record_success(transport.name)
                result.receipt, result.provider = receipt, transport.name
                return result
            result.tries.append(Try(transport.name, started, utcnow(), error))
            if isinstance(error, PermanentDeliveryError):
                result.error = error
                return result
            if self.breaker is not None:
                await self.breaker.record_failure(transport.name)
        result.error = (
            result.tries[-1].error
            if result.tries
            else TransientDeliveryError(
                "circuit_open", f"every provider's circuit is open ({', '.join(skipped)})"
            )
        )
        return result

    async def close(self) -> None:
        for transport in self.transports:
            await transport.close()


def configured_transports(config: Settings) -> list[Transport]:
    """The providers that have credentials, in the configured order."""
    available: dict[str, Transport] = {}
    if config.sendgrid_api_key:
        available["sendgrid"] = SendGridTransport(
            HttpProviderConfig(config.sendgrid_base_url, config.sendgrid_timeout_seconds),
            config.sendgrid_api_key.get_secret_value(),
        )
    if config.mailgun_api_key and config.mailgun_domain:
        available["mailgun"] = MailgunTransport(
            HttpProviderConfig(config.mailgun_base_url, config.mailgun_timeout_seconds),
            config.mailgun_api_key.get_secret_value(),
            config.mailgun_domain,
        )
    if config.ses_access_key_id and config.ses_secret_access_key:
        available["ses"] = SesTransport(
            HttpProviderConfig(
                config.ses_base_url or f"https://email.{config.ses_region}.amazonaws.com",
                config.ses_timeout_seconds,
            ),
            access_key_id=config.ses_access_key_id,
            secret_access_key=config.ses_secret_access_key.get_secret_value(),
            region=config.ses_region,
        )
    if config.smtp_host:
        available["smtp"] = SmtpTransport(
            SmtpConfig(
                host=config.smtp_host,
                port=config.smtp_port,
                username=config.smtp_username,
                password=config.smtp_password.get_secret_value() if config.smtp_password else None,
                starttls=config.smtp_starttls,
                timeout=config.smtp_timeout_seconds,
                pool_size=config.smtp_pool_size,
            )
        )
    unknown = set(config.provider_order) - {"sendgrid", "mailgun", "ses", "smtp"}
    if unknown:
        raise ValueError(f"unknown providers in MAILSVC_PROVIDER_ORDER: {sorted(unknown)}")
    return [available[name] for name in config.provider_order if name in available]
