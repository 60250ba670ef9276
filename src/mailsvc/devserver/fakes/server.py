"""FakeProviders: the four fake email providers (SendGrid, Mailgun, SES over HTTP; SMTP) started
together on local ports, for tests, benchmarks and `make run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mailsvc.devserver.fakes.http import ControlApi, HttpServerThread, build_app
from mailsvc.devserver.fakes.mailgun import MailgunFake
from mailsvc.devserver.fakes.outbox import FakeOutbox
from mailsvc.devserver.fakes.script import FakeProvider
from mailsvc.devserver.fakes.sendgrid import SendGridFake
from mailsvc.devserver.fakes.ses import SesFake
from mailsvc.devserver.fakes.smtp import FakeSmtpController, start_fake_smtp

HOST = "127.0.0.1"


@dataclass(frozen=True)
class FakeCredentials:
    """What the fakes accept; point mailsvc's provider settings at the same values."""

    sendgrid_key: str = "SG.fake-key"
    mailgun_key: str = "key-fake"
    mailgun_domain: str = "mg.example.com"
    ses_access_key_id: str = "AKIDFAKE"
    ses_secret_access_key: str = "fake-secret"  # noqa: S105 - a fake's well-known secret
    ses_region: str = "us-east-1"


class FakeProviders:
    def __init__(self, credentials: FakeCredentials | None = None, outbox: Path | None = None):
        self.credentials = credentials or FakeCredentials()
        self.outbox = outbox
        writer = FakeOutbox(outbox) if outbox is not None else None
        self.sendgrid = FakeProvider("sendgrid", writer)
        self.mailgun = FakeProvider("mailgun", writer)
        self.ses = FakeProvider("ses", writer)
        self.smtp = FakeProvider("smtp", writer)
        self.providers: dict[str, FakeProvider] = {
            "sendgrid": self.sendgrid,
            "mailgun": self.mailgun,
            "ses": self.ses,
            "smtp": self.smtp,
        }
        creds = self.credentials
        self._app = build_app(
            SendGridFake(self.sendgrid, creds.sendgrid_key),
            MailgunFake(self.mailgun, creds.mailgun_key, creds.mailgun_domain),
            SesFake(
                self.ses, creds.ses_access_key_id, creds.ses_secret_access_key, creds.ses_region
            ),
            ControlApi(self.providers, self.deliveries),
        )
        self._http: HttpServerThread | None = None
        self._smtp: FakeSmtpController | None = None

    def start(self, http_port: int = 0, smtp_port: int = 0) -> None:
        """Binds both servers (0 = a free port) and returns once they accept connections."""
        if self._http is not None:
            raise RuntimeError("the fake providers are already running")
        for provider in self.providers.values():
            provider.release_holds(stopping=False)
        http = HttpServerThread(self._app, HOST, http_port)
        http.start()
        try:
            self._smtp = start_fake_smtp(self.smtp, host=HOST, port=smtp_port)
        except BaseException:
            http.stop()
            raise
        self._http = http

    def stop(self) -> None:
        for provider in self.providers.values():
            provider.release_holds()
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> FakeProviders:
        if self._http is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        if self._http is None or self._http.port is None:
            raise RuntimeError("the fake providers are not running; call start() first")
        return f"http://{HOST}:{self._http.port}"

    @property
    def smtp_port(self) -> int:
        if self._smtp is None:
            raise RuntimeError("the fake providers are not running; call start() first")
        return int(self._smtp.port)

    def settings_env(self, order: str = "sendgrid,mailgun,ses,smtp") -> dict[str, str]:
        """MAILSVC_* variables that point mailsvc's providers at these fakes, in `order`."""
        creds = self.credentials
        return {
            "MAILSVC_PROVIDER_ORDER": order,
            "MAILSVC_SENDGRID_API_KEY": creds.sendgrid_key,
            "MAILSVC_SENDGRID_BASE_URL": self.http_url,
            "MAILSVC_MAILGUN_API_KEY": creds.mailgun_key,
            "MAILSVC_MAILGUN_DOMAIN": creds.mailgun_domain,
            "MAILSVC_MAILGUN_BASE_URL": self.http_url,
            "MAILSVC_SES_ACCESS_KEY_ID": creds.ses_access_key_id,
            "MAILSVC_SES_SECRET_ACCESS_KEY": creds.ses_secret_access_key,
            "MAILSVC_SES_REGION": creds.ses_region,
            "MAILSVC_SES_BASE_URL": self.http_url,
            "MAILSVC_SMTP_HOST": HOST,
            "MAILSVC_SMTP_PORT": str(self.smtp_port),
        }

    def deliveries(self) -> dict[str, list[str]]:
        """Message-ID -> the providers it arrived at, once per arrival, in arrival order."""
        arrivals = sorted(
            (received.at, received.provider, received.message_id)
            for provider in self.providers.values()
            for received in provider.received
            if received.message_id is not None
        )
        found: dict[str, list[str]] = {}
        for _, provider_name, message_id in arrivals:
            found.setdefault(message_id, []).append(provider_name)
        return found
