"""Circuit breakers per provider, kept in Redis so that every worker process shares them.

Closed: requests flow. After `threshold` failures in a row the circuit opens for `cooldown`
seconds: requests skip the provider. Then it is half-open: one probe at a time (a Redis
SET NX token) may try; a success closes the circuit, a failure opens it again.

Each process reads a provider's state at most once per `cache_seconds`, so a batch of sends
costs no Redis round trip while every circuit is closed and quiet. If Redis cannot be reached
the breaker fails open, and stops asking for a few seconds: it never stops or slows mail on
its own account.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_PREFIX = "mailsvc:breaker:"
_BACK_OFF_SECONDS = 5.0  # after Redis failed us, how long to allow everything without asking


def breaker_redis(url: str) -> aioredis.Redis:
    """A client for the breaker: short timeouts and no retries, so an outage costs one wait."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    return client


# KEYS: failures, open_until, probe   ARGV: threshold, now, cooldown, failures_ttl
# Returns 1 when the circuit is open after this failure.
_RECORD_FAILURE = """
local now = tonumber(ARGV[2])
local open_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if open_until > now then
  return 1
end
local reopen = open_until > 0
if not reopen then
  local failures = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  reopen = failures >= tonumber(ARGV[1])
end
if reopen then
  redis.call('SET', KEYS[2], tostring(now + tonumber(ARGV[3])))
  redis.call('DEL', KEYS[1], KEYS[3])
  return 1
end
return 0
"""


class Breaker(Protocol):
    async def is_open(self, provider: str) -> bool: ...
    async def allow(self, provider: str) -> bool: ...
    async def record_success(self, provider: str) -> None: ...
    async def record_failure(self, provider: str) -> None: ...


@dataclass(frozen=True)
class BreakerState:
    failures: int
    open_until: float  # 0: closed

    def status(self, now: float) -> str:
        if not self.open_until:
            return "closed"
        return "open" if now < self.open_until else "half_open"


class RedisCircuitBreaker:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        threshold: int,
        cooldown_seconds: float,
        cache_seconds: float = 1.0,
    ) -> None:
        self.redis = redis
        self.threshold = threshold
        self.cooldown = cooldown_seconds
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, BreakerState]] = {}
        self._record_failure = redis.register_script(_RECORD_FAILURE)
        self._unreachable_until = 0.0

    @property
    def reachable(self) -> bool:
        """False for a few seconds after Redis failed to answer: until then nothing is asked."""
        return time.monotonic() >= self._unreachable_until

    def _lost(self, exc: RedisError) -> None:
        self._unreachable_until = time.monotonic() + _BACK_OFF_SECONDS
        log.warning("circuit breaker state unreachable; allowing every provider: %s", exc)

    @staticmethod
    def _keys(provider: str) -> tuple[str, str, str]:
        base = _PREFIX + provider
        return f"{base}:failures", f"{base}:open_until", f"{base}:probe"

    async def state(self, provider: str, *, fresh: bool = False) -> BreakerState:
        cached = self._cache.get(provider)
        now = time.monotonic()
        if cached is not None and not fresh and cached[0] > now:
            return cached[1]
        failures_key, open_key, _ = self._keys(provider)
        failures, open_until = await self.redis.mget(failures_key, open_key)
        state = BreakerState(int(failures or 0), float(open_until or 0))
        self._cache[provider] = (now + self.cache_seconds, state)
        return state

    async def is_open(self, provider: str) -> bool:
        """Open and cooling down (no probe yet): a look at the cached state, with no side effect."""
        if not self.reachable:
            return False
        try:
            return (await self.state(provider)).status(time.time()) == "open"
        except RedisError as exc:
            self._lost(exc)
            return False

    async def allow(self, provider: str) -> bool:
        if not self.reachable:
            return True
        try:
            state = await self.state(provider)
            status = state.status(time.time())
            if status == "closed":
                return True
            if status == "open":
                return False
            # Half-open: let exactly one caller, in any process, probe the provider.
            _, _, probe_key = self._keys(provider)
            acquired = await self.redis.set(
                probe_key, "1", nx=True, px=int(max(self.cooldown, 1.0) * 1000)
            )
            return bool(acquired)
        except RedisError as exc:
            self._lost(exc)
            return True

    async def record_success(self, provider: str) -> None:
        if not self.reachable:
            return
        try:
            state = await self.state(provider)
            if state.failures == 0 and not state.open_until:
                return  # closed and quiet: nothing to reset, no round trip
            await self.redis.delete(*self._keys(provider))
            self._cache.pop(provider, None)
            if state.open_until:
                log.info("circuit closed", extra={"fields": {"provider": provider}})
        except RedisError as exc:
            self._lost(exc)

    async def record_failure(self, provider: str) -> None:
        if not self.reachable:
            return
        try:
            opened = await self._record_failure(
                keys=list(self._keys(provider)),
                args=[self.threshold, time.time(), self.cooldown, int(self.cooldown * 10) + 60],
            )
            self._cache.pop(provider, None)
            if opened:
                log.warning("circuit open", extra={"fields": {"provider": provider}})
        except RedisError as exc:
            self._lost(exc)
