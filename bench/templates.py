"""Rendering each built-in template and building its MIME message, on one core.

For every built-in, one message is: TemplateRenderer.render_one (the worker's path: built-in
lookup, the compiled-template cache, the sandboxed render with its bounds) with a sample context,
then mailsvc's own builder (`mailsvc.delivery.mime.build_mime`) on the result. Contexts vary
(`distinct` contacts in turn), so no two messages in a row are the same. Every distinct message
is parsed back and checked as bench.mime checks its own. Rates are the best of `repeats` runs of
`iterations` messages each, timed with perf_counter, in this one process.

    python -m bench.templates [--iterations 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from bench.mime import DATE, SENDER, MessageInput, check_message
from mailsvc.config import Settings
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.mime import build_mime
from mailsvc.templates.builtin import BUILTIN_NAMES, sample_variables
from mailsvc.templates.engine import Rendered
from mailsvc.templates.links import set_link_settings, use_link_settings
from mailsvc.templates.service import TemplateRenderer

DISTINCT = 50
TENANT_ID = uuid.UUID(int=1)
NAMES = ["Ada Lovelace", "Charles Babbage", "Grace Hopper", "Émilie du Châtelet", None]


@dataclass
class TemplateBenchResult:
    template: str
    per_second: float  # rendered and built, on one core
    bytes_avg: float  # of the MIME message
    ok: bool
    problem: str | None = None  # the first check that failed, when not ok

    @property
    def us_per_message(self) -> float:
        return 1e6 / self.per_second


@dataclass(frozen=True)
class _Job:
    index: int
    email: str
    name: str | None
    variables: dict[str, Any]


def _jobs(template: str, distinct: int) -> list[_Job]:
    jobs = []
    for i in range(distinct):
        variables = copy.deepcopy(sample_variables(template))
        name = NAMES[i % len(NAMES)]
        email = f"user{i}@example.net"
        variables["contact"].update(email=email, name=name)
        jobs.append(_Job(index=i, email=email, name=name, variables=variables))
    return jobs


def _outgoing(job: _Job, rendered: Rendered) -> OutgoingEmail:
    message_id = uuid.UUID(int=job.index + 1)
    return OutgoingEmail(
        message_id=message_id,
        message_id_header=f"<{message_id.hex}@example.com>",
        sender=SENDER,
        to=[Mailbox(job.email, job.name)],
        subject=rendered.subject,
        date=DATE,
        text=rendered.text,
        html=rendered.html,
    )


def _render(renderer: TemplateRenderer, template: str, job: _Job) -> Rendered:
    rendered = renderer.render_one(TENANT_ID, template, None, job.variables)
    if not isinstance(rendered, Rendered):
        raise RuntimeError(f"{template} does not render: {rendered}")
    return rendered


def _check(
    template: str, jobs: Sequence[_Job], renderer: TemplateRenderer
) -> tuple[str | None, float]:
    """The first problem among the distinct messages (or None), and their average size."""
    sizes = []
    problem = None
    for job in jobs:
        rendered = _render(renderer, template, job)
        raw = build_mime(_outgoing(job, rendered))
        sizes.append(len(raw))
        expected = MessageInput(
            message_id=uuid.UUID(int=job.index + 1),
            message_id_header=f"<{uuid.UUID(int=job.index + 1).hex}@example.com>",
            sender=SENDER,
            recipient=job.email,
            subject=rendered.subject,
            text=rendered.text or "",
            html=rendered.html or "",
            date=DATE,
        )
        problem = problem or check_message(raw, expected)
    return problem, sum(sizes) / len(sizes)


@contextmanager
def _link_secret() -> Iterator[None]:
    """signed_link needs a secret; outside a configured service, lend it one."""
    saved = use_link_settings(Settings(link_secret=SecretStr("bench-link-secret")))
    try:
        yield
    finally:
        set_link_settings(saved)


def measure(
    template: str, *, iterations: int, repeats: int, distinct: int = DISTINCT
) -> TemplateBenchResult:
    renderer = TemplateRenderer()
    jobs = _jobs(template, distinct)
    # The check pass renders and builds every distinct message once, which also warms the cache.
    problem, bytes_avg = _check(template, jobs, renderer)
    sequence = [jobs[k % len(jobs)] for k in range(iterations)]
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for job in sequence:
            build_mime(_outgoing(job, _render(renderer, template, job)))
        best = min(best, time.perf_counter() - started)
    return TemplateBenchResult(
        template=template,
        per_second=iterations / best,
        bytes_avg=bytes_avg,
        ok=problem is None,
        problem=problem,
    )


def run_template_bench(
    iterations: int = 2000, repeats: int = 3, distinct: int = DISTINCT
) -> list[TemplateBenchResult]:
    """One result per built-in, in BUILTIN_NAMES order; single process, so one core."""
    with _link_secret():
        return [
            measure(name, iterations=iterations, repeats=repeats, distinct=distinct)
            for name in BUILTIN_NAMES
        ]


def markdown(results: Sequence[TemplateBenchResult]) -> str:
    lines = [
        "| template | renders+builds/s (1 core) | µs/msg | avg bytes | checks |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        checks = "ok" if r.ok else f"FAILED: {r.problem}"
        lines.append(
            f"| {r.template} | {r.per_second:,.0f} | {r.us_per_message:.1f} "
            f"| {r.bytes_avg:,.0f} | {checks} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.templates", description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000, help="messages per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; best kept")
    args = parser.parse_args()
    results = run_template_bench(iterations=args.iterations, repeats=args.repeats)
    print(
        f"{DISTINCT} distinct contexts per template, best of {args.repeats} x "
        f"{args.iterations:,} render + build_mime, one process\n"
    )
    print(markdown(results))
    if not all(r.ok for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
