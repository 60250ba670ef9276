"""Chaos, CI-sized: workers killed with -9, Redis restarted without its data, the primary
provider failing, all while messages are sent. Nothing accepted is lost; nothing is left
unfinished; a duplicate can only come from a message in flight at a kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosPlan, run_chaos
from tests.support.servers import TestServers

pytestmark = pytest.mark.e2e


def test_nothing_is_lost_under_kills_redis_restarts_and_a_provider_outage(
    servers: TestServers, tmp_path: Path
) -> None:
    plan = ChaosPlan(
        messages=600,
        concurrency=16,
        kill_every=3.0,
        redis_restarts_at=(2.0, 5.0),
        primary_outage_at=1.0,
        primary_outage_seconds=5.0,
        settle_seconds=60.0,
        lease_seconds=6,
    )
    report = run_chaos(plan, tmp_path, database_url=servers.database_url)
    print(report.rows())  # shown when the test fails
    assert report.accepted == plan.messages
    assert report.kills >= 2
    assert report.redis_restarts == 2
    assert report.primary_failed_requests > 0
    assert report.lost == []
    assert report.not_terminal == 0
    assert report.failed == 0
    assert len(report.duplicates) <= report.in_flight_at_kills
    assert report.delivered_once + len(report.duplicates) == report.accepted
