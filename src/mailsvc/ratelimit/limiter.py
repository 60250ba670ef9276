"""GCRA buckets in Redis: a batch asks for n tokens and is granted k ≤ n, atomically across
every bucket that applies (tenant and lane, provider), by one Lua script.

A rate of L per window W with a burst of b is a GCRA with emission interval W / (L - b) and
tolerance (b - 1) intervals. At most b + (L - b) = L tokens are ever granted in any sliding
window W, and a steady backlog gets (L - b) / L of the limit. The burst is what a batch can take
at once after a pause, and it must cover what the bulk feeder releases between two of its runs,
or each batch takes a few tokens and parks the rest again: 4% of a per-minute limit (2.4 s of
tokens, 96% of the limit sustained), half of a per-second one (50% sustained: a one-second
window leaves no room for both a burst and a full rate).

Nothing sleeps holding a slot: the caller learns when the next token frees up, and how far
apart the following ones are, and parks what it was not granted until then.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

_PREFIX = "mailsvc:rate:"

# KEYS: bucket keys. ARGV: n, now_ms, then per bucket: interval_ms, tolerance_ms.
# Returns {granted, wait_ms until the next token, interval_ms of the slowest bucket,
#          tokens still free at once in the fullest bucket, ms until every bucket is full again}.
_TAKE = """
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local grant = n
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tolerance = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local allowed = math.floor((now + tolerance - tat) / interval) + 1
  if allowed < 0 then allowed = 0 end
  if allowed < grant then grant = allowed end
end
local wait = 0
local slowest = 0
local remaining = -1
local full_in = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tolerance = tonumber(ARGV[2 + 2 * i])
  local tat = tats[i] + grant * interval
  if grant > 0 then
    redis.call('SET', key, tostring(tat), 'PX', math.ceil(tat - now + tolerance + interval))
  end
  local next_free = tat - tolerance - now
  if next_free > wait then wait = next_free end
  if interval > slowest then slowest = interval end
  local free = math.floor((now + tolerance - tat) / interval) + 1
  if free < 0 then free = 0 end
  if remaining < 0 or free < remaining then remaining = free end
  if tat - now > full_in then full_in = tat - now end
end
return {grant, tostring(wait), tostring(slowest), remaining, tostring(full_in)}
"""


@dataclass(frozen=True)
class Rate:
    """`limit` tokens per `window_seconds`, of which `burst` may go at once.

    Without an explicit burst, no sliding window ever sees more than `limit` (the burst is taken
    out of the sustained rate, as a provider's contract needs). With one (`bucket`), it is a plain
    token bucket: `burst` at once, then `limit` per window sustained (the API's request limit).
    """

    limit: int
    window_seconds: float
    bucket: int | None = None

    @property
    def burst(self) -> int:
        if self.bucket is not None:
            return self.bucket
        fraction = 0.04 if self.window_seconds >= 60 else 0.5
        return max(1, min(self.limit - 1, round(self.limit * fraction)))

    @property
    def per_second(self) -> float:
        """The sustained rate a backlog gets."""
        if self.bucket is not None:
            return self.limit / self.window_seconds
        return (
            (self.limit - self.burst) / self.window_seconds
            if self.limit > 1
            else (1 / self.window_seconds)
        )

    @property
    def interval_ms(self) -> float:
        if self.bucket is not None:
            return self.window_seconds * 1000 / self.limit
        return self.window_seconds * 1000 / max(1, self.limit - self.burst)

    @property
    def tolerance_ms(self) -> float:
        return (self.burst - 1) * self.interval_ms


@dataclass(frozen=True)
class Bucket:
    name: str  # e.g. "provider:smtp:minute", "tenant:<id>:bulk:second"
    rate: Rate


@dataclass(frozen=True)
class Grant:
    granted: int
    wait_seconds: float  # until the first token not granted frees up
    interval_seconds: float  # between the tokens after that, at the slowest bucket's pace
    remaining: int | None = None  # tokens still free at once (None: no bucket applied)
    full_in_seconds: float = 0.0  # until every bucket is full again

    def slot(self, index: int) -> float:
        """Seconds from now until the `index`-th token not granted (0-based) may be taken."""
        return self.wait_seconds + index * self.interval_seconds


class RateLimiter:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    async def take(self, buckets: Sequence[Bucket], n: int, *, now: float | None = None) -> Grant:
        """Up to n tokens from every bucket at once; `now` (seconds) lets tests drive the clock."""
        if not buckets or n <= 0:
            return Grant(granted=n, wait_seconds=0.0, interval_seconds=0.0)
        args: list[float] = [n, (time.time() if now is None else now) * 1000]
        for bucket in buckets:
            args += [bucket.rate.interval_ms, bucket.rate.tolerance_ms]
        granted, wait_ms, interval_ms, remaining, full_in_ms = await self._take(
            keys=[_PREFIX + b.name for b in buckets], args=args
        )
        return Grant(
            granted=int(granted),
            wait_seconds=max(0.0, float(wait_ms) / 1000),
            interval_seconds=float(interval_ms) / 1000,
            remaining=int(remaining),
            full_in_seconds=max(0.0, float(full_in_ms) / 1000),
        )
