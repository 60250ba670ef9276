"""A slow or greedy template stalls nothing but its own request: rendering runs off the event
loop, stops at its time limit with a 422, and never builds an oversized value."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from mailsvc.models import Tenant
from mailsvc.templates.engine import CompiledTemplate, Rendered
from mailsvc.templates.service import TemplateRenderer
from tests.support.auth import bearer

NESTED = {  # the finding: nested loops over long strings took 6-12 s in a preview
    "subject": "x",
    "text": "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}done",
}
SLOW = {  # within every other budget, each iteration costs milliseconds: the clock stops it
    "subject": "x",
    "text": "{% for i in range(90000) %}{{ s|title|length }}{% endfor %}",
}


async def _put(client: httpx.AsyncClient, tenant: Tenant, name: str, body: dict[str, str]) -> None:
    response = await client.put(f"/v1/templates/{name}", json=body, headers=bearer(tenant))
    assert response.status_code == 200, response.text


@pytest.fixture
def render_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread each render ran on (the renders themselves are untouched)."""
    seen: list[int] = []
    render = CompiledTemplate.render

    def recording(self: CompiledTemplate, *args: Any, **kwargs: Any) -> Rendered:
        seen.append(threading.get_ident())
        return render(self, *args, **kwargs)

    monkeypatch.setattr(CompiledTemplate, "render", recording)
    return seen


async def test_every_render_runs_off_the_event_loop(
    client: httpx.AsyncClient, tenant: Tenant, render_threads: list[int], connection: Any
) -> None:
    loop_thread = threading.get_ident()
    await _put(client, tenant, "hello", {"subject": "Hi {{ n }}", "text": "n={{ n }}"})
    for method, path, body in (
        ("POST", "/v1/templates/hello/preview", {"variables": {"n": 1}}),
        (
            "POST",
            "/v1/messages",
            {"to": ["a@example.net"], "template": "hello", "variables": {"n": 2}},
        ),
        (
            "POST",
            "/v1/messages/batch",
            {"messages": [{"to": ["a@example.net"], "template": "hello", "variables": {"n": 3}}]},
        ),
        (
            "POST",
            "/v1/events",
            {"type": "user.password_changed", "contact": {"email": "a@example.net"}},
        ),
    ):
        response = await client.request(method, path, json=body, headers=bearer(tenant))
        assert response.status_code in (200, 202), response.text
    results = await TemplateRenderer().render_many(
        connection, [(tenant.id, "hello", {"n": 4}), (tenant.id, "hello", {"n": 5})]
    )
    assert all(isinstance(result, Rendered) for result in results)
    assert len(render_threads) == 6
    assert loop_thread not in render_threads


async def test_a_slow_preview_stops_at_its_time_limit(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await _put(client, tenant, "slow", SLOW)
    response = await client.post(
        "/v1/templates/slow/preview",
        json={"variables": {"s": "y " * 100_000}},
        headers=bearer(tenant),
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "template"]
    assert "took longer than 1 s" in error["msg"]


async def test_a_greedy_preview_is_refused_before_it_builds_anything(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The finding: `'x'.ljust(500000000)` grew the API to 580 MiB."""
    await _put(client, tenant, "greedy", {"subject": "x", "text": "{{ 'x'.ljust(500000000) }}"})
    response = await client.post(
        "/v1/templates/greedy/preview", json={"variables": {}}, headers=bearer(tenant)
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "template"]
    assert "not allowed in a template" in error["msg"]


async def test_nested_loops_over_long_strings_stop_at_the_loop_budget(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await _put(client, tenant, "nested", NESTED)
    response = await client.post(
        "/v1/messages",
        json={"to": ["a@example.net"], "template": "nested", "variables": {"s": "y" * 10_000}},
        headers=bearer(tenant),
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "template"]
    assert "loops are limited to 100000 iterations in one render" in error["msg"]
