"""Exactly one beat: a second `mailsvc beat` stands by while the first holds the lock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from mailsvc.worker.beat import BeatLock
from tests.support.env import service_env
from tests.support.processes import BEAT_READY, ServiceProcess, eventually_sync, start_service
from tests.support.servers import TestServers

pytestmark = pytest.mark.e2e

STANDING_BY = "another beat holds the lock"


def wait_until(condition: Callable[[], bool], process: ServiceProcess, what: str) -> None:
    def log_tail() -> str:
        return f"{what}; {process.name}'s log ends:\n{process.log()[-3000:]}"

    eventually_sync(condition, timeout=30, interval=0.1, what=log_tail)


def holder_pid(client: redis.Redis) -> str | None:
    # redis-py types every command of its sync client as returning `Any | Awaitable[Any]`.
    value = cast(bytes | None, client.get(BeatLock.KEY))
    return None if value is None else value.decode().split(":")[1]


def test_a_second_beat_does_nothing_until_the_first_stops(
    servers: TestServers, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(servers.redis_url)
    client.delete(BeatLock.KEY)
    env = service_env(servers)  # a 3 s lease, renewed every second
    logs = tmp_path / "logs"

    def beat(name: str, ready: str) -> ServiceProcess:
        schedule = str(tmp_path / name)
        args = ["beat", "--schedule", schedule]
        return start_service(name, args, env=env, log_dir=logs, ready_marker=ready)

    first = beat("beat-1", BEAT_READY)
    second = None
    try:
        assert holder_pid(client) == str(first.process.pid)
        second = beat("beat-2", STANDING_BY)
        # It polls every second: four refusals span more than a whole lease, so the first's
        # lease was renewed meanwhile, and the second still runs nothing.
        wait_until(lambda: second.log().count(STANDING_BY) >= 4, second, "four refusals")
        assert BEAT_READY not in second.log()
        assert holder_pid(client) == str(first.process.pid)

        first.stop()  # SIGTERM: the first releases its lease on the way out
        wait_until(lambda: BEAT_READY in second.log(), second, "the second beat to start")
        assert holder_pid(client) == str(second.process.pid)
    finally:
        first.stop()
        if second is not None:
            second.stop()
            print(second.log()[-3000:])
        print(first.log()[-3000:])
