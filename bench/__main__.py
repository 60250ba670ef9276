"""`make bench`: the benchmarks, run against the stack as `make run` starts it.

1. `mailsvc dev` with its capture SMTP server, exactly as `make run`: accept latency at a fixed
   arrival rate, accept throughput at fixed concurrency, and end-to-end throughput of 5,000
   messages beside the naive one-task-per-email baseline.
2. When Postfix's smtp-sink is installed: the same stack relaying to smtp-sink, and the same
   end-to-end pair, so the sink is not what is measured.
3. Building MIME on one core: `email.message.EmailMessage`, `email.mime` and mailsvc's builder
   (bench.mime).
4. Rendering and building each built-in template on one core (bench.templates), and the
   birthday job's selection over 1,000,000 contacts (bench.birthdays).
5. What durable worker commits cost (bench.durability): the claim and record statements with
   synchronous commit on and off, and the same pair end to end into smtp-sink.
6. Lanes (bench.lanes, needs smtp-sink): transactional latency while 200,000 bulk messages
   drain, bulk throughput beside the raw ceiling and the naive baseline, and the accuracy of a
   global 6,000/min limit across 4 worker processes. `--skip-lanes` leaves it out (~9 min).

Prints a table and writes it to bench/results/. Figures depend on the machine: the README
records those of the 2-core reference machine with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from bench import accept, birthdays, durability, lanes, mime, templates, throughput
from bench.sinks import CaptureSink, PostfixSmtpSink, Sink, wait_for
from bench.stack import Stack, start_stack, use_stack

RESULTS = Path(__file__).parent / "results"
Row = tuple[str, str, str]


def _median(results: list[throughput.ThroughputResult]) -> throughput.ThroughputResult:
    return sorted(results, key=lambda r: r.per_second)[len(results) // 2]


def _end_to_end(stack: Stack, sink: Sink, messages: int, folder: Path, trials: int) -> list[Row]:
    ours_runs, naive_runs = [], []
    for trial in range(1, trials + 1):
        print(f"end to end into {sink.name}, trial {trial}: mailsvc …", flush=True)
        jobs = asyncio.run(throughput.stage_messages(stack, messages, batch_size=100))
        ours_runs.append(throughput.mailsvc_throughput(sink, jobs, messages))
        print(f"end to end into {sink.name}, trial {trial}: naive baseline …", flush=True)
        naive_runs.append(throughput.naive_throughput(stack.redis_url, sink, messages, folder))
    ours, naive = _median(ours_runs), _median(naive_runs)
    rows = [
        (
            r.label,
            f"{r.per_second:,.0f} emails/s",
            f"{r.messages:,} in {r.seconds:.2f} s; median of "
            + ", ".join(f"{x.per_second:,.0f}" for x in runs),
        )
        for r, runs in ((ours, ours_runs), (naive, naive_runs))
    ]
    rows.append(
        (f"ratio mailsvc / naive ({sink.name})", f"{ours.per_second / naive.per_second:.1f}x", "")
    )
    return rows


def _accept(stack: Stack, args: argparse.Namespace, sink: Sink) -> list[Row]:
    print(f"accept: open loop at {args.rate:.0f}/s for {args.seconds:.0f} s …", flush=True)
    paced = asyncio.run(
        accept.open_loop(stack.api_url, stack.token, rate=args.rate, seconds=args.seconds)
    )
    print(f"accept: {args.concurrency} concurrent for {args.seconds:.0f} s …", flush=True)
    flat_out = asyncio.run(
        accept.closed_loop(
            stack.api_url, stack.token, concurrency=args.concurrency, seconds=args.seconds
        )
    )
    # Let the worker deliver what was accepted before the next measurement starts.
    wait_for(sink, accept.WARMUP + paced.requests + flat_out.requests, timeout=600)
    return [
        (
            r.label,
            f"{r.per_second:,.0f} req/s",
            f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms, "
            f"{r.errors} errors",
        )
        for r in (paced, flat_out)
    ]


class Results(list[Row]):
    """The table so far, printed and saved as each part finishes: a late failure loses nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.path = RESULTS / f"bench-{int(time.time())}.md"

    def __iadd__(self, rows: Iterable[Row]) -> Results:  # type: ignore[override,misc]
        added = list(rows)
        self.extend(added)
        for row in added:
            print("| " + " | ".join(row) + " |", flush=True)
        self.save()
        return self

    def save(self, *, final: bool = False) -> None:
        header = (
            f"mailsvc bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}"
            + ("" if final else " (incomplete)")
        )
        table = [header, "", "| measurement | rate | detail |", "|---|---|---|"]
        table += [f"| {a} | {b} | {c} |" for a, b, c in self]
        text = "\n".join(table)
        if final:
            print("\n" + text)
        RESULTS.mkdir(exist_ok=True)
        self.path.write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=5, help="end-to-end runs; median kept")
    parser.add_argument("--skip-lanes", action="store_true", help="leave out bench.lanes")
    args = parser.parse_args()

    rows = Results()
    with tempfile.TemporaryDirectory(prefix="mailsvc-bench-") as scratch:
        folder = Path(scratch)
        print("starting the stack as `make run` does …", flush=True)
        stack = start_stack(folder / "capture")
        try:
            use_stack(stack)
            capture = CaptureSink(stack.outbox, stack.smtp_port)
            rows += _accept(stack, args, capture)
            rows += _end_to_end(stack, capture, args.messages, folder, args.trials)
        finally:
            stack.stop()

        if PostfixSmtpSink.available():
            sink = PostfixSmtpSink(folder)
            print("starting the stack again, relaying to smtp-sink …", flush=True)
            stack = start_stack(folder / "relay", smtp=(sink.host, sink.port))
            try:
                use_stack(stack)
                rows += _end_to_end(stack, sink, args.messages, folder, args.trials)
            finally:
                stack.stop()
                sink.stop()
        else:
            rows += [("smtp-sink runs", "skipped", "install Debian's postfix for smtp-sink")]

    print("building MIME on one core …", flush=True)
    rows += [
        (
            f"MIME build, {r.name}, one core",
            f"{r.msgs_per_second:,.0f} msgs/s",
            f"{r.us_per_message:.1f} µs/message; parsed back: "
            + ("ok" if r.ok else f"FAILED {r.problem}"),
        )
        for r in mime.run_mime_bench(iterations=5000, repeats=3)
    ]
    print("rendering and building the built-in templates on one core …", flush=True)
    rows += [
        (
            f"template {r.template}: render + MIME build, one core",
            f"{r.per_second:,.0f} emails/s",
            f"{r.bytes_avg:,.0f} bytes; parsed back: " + ("ok" if r.ok else f"FAILED {r.problem}"),
        )
        for r in templates.run_template_bench(iterations=2000, repeats=3)
    ]
    print("the birthday job's selection over 1,000,000 contacts …", flush=True)
    rows += birthdays.run_embedded(1_000_000)
    print("durable claims and outcomes: synchronous commit on and off …", flush=True)
    rows += durability.run(args.messages, rounds=5, end_to_end_rounds=4)
    if not args.skip_lanes and PostfixSmtpSink.available():
        print("lanes: latency under bulk load, throughput, rate-limit accuracy …", flush=True)
        rows += lanes.run(lanes.parser().parse_args([]))

    rows.save(final=True)


if __name__ == "__main__":
    main()
