"""The committed openapi.yaml is the app's, and every route is documented for client generators."""

from __future__ import annotations

from pathlib import Path

import yaml

from mailsvc.openapi import render_openapi

ROOT = Path(__file__).resolve().parents[1]


def test_committed_spec_is_current() -> None:
    assert (ROOT / "openapi.yaml").read_text() == render_openapi(), "run `make openapi`"


def test_every_operation_has_an_id_a_summary_and_its_errors() -> None:
    spec = yaml.safe_load(render_openapi())
    operation_ids = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["summary"], f"{method} {path}"
            if path.startswith("/v1/"):
                for status in ("401", "403", "422"):
                    response = operation["responses"][status]
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path)
    assert len(operation_ids) == len(set(operation_ids))
    assert spec["paths"]["/v1/messages/{message_id}"]["get"]["responses"]["404"]
    assert spec["paths"]["/v1/messages"]["post"]["responses"]["413"]


def test_every_operation_lists_what_it_can_answer() -> None:
    """Generated clients and schemathesis read these: 400/413/415 where a body is read (never on
    a GET), 429 and 503 with Retry-After everywhere a tenant calls, and 503 on /readyz."""
    spec = yaml.safe_load(render_openapi())
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            if not path.startswith("/v1/"):
                continue
            assert {"401", "403", "422", "429", "503"} <= statuses, (method, path)
            has_body = "requestBody" in operation
            assert ({"400", "413", "415"} <= statuses) == has_body, (method, path)
            assert not ({"400", "413", "415"} & statuses) or has_body, (method, path)
            for status in ("429", "503"):
                headers = operation["responses"][status]["headers"]
                assert headers["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
            assert set(operation["responses"]["429"]["headers"]) == {
                "Retry-After",
                "RateLimit-Policy",
                "RateLimit",
            }
    replay = spec["paths"]["/v1/messages"]["post"]["responses"]["200"]
    assert replay["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Message"
    }
    ready = spec["paths"]["/readyz"]["get"]["responses"]
    for status in ("200", "503"):
        assert ready[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Readiness"
        }
