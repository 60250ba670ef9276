"""Schemathesis against a real `mailsvc api`: generated requests, valid and invalid, over every
operation, with a token that holds every scope. None may answer 5xx, a status the spec does not
list, a body its schema does not allow, or a content type it does not declare.

`make test` runs a short pass: 13 generated cases an operation, a fixed seed, about 200
requests. `make fuzz` runs the long one: schemathesis's coverage phase (boundary values and
every documented constraint broken in turn) and 60 generated cases an operation, well over 1,000
requests (MAILSVC_FUZZ_EXAMPLES, MAILSVC_FUZZ_PHASES and MAILSVC_FUZZ_SEED set them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.tokens import issue_token
from mailsvc.db import Database
from mailsvc.models import Tenant
from tests.support.auth import SIGNING
from tests.support.servers import TestServers
from tests.support.stack import api_process

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("MAILSVC_FUZZ_EXAMPLES", "13"))
PHASES = os.environ.get("MAILSVC_FUZZ_PHASES", "fuzzing")
SEED = int(os.environ.get("MAILSVC_FUZZ_SEED", "20261130"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
)


def _requests_made(report: Path) -> int:
    """How many requests the run sent, from its NDJSON event stream."""
    count = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        scenario = event.get("ScenarioFinished")
        if scenario:
            count += len(scenario.get("recorder", {}).get("interactions", {}))
    return count


async def test_generated_requests_find_no_server_error_and_nothing_undocumented(
    servers: TestServers, live_tenant: Tenant, live_database: Database, tmp_path: Path
) -> None:
    token = issue_token(
        tenant_id=live_tenant.id, scopes=ALL_SCOPES, ttl=timedelta(hours=2), config=SIGNING
    )
    # Generated requests come fast: the tenant's API limit would answer most of them 429.
    limit = json.dumps({"per_second": 1_000_000, "burst": 1_000_000})
    with api_process(servers, tmp_path / "logs", MAILSVC_API_RATE_LIMIT=limit) as api:
        report = tmp_path / "events.ndjson"
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{api.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--workers",
                "1",
                "--phases",
                PHASES,
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "30",
                "--report",
                "ndjson",
                "--report-ndjson-path",
                str(report),
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
            cwd=tmp_path,  # its example database stays out of the checkout: each run stands alone
        )
        log = api.process.log()
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-3000:]}\n{log[-3000:]}"
    made = _requests_made(report)
    print(f"schemathesis: {made} requests ({PHASES}, {EXAMPLES} an operation, seed {SEED})")
    assert made >= 15 * EXAMPLES, summary
    assert "Traceback" not in log, log[-6000:]
