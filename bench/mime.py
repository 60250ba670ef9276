"""Building MIME: where the time goes.

The same 200 distinct messages (bench.content's ~3 KB notification: text and HTML, one
recipient, a non-ASCII subject for every other one) built on ONE core by:

a. `email.message.EmailMessage` with `policy=email.policy.SMTP` (set_content + add_alternative);
b. `email.mime` (MIMEMultipart("alternative") + two UTF-8 MIMEText parts), as_bytes(SMTP);
c. mailsvc's own builder, `mailsvc.delivery.mime.build_mime`.

Every builder starts from the same plain fields (mailsvc's includes making its OutgoingEmail).
Rates are the best of `repeats` runs of `iterations` builds each, timed with perf_counter.
Every one of the 200 messages is also parsed back with the standard library and checked:
Subject, From, To, Message-ID, both bodies, lines of at most 998 bytes, CRLF line ends only.

    python -m bench.mime [--iterations 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import gc
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr

from bench.content import message_body
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.mime import build_mime

DISTINCT = 200
SENDER = Mailbox("noreply@example.com", "Example")
NON_ASCII_SUFFIX = " — ça marche"
DATE = datetime(2026, 1, 15, 9, 30, 5, tzinfo=UTC)
MAX_LINE = 998  # RFC 5322 section 2.1.1, without the CRLF


@dataclass(frozen=True)
class MessageInput:
    """The plain fields every builder starts from."""

    message_id: uuid.UUID
    message_id_header: str
    sender: Mailbox
    recipient: str
    subject: str
    text: str
    html: str
    date: datetime


@dataclass
class MimeResult:
    name: str
    msgs_per_second: float
    ok: bool
    bytes_avg: float
    problem: str | None = None  # the first check that failed, when not ok

    @property
    def us_per_message(self) -> float:
        return 1e6 / self.msgs_per_second


def message_input(i: int) -> MessageInput:
    """Message `i` of the benchmarks: message_body(i), non-ASCII subject when i is odd."""
    body = message_body(i)
    message_id = uuid.UUID(int=i + 1)
    return MessageInput(
        message_id=message_id,
        message_id_header=f"<{message_id.hex}@example.com>",
        sender=SENDER,
        recipient=body["to"][0],
        subject=body["subject"] + (NON_ASCII_SUFFIX if i % 2 else ""),
        text=body["text"],
        html=body["html"],
        date=DATE,
    )


def outgoing_email(m: MessageInput) -> OutgoingEmail:
    return OutgoingEmail(
        message_id=m.message_id,
        message_id_header=m.message_id_header,
        sender=m.sender,
        to=[Mailbox(m.recipient)],
        subject=m.subject,
        date=m.date,
        text=m.text,
        html=m.html,
    )


def build_email_message(m: MessageInput) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = HeaderAddress(m.sender.name or "", addr_spec=m.sender.email)
    msg["To"] = m.recipient
    msg["Subject"] = m.subject
    msg["Date"] = m.date
    msg["Message-ID"] = m.message_id_header
    msg.set_content(m.text)
    msg.add_alternative(m.html, subtype="html")
    return msg.as_bytes()


def build_email_mime(m: MessageInput) -> bytes:
    msg = MIMEMultipart("alternative")
    msg["From"] = formataddr((m.sender.name or "", m.sender.email))
    msg["To"] = m.recipient
    # Legacy code encodes non-ASCII headers itself; the SMTP policy refolds what is too long.
    msg["Subject"] = m.subject if m.subject.isascii() else Header(m.subject, "utf-8").encode()
    msg["Date"] = format_datetime(m.date)
    msg["Message-ID"] = m.message_id_header
    msg.attach(MIMEText(m.text, "plain", "utf-8"))
    msg.attach(MIMEText(m.html, "html", "utf-8"))
    return msg.as_bytes(policy=email.policy.SMTP)


def build_mailsvc(m: MessageInput) -> bytes:
    return build_mime(outgoing_email(m))


BUILDERS: list[tuple[str, Callable[[MessageInput], bytes]]] = [
    ("email.message.EmailMessage (policy=SMTP)", build_email_message),
    ("email.mime MIMEMultipart + MIMEText", build_email_mime),
    ("mailsvc build_mime", build_mailsvc),
]


def _normal(text: str) -> str:
    return text.replace("\r\n", "\n").rstrip("\n")


def check_message(raw: bytes, m: MessageInput) -> str | None:
    """What is wrong with `raw` as the encoding of `m`, or None."""
    rest = raw.replace(b"\r\n", b"")
    if b"\n" in rest or b"\r" in rest:
        return "a line does not end in CRLF"
    if not raw.endswith(b"\r\n"):
        return "the message does not end in CRLF"
    longest = max(len(line) for line in raw.split(b"\r\n"))
    if longest > MAX_LINE:
        return f"a line of {longest} bytes"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    if parsed.defects:
        return f"parser defects: {parsed.defects}"
    if str(parsed["Subject"]) != m.subject:
        return f"Subject {parsed['Subject']!r} != {m.subject!r}"
    senders = parsed["From"].addresses
    if [(a.display_name, a.addr_spec) for a in senders] != [(m.sender.name, m.sender.email)]:
        return f"From {parsed['From']!r}"
    if [a.addr_spec for a in parsed["To"].addresses] != [m.recipient]:
        return f"To {parsed['To']!r}"
    if str(parsed["Message-ID"]).strip() != m.message_id_header:
        return f"Message-ID {parsed['Message-ID']!r}"
    for subtype, expected in (("plain", m.text), ("html", m.html)):
        part = parsed.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_type() != f"text/{subtype}":
            return f"no text/{subtype} part"
        if _normal(part.get_content()) != _normal(expected):
            return f"the text/{subtype} body does not decode to the input"
    return None


def measure(
    name: str,
    build: Callable[[MessageInput], bytes],
    inputs: Sequence[MessageInput],
    *,
    iterations: int,
    repeats: int,
) -> MimeResult:
    # The check pass builds every message once, which also warms up the builder.
    problem = None
    sizes = []
    for m in inputs:
        raw = build(m)
        sizes.append(len(raw))
        problem = problem or check_message(raw, m)

    sequence = [inputs[k % len(inputs)] for k in range(iterations)]
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for m in sequence:
            build(m)
        best = min(best, time.perf_counter() - started)
    return MimeResult(
        name=name,
        msgs_per_second=iterations / best,
        ok=problem is None,
        bytes_avg=sum(sizes) / len(sizes),
        problem=problem,
    )


def run_mime_bench(
    iterations: int = 5000, repeats: int = 3, distinct: int = DISTINCT
) -> list[MimeResult]:
    """One result per builder, in BUILDERS order; single process, so one core."""
    inputs = [message_input(i) for i in range(distinct)]
    return [
        measure(name, build, inputs, iterations=iterations, repeats=repeats)
        for name, build in BUILDERS
    ]


def markdown(results: Sequence[MimeResult]) -> str:
    ours = next((r for r in results if r.name == "mailsvc build_mime"), None)
    lines = [
        "| builder | msgs/s (1 core) | µs/msg | mailsvc is | avg bytes | checks |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio = f"{ours.msgs_per_second / r.msgs_per_second:.1f}x faster" if ours else ""
        if r is ours:
            ratio = "—"
        checks = "ok" if r.ok else f"FAILED: {r.problem}"
        lines.append(
            f"| {r.name} | {r.msgs_per_second:,.0f} | {r.us_per_message:.1f} | {ratio} "
            f"| {r.bytes_avg:,.0f} | {checks} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mime", description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000, help="builds per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; best kept")
    args = parser.parse_args()
    results = run_mime_bench(iterations=args.iterations, repeats=args.repeats)
    print(
        f"{DISTINCT} distinct messages, best of {args.repeats} x {args.iterations:,} builds, "
        "one process\n"
    )
    print(markdown(results))
    if not all(r.ok for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
