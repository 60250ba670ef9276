"""The raw ceiling: how fast can Python hand these messages to an SMTP server at all?

No database, no Celery, no queue: `processes` OS processes (spawned), each with `connections`
aiosmtplib connections opened once (connect + EHLO) and reused, on uvloop by default. Each
message is rendered as the service renders it, one `build_mime` per message, then sent with
`sendmail` by one of `connections` sender coroutines pulling from the process's share of the
messages. The clock runs from "go" (every process connected and ready) to the last process
reporting that its share was accepted by the server.

Message i is bench.mime's message_input(i): bench.content's ~3 KB body, a non-ASCII subject
for odd i. Its fields are made on the fly (microseconds; they stand in for the row the
service reads), the MIME rendering and the SMTP exchange are what is measured.

    python -m bench.raw_ceiling --messages 50000 [--processes 2] [--connections 16]

starts Postfix's smtp-sink (bench.sinks) and checks its counter afterwards; with --port it
sends to a server already listening there instead.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.mime import SENDER, message_input, outgoing_email
from bench.sinks import PostfixSmtpSink, wait_for
from mailsvc.delivery.mime import build_mime

SENDER_ADDRESS = SENDER.email
READY_TIMEOUT = 60.0


@dataclass
class RawResult:
    messages: int
    seconds: float
    per_second: float
    processes: int
    connections: int


def _shares(messages: int, processes: int) -> list[range]:
    """Consecutive message numbers, split as evenly as possible."""
    base, extra = divmod(messages, processes)
    shares, start = [], 0
    for index in range(processes):
        size = base + (1 if index < extra else 0)
        shares.append(range(start, start + size))
        start += size
    return shares


async def _connect(host: str, port: int, connections: int) -> list[aiosmtplib.SMTP]:
    async def one() -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
        await smtp.connect()
        await smtp.ehlo()
        return smtp

    return list(await asyncio.gather(*(one() for _ in range(connections))))


async def _send(clients: list[aiosmtplib.SMTP], share: range) -> int:
    pending = deque(share)
    sent = 0

    async def sender(smtp: aiosmtplib.SMTP) -> None:
        nonlocal sent
        while pending:
            m = message_input(pending.popleft())
            raw = build_mime(outgoing_email(m))
            await smtp.sendmail(SENDER_ADDRESS, [m.recipient], raw)
            sent += 1

    await asyncio.gather(*(sender(smtp) for smtp in clients))
    return sent


async def _close(clients: list[aiosmtplib.SMTP]) -> None:
    for smtp in clients:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            smtp.close()


def _worker(
    pipe: Connection,
    go: Any,
    host: str,
    port: int,
    share: range,
    connections: int,
    use_uvloop: bool,
) -> None:
    """One process: connect, say "ready", wait for go, send its share, say "done"."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        # One Runner, so the connections opened before "go" live on the loop that sends.
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            clients = runner.run(_connect(host, port, min(connections, max(len(share), 1))))
            pipe.send(("ready", os.getpid()))
            go.wait()
            sent = runner.run(_send(clients, share))
            pipe.send(("done", sent))
            runner.run(_close(clients))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        raise
    finally:
        pipe.close()


def _receive(pipes: list[Connection], expected: str, timeout: float) -> list[Any]:
    """One message from every pipe, which must be `expected`; errors and deaths raise."""
    values: list[Any] = [None] * len(pipes)
    waiting = set(range(len(pipes)))
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(waiting)} worker(s) not {expected} after {timeout:.0f} s")
        readable = wait([pipes[i] for i in waiting], timeout=left)
        for index in [i for i in waiting if pipes[i] in readable]:
            try:
                kind, value = pipes[index].recv()
            except EOFError:
                raise RuntimeError(f"worker {index} exited before it was {expected}") from None
            if kind == "error":
                raise RuntimeError(f"worker {index} failed:\n{value}")
            if kind != expected:
                raise RuntimeError(f"worker {index} said {kind!r}, expected {expected!r}")
            values[index] = value
            waiting.discard(index)
    return values


def run_raw_ceiling(
    host: str,
    port: int,
    messages: int,
    processes: int = 2,
    connections: int = 16,
    use_uvloop: bool = True,
) -> RawResult:
    """Send `messages` messages to host:port and time it from "go" to the last acceptance."""
    if messages < 1 or processes < 1 or connections < 1:
        raise ValueError("messages, processes and connections must be at least 1")
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    workers, pipes = [], []
    for share in _shares(messages, processes):
        parent_end, child_end = context.Pipe(duplex=False)
        worker = context.Process(
            target=_worker,
            args=(child_end, go, host, port, share, connections, use_uvloop),
            daemon=True,
        )
        worker.start()
        child_end.close()
        workers.append(worker)
        pipes.append(parent_end)
    try:
        _receive(pipes, "ready", READY_TIMEOUT)
        started = time.perf_counter()
        go.set()
        sent = _receive(pipes, "done", max(600.0, messages / 50))
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.join(30)
        if sum(sent) != messages:
            raise RuntimeError(f"workers sent {sum(sent)} of {messages} messages")
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
        for pipe in pipes:
            pipe.close()
    return RawResult(
        messages=messages,
        seconds=seconds,
        per_second=messages / seconds,
        processes=processes,
        connections=connections,
    )


def markdown(result: RawResult, *, loop: str, server: str, received: str) -> str:
    return "\n".join(
        [
            "| server | processes | connections/process | loop | messages | seconds "
            "| emails/s | server received |",
            "|---|---:|---:|---|---:|---:|---:|---|",
            f"| {server} | {result.processes} | {result.connections} | {loop} "
            f"| {result.messages:,} | {result.seconds:.2f} | {result.per_second:,.0f} "
            f"| {received} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_ceiling", description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16, help="per process")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="send here instead of a new smtp-sink")
    args = parser.parse_args()
    loop = "asyncio" if args.no_uvloop else "uvloop"

    def run(host: str, port: int) -> RawResult:
        return run_raw_ceiling(
            host,
            port,
            args.messages,
            processes=args.processes,
            connections=args.connections,
            use_uvloop=not args.no_uvloop,
        )

    if args.port is not None:
        result = run(args.host, args.port)
        print(markdown(result, loop=loop, server=f"{args.host}:{args.port}", received="n/a"))
        return

    if not PostfixSmtpSink.available():
        raise SystemExit("smtp-sink not found: install Debian's postfix, or pass --port")
    with tempfile.TemporaryDirectory(prefix="mailsvc-raw-ceiling-") as scratch:
        sink = PostfixSmtpSink(Path(scratch))
        try:
            result = run(sink.host, sink.port)
            wait_for(sink, args.messages, timeout=30)
            time.sleep(0.5)  # anything beyond the target would show up by now
            received = sink.count()
        finally:
            sink.stop()
    print(f"{os.cpu_count()} cores; message bodies from bench.content, built with build_mime\n")
    print(markdown(result, loop=loop, server=sink.name, received=f"{received:,}"))
    if received != args.messages:
        raise SystemExit(f"smtp-sink counted {received} messages, expected {args.messages}")


if __name__ == "__main__":
    main()
