"""POST /v1/messages: latency at a fixed arrival rate (open loop); throughput at fixed concurrency.

Open loop: request i is due at start + i/rate, and its latency counts from when it was due, so a
slow server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from bench.content import message_body

WARMUP = 20


@dataclass
class AcceptResult:
    label: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _result(label: str, latencies: list[float], errors: int, seconds: float) -> AcceptResult:
    ms = [v * 1000 for v in latencies]
    return AcceptResult(
        label=label,
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(ms, 0.50),
        p99_ms=percentile(ms, 0.99),
        max_ms=max(ms) if ms else float("nan"),
    )


async def open_loop(api_url: str, token: str, *, rate: float, seconds: float) -> AcceptResult:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, limits=limits) as client:
        # Warm the connection pool and the server's caches.
        await asyncio.gather(
            *(client.post("/v1/messages", json=message_body(i)) for i in range(WARMUP))
        )

        async def one(i: int, due: float) -> None:
            nonlocal errors
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            response = await client.post("/v1/messages", json=message_body(i))
            if response.status_code != 202:
                errors += 1
            latencies.append(time.perf_counter() - due)

        start = time.perf_counter() + 0.1
        total = int(rate * seconds)
        await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
        elapsed = time.perf_counter() - start
    return _result(f"accept, open loop {rate:.0f}/s", latencies, errors, elapsed)


async def closed_loop(
    api_url: str, token: str, *, concurrency: int, seconds: float
) -> AcceptResult:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def loop(worker: int) -> None:
            nonlocal errors
            i = worker
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await client.post("/v1/messages", json=message_body(i))
                if response.status_code != 202:
                    errors += 1
                latencies.append(time.perf_counter() - started)
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _result(f"accept, {concurrency} concurrent", latencies, errors, elapsed)
