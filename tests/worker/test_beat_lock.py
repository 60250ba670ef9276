"""Exactly one beat: a second `mailsvc beat` stands by while the first holds the lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from mailsvc.worker.beat import BeatLock
from tests.conftest import service_env
from tests.support.processes import BEAT_READY, ServiceProcess, start_service
from tests.support.servers import TestServers

pytestmark = pytest.mark.e2e

STANDING_BY = "another beat holds the lock"


def wait_until(condition: Callable[[], bool], process: ServiceProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, process.log()[-3000:]
        time.sleep(0.1)


def holder_pid(client: redis.Redis) -> str | None:
    value = client.get(BeatLock.KEY)
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
        wait_until(lambda: second.log().count(STANDING_BY) >= 4, second)
        assert BEAT_READY not in second.log()
        assert holder_pid(client) == str(first.process.pid)

        first.stop()  # SIGTERM: the first releases its lease on the way out
        wait_until(lambda: BEAT_READY in second.log(), second)
        assert holder_pid(client) == str(second.process.pid)
    finally:
        first.stop()
        if second is not None:
            second.stop()
            print(second.log()[-3000:])
        print(first.log()[-3000:])
