"""A relay that refuses or drops the SMTP session: before any message is offered, a transient error
with a code naming the step; after the message was handed over, one that is not sent again."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from mailsvc.delivery.chain import ProviderChain
from mailsvc.delivery.errors import TransientDeliveryError
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.smtp import SmtpConfig, SmtpTransport
from mailsvc.devserver.fakes import FakeProviders
from tests.support.processes import eventually
from tests.support.refusing_smtp import DROP, RefusingSmtpServer, Script, Session

StartRelay = Callable[[Script], Awaitable[RefusingSmtpServer]]


def email() -> OutgoingEmail:
    return OutgoingEmail(
        message_id=uuid.UUID("01a1fd00-0000-7000-8000-000000000002"),
        message_id_header="<01a1fd00000070008000000000000002@example.com>",
        sender=Mailbox("noreply@example.com"),
        to=[Mailbox("ada@example.net")],
        subject="Hello",
        date=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
        text="Hello",
    )


def config(relay: RefusingSmtpServer, **overrides: Any) -> SmtpConfig:
    return replace(SmtpConfig(host="127.0.0.1", port=relay.port, timeout=5.0), **overrides)


@pytest_asyncio.fixture
async def start_relay() -> AsyncIterator[StartRelay]:
    started: list[RefusingSmtpServer] = []

    async def start(script: Script) -> RefusingSmtpServer:
        relay = RefusingSmtpServer(script)
        await relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


async def hung_up(session: Session) -> None:
    async def probe() -> bool:
        return session.peer_closed

    await eventually(probe, timeout=10, what="the client to close its side of the session")


CREDENTIALS = {"username": "relay-user", "password": "relay-secret"}


@pytest.mark.parametrize(
    ("script", "overrides", "code", "reason", "verbs"),
    [
        pytest.param(
            Script(greeting="554 5.7.1 relay.test: no SMTP service here"),
            {},
            "smtp_greeting_554",
            "554 5.7.1 relay.test: no SMTP service here",
            [],
            id="greeting-554",
        ),
        pytest.param(
            Script(greeting="421 4.3.2 relay.test: too busy, try again later"),
            {},
            "smtp_greeting_421",
            "421 4.3.2 relay.test: too busy, try again later",
            [],
            id="greeting-421",
        ),
        pytest.param(
            Script(replies={"EHLO": "550 5.7.1 Client host rejected: access denied"}),
            {},
            "smtp_ehlo_550",
            "550 5.7.1 Client host rejected: access denied",
            ["EHLO"],
            id="ehlo-550",
        ),
        pytest.param(
            Script(replies={"STARTTLS": "454 4.7.0 TLS not available due to temporary reason"}),
            {"starttls": True},
            "smtp_starttls_454",
            "454 4.7.0 TLS not available due to temporary reason",
            ["EHLO", "STARTTLS"],
            id="starttls-454",
        ),
        pytest.param(
            Script(replies={"EHLO": "250-relay.test\r\n250 AUTH PLAIN LOGIN"}),
            {"starttls": True},
            "smtp_starttls_unsupported",
            "SMTP STARTTLS extension not supported by server.",
            ["EHLO"],
            id="starttls-not-offered",
        ),
        pytest.param(
            Script(replies={"AUTH": "535 5.7.8 Error: authentication failed"}),
            CREDENTIALS,
            "smtp_auth_535",
            "535 5.7.8 Error: authentication failed",
            # aiosmtplib tries each advertised mechanism it knows: PLAIN, then LOGIN.
            ["EHLO", "AUTH", "AUTH"],
            id="auth-535",
        ),
        pytest.param(
            Script(replies={"AUTH": "454 4.7.0 Temporary authentication failure"}),
            CREDENTIALS,
            "smtp_auth_454",
            "454 4.7.0 Temporary authentication failure",
            ["EHLO", "AUTH", "AUTH"],
            id="auth-454",
        ),
        pytest.param(
            Script(greeting=DROP),
            {},
            "smtp_greeting_disconnected",
            "Error connecting to 127.0.0.1 on port {port}: Unexpected EOF received",
            [],
            id="hangs-up-before-the-greeting",
        ),
        pytest.param(
            Script(greeting="220-relay.test ESMTP" + DROP),
            {},
            "smtp_greeting_disconnected",
            "Error connecting to 127.0.0.1 on port {port}: Unexpected EOF received",
            [],
            id="hangs-up-during-the-greeting",
        ),
        pytest.param(
            Script(greeting=None),
            {"timeout": 0.3},
            "smtp_greeting_timeout",
            "Timed out waiting for server ready message",
            [],
            id="never-greets",
        ),
        pytest.param(
            Script(replies={"EHLO": DROP}),
            {},
            "smtp_ehlo_disconnected",
            "Unexpected EOF received",
            ["EHLO"],
            id="hangs-up-at-ehlo",
        ),
    ],
)
async def test_a_refused_session_is_transient_and_closed(
    start_relay: StartRelay,
    script: Script,
    overrides: dict[str, Any],
    code: str,
    reason: str,
    verbs: list[str],
) -> None:
    relay = await start_relay(script)
    transport = SmtpTransport(config(relay, **overrides))
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert (caught.value.code, caught.value.reason) == (code, reason.format(port=relay.port))
    [session] = relay.sessions
    await hung_up(session)
    assert session.verbs == verbs
    assert session.messages == 0


async def test_a_closed_port_is_a_transient_connect_failure() -> None:
    # Bound but not listening: connections are refused, and no other process can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, timeout=5.0))
        with pytest.raises(TransientDeliveryError) as caught:
            await transport.send(email())
        await transport.close()
    assert caught.value.code == "smtp_connect_failed"
    assert caught.value.reason == (
        f"Error connecting to 127.0.0.1 on port {port}: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})"
    )


async def test_a_relay_that_drops_our_syn_is_a_transient_connect_timeout() -> None:
    # Linux drops a SYN while the listener's accept queue is full (backlog 0: one waiting
    # connection), so the connect times out as it would against a firewall that drops packets.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, timeout=0.3))
            with pytest.raises(TransientDeliveryError) as caught:
                await transport.send(email())
            await transport.close()
    assert (caught.value.code, caught.value.reason) == (
        "smtp_connect_timeout",
        f"Timed out connecting to 127.0.0.1 on port {port}",
    )


@pytest.mark.parametrize(
    ("verb", "dropped_at"),
    [
        pytest.param("MAIL", ["MAIL"], id="at-mail"),
        pytest.param("RCPT", ["MAIL", "RCPT"], id="at-rcpt"),
        pytest.param("DATA", ["MAIL", "RCPT", "DATA"], id="at-data-before-354"),
    ],
)
async def test_a_stale_pooled_session_is_retried_once_on_a_new_one(
    start_relay: StartRelay, verb: str, dropped_at: list[str]
) -> None:
    relay = await start_relay(Script())
    transport = SmtpTransport(config(relay))
    await transport.send(email())
    # The pooled session dies before the message is handed over, as one the server timed out
    # while idle would: nothing of it was committed, so sending it on a new session is safe.
    relay.sessions[0].script = Script(replies={verb: DROP})
    accepted = await transport.send(email())
    await transport.close()
    assert accepted.detail == "2.0.0 Ok: queued"
    first, second = relay.sessions
    await hung_up(first)
    assert (first.messages, second.messages) == (1, 1)
    assert first.verbs == ["EHLO", "MAIL", "RCPT", "DATA", *dropped_at]
    assert second.verbs == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled-session", "new-session"])
async def test_a_hang_up_after_the_message_data_is_unconfirmed_and_not_sent_again(
    start_relay: StartRelay, pooled: bool
) -> None:
    relay = await start_relay(Script())
    transport = SmtpTransport(config(relay))
    if pooled:
        await transport.send(email())
        relay.sessions[0].script = Script(after_data=DROP)
    else:
        relay.script = Script(after_data=DROP)
    # The relay read the whole message and hung up without a reply: it may have queued it.
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert (caught.value.code, caught.value.reason) == (
        "smtp_data_unconfirmed",
        "Unexpected EOF received",
    )
    [session] = relay.sessions
    await hung_up(session)
    offered = ["MAIL", "RCPT", "DATA"]
    assert session.verbs == ["EHLO", *offered, *offered] if pooled else ["EHLO", *offered]
    assert session.messages == (2 if pooled else 1)


async def test_no_reply_after_the_message_data_is_unconfirmed_and_not_sent_again(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(Script(after_data=None))
    transport = SmtpTransport(config(relay, timeout=0.3))
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert (caught.value.code, caught.value.reason) == (
        "smtp_data_unconfirmed",
        "Timed out waiting for server response",
    )
    [session] = relay.sessions
    await hung_up(session)
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert session.messages == 1


async def test_a_refusal_of_the_new_session_after_a_stale_one_is_that_refusal(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(Script())
    transport = SmtpTransport(config(relay))
    await transport.send(email())
    relay.sessions[0].script = Script(replies={"MAIL": DROP})
    relay.script = Script(greeting="421 4.3.2 relay.test: too busy, try again later")
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert (caught.value.code, caught.value.reason) == (
        "smtp_greeting_421",
        "421 4.3.2 relay.test: too busy, try again later",
    )
    first, second = relay.sessions
    await hung_up(first)
    await hung_up(second)
    assert (first.messages, second.messages) == (1, 0)
    assert first.verbs == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL"]
    assert second.verbs == []


async def test_the_chain_moves_on_from_a_relay_that_refuses_our_login(
    start_relay: StartRelay, fake_providers: FakeProviders
) -> None:
    refusing = await start_relay(Script(replies={"AUTH": "535 5.7.8 Error: authentication failed"}))
    chain = ProviderChain(
        [
            SmtpTransport(config(refusing, **CREDENTIALS)),
            SmtpTransport(SmtpConfig(host="127.0.0.1", port=fake_providers.smtp_port)),
        ]
    )
    message = email()
    result = await chain.send(message)
    await chain.close()
    assert result.provider == "smtp"
    assert result.error is None
    [refused, accepted] = result.tries
    assert isinstance(refused.error, TransientDeliveryError)
    assert (refused.error.code, refused.error.reason) == (
        "smtp_auth_535",
        "535 5.7.8 Error: authentication failed",
    )
    assert accepted.error is None
    [received] = fake_providers.smtp.received
    assert received.message_id == message.message_id_header
    [session] = refusing.sessions
    await hung_up(session)
    assert session.verbs == ["EHLO", "AUTH", "AUTH"]
