"""PUT/GET/DELETE /v1/contacts: what is stored, what is refused and exactly how."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from mailsvc.auth import scopes
from mailsvc.kit.time import utcnow
from mailsvc.models import Tenant
from tests.support.api import invalid, problem
from tests.support.auth import TenantFactory, bearer

ADA = {
    "name": "Ada Lovelace",
    "birthday": "1990-12-10",
    "timezone": "Europe/London",
    "signed_up_at": "2026-01-05T09:30:00Z",
    "attributes": {"plan": "pro", "seats": 3, "tags": ["beta"]},
}


async def put(
    client: httpx.AsyncClient, tenant: Tenant, email: str, body: Any, **kwargs: Any
) -> httpx.Response:
    return await client.put(f"/v1/contacts/{email}", json=body, headers=bearer(tenant), **kwargs)


async def get(client: httpx.AsyncClient, tenant: Tenant, email: str) -> httpx.Response:
    return await client.get(f"/v1/contacts/{email}", headers=bearer(tenant))


# -- upsert ---------------------------------------------------------------------------------------


async def test_create_then_update_keeps_omitted_fields(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    created = await put(client, tenant, "ada@example.net", ADA)
    assert created.status_code == 201
    assert created.headers["content-type"] == "application/json"
    body = created.json()
    stamp = body["created_at"]
    datetime.fromisoformat(stamp)
    assert body == {
        "email": "ada@example.net",
        "name": "Ada Lovelace",
        "birthday": "1990-12-10",
        "timezone": "Europe/London",
        "signed_up_at": "2026-01-05T09:30:00Z",
        "activated_at": None,
        "attributes": {"plan": "pro", "seats": 3, "tags": ["beta"]},
        "created_at": stamp,
        "updated_at": stamp,
    }

    updated = await put(
        client,
        tenant,
        "ada@example.net",
        {"name": "Ada King", "activated_at": "2026-01-06T10:00:00Z"},
    )
    assert updated.status_code == 200
    assert updated.json() == {
        **body,
        "name": "Ada King",
        "activated_at": "2026-01-06T10:00:00Z",
        # The tests share one transaction, whose now() does not move.
        "updated_at": stamp,
    }
    assert (await get(client, tenant, "ada@example.net")).json() == updated.json()


async def test_create_with_an_empty_body_takes_the_defaults(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(client, tenant, "bob@example.net", {})
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "email": "bob@example.net",
        "name": None,
        "birthday": None,
        "timezone": "UTC",
        "signed_up_at": None,
        "activated_at": None,
        "attributes": {},
        "created_at": body["created_at"],
        "updated_at": body["created_at"],
    }


async def test_null_clears_a_field_and_attributes_are_replaced(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await put(client, tenant, "ada@example.net", ADA)
    response = await put(
        client, tenant, "ada@example.net", {"birthday": None, "attributes": {"plan": "free"}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["birthday"] is None
    assert body["attributes"] == {"plan": "free"}
    assert body["name"] == "Ada Lovelace"
    assert body["timezone"] == "Europe/London"


async def test_an_offset_is_kept_as_the_same_instant_in_utc(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """+14:00 (Kiritimati) and a date on which Europe changes its clocks: one instant, in UTC."""
    response = await put(
        client,
        tenant,
        "ada@example.net",
        {"timezone": "Pacific/Kiritimati", "signed_up_at": "2026-03-29T01:30:00+14:00"},
    )
    assert response.status_code == 201
    assert response.json()["signed_up_at"] == "2026-03-28T11:30:00Z"
    assert (await get(client, tenant, "ada@example.net")).json()["signed_up_at"] == (
        "2026-03-28T11:30:00Z"
    )


async def test_idn_domain_is_stored_as_punycode_and_the_address_lower_cased(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(client, tenant, "Ada@Bücher.Example", {"name": "Ada"})
    assert response.status_code == 201
    assert response.json()["email"] == "ada@xn--bcher-kva.example"
    again = await put(client, tenant, "ADA@xn--bcher-kva.example", {"timezone": "Asia/Tokyo"})
    assert again.status_code == 200
    assert again.json()["name"] == "Ada"
    found = await get(client, tenant, "ada@bücher.example")
    assert found.status_code == 200
    assert found.json()["timezone"] == "Asia/Tokyo"


async def test_an_address_with_a_slash_routes_to_the_contact(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(client, tenant, "sales/emea@example.net", {})
    assert response.status_code == 201
    assert response.json()["email"] == "sales/emea@example.net"
    assert (await get(client, tenant, "sales/emea@example.net")).status_code == 200


# -- 422 ------------------------------------------------------------------------------------------


async def test_unknown_time_zone(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"timezone": "Mars/Olympus"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == invalid(
        ["body", "timezone"],
        "'Mars/Olympus' is not an IANA time zone name, such as 'Europe/Paris' or 'UTC'",
    )


async def test_host_local_time_is_not_a_zone(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"timezone": "localtime"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "timezone"]


async def test_birthday_tomorrow(client: httpx.AsyncClient, tenant: Tenant) -> None:
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    response = await put(client, tenant, "ada@example.net", {"birthday": tomorrow})
    assert response.status_code == 422
    assert response.json() == invalid(["body", "birthday"], "birthday is in the future")
    assert (await get(client, tenant, "ada@example.net")).status_code == 404


async def test_birthday_before_1900(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"birthday": "1899-12-31"})
    assert response.status_code == 422
    assert response.json() == invalid(["body", "birthday"], "birthday is before 1900-01-01")


async def test_naive_datetime(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"signed_up_at": "2026-01-05T09:30:00"})
    assert response.status_code == 422
    assert response.json() == invalid(["body", "signed_up_at"], "Input should have timezone info")


async def test_activated_in_the_future(client: httpx.AsyncClient, tenant: Tenant) -> None:
    later = (utcnow() + timedelta(hours=1)).isoformat()
    response = await put(client, tenant, "ada@example.net", {"activated_at": later})
    assert response.status_code == 422
    assert response.json() == invalid(["body", "activated_at"], "activated_at is in the future")


async def test_invalid_path_email(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@@example.net", {})
    assert response.status_code == 422
    assert response.json() == invalid(
        ["path", "email"],
        "'ada@@example.net' is not a valid email address: "
        "The part after the @-sign contains invalid characters: '@'.",
    )
    assert (await get(client, tenant, "not-an-address")).json()["errors"][0]["loc"] == [
        "path",
        "email",
    ]


async def test_attributes_too_large(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"attributes": {"bio": "x" * 16384}})
    assert response.status_code == 422
    assert response.json() == invalid(
        ["body", "attributes"], "attributes are 16394 bytes as JSON; at most 16384 are allowed"
    )


async def test_too_many_attributes(client: httpx.AsyncClient, tenant: Tenant) -> None:
    attributes = {f"k{i}": i for i in range(51)}
    response = await put(client, tenant, "ada@example.net", {"attributes": attributes})
    assert response.status_code == 422
    assert response.json() == invalid(
        ["body", "attributes"], "at most 50 attributes are allowed; got 51"
    )


async def test_nul_in_attributes(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"attributes": {"a": ["x\u0000"]}})
    assert response.status_code == 422
    assert response.json() == invalid(
        ["body", "attributes", "a", 0], "must not contain NUL characters"
    )


async def test_crlf_in_name(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"name": "Ada\r\nBcc: x@y.z"})
    assert response.status_code == 422
    assert response.json() == invalid(
        ["body", "name"], "must not contain line breaks or control characters (found U+000D)"
    )


async def test_unknown_field(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "ada@example.net", {"email": "eve@example.net"})
    assert response.status_code == 422
    assert response.json() == invalid(["body", "email"], "Extra inputs are not permitted")


# -- 403 / 404 ------------------------------------------------------------------------------------


async def test_missing_scope(client: httpx.AsyncClient, tenant: Tenant) -> None:
    read_only = bearer(tenant, [scopes.CONTACTS_READ])
    response = await client.put("/v1/contacts/ada@example.net", json={}, headers=read_only)
    assert response.status_code == 403
    assert response.json() == problem(
        403, "Forbidden", "this token lacks the 'contacts:write' scope", "forbidden"
    )
    write_only = bearer(tenant, [scopes.CONTACTS_WRITE])
    response = await client.get("/v1/contacts", headers=write_only)
    assert response.status_code == 403
    assert response.json() == problem(
        403, "Forbidden", "this token lacks the 'contacts:read' scope", "forbidden"
    )
    messages_only = bearer(tenant, [scopes.MESSAGES_SEND, scopes.MESSAGES_READ])
    response = await client.delete("/v1/contacts/ada@example.net", headers=messages_only)
    assert response.status_code == 403


async def test_delete_then_not_found(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await put(client, tenant, "ada@example.net", ADA)
    deleted = await client.delete("/v1/contacts/Ada@Example.net", headers=bearer(tenant))
    assert deleted.status_code == 204
    assert deleted.content == b""
    response = await get(client, tenant, "ada@example.net")
    assert response.status_code == 404
    assert response.json() == problem(
        404, "Not Found", "contact ada@example.net does not exist", "not-found"
    )
    again = await client.delete("/v1/contacts/ada@example.net", headers=bearer(tenant))
    assert again.status_code == 404


async def test_other_tenants_contact_is_not_found(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    other = await make_tenant()
    await put(client, other, "ada@example.net", ADA)
    assert (await get(client, tenant, "ada@example.net")).status_code == 404
    listed = await client.get("/v1/contacts", headers=bearer(tenant))
    assert listed.json() == {"data": [], "next_cursor": None}
    deleted = await client.delete("/v1/contacts/ada@example.net", headers=bearer(tenant))
    assert deleted.status_code == 404
    # The same address is a separate contact in each tenant.
    mine = await put(client, tenant, "ada@example.net", {"name": "Mine"})
    assert mine.status_code == 201
    assert (await get(client, other, "ada@example.net")).json()["name"] == "Ada Lovelace"


# -- list -----------------------------------------------------------------------------------------


async def test_list_pages_newest_first(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    emails = [f"user{i}@example.net" for i in range(5)]
    for email in emails:
        assert (await put(client, tenant, email, {})).status_code == 201
    await put(client, await make_tenant(), "stranger@example.net", {})
    # An update does not move a contact in the list.
    assert (await put(client, tenant, emails[0], {"name": "First"})).status_code == 200
    headers = bearer(tenant, [scopes.CONTACTS_READ])

    first = (await client.get("/v1/contacts?limit=2", headers=headers)).json()
    assert [c["email"] for c in first["data"]] == emails[::-1][:2]
    second = (
        await client.get(f"/v1/contacts?limit=2&cursor={first['next_cursor']}", headers=headers)
    ).json()
    assert [c["email"] for c in second["data"]] == emails[::-1][2:4]
    third = (
        await client.get(f"/v1/contacts?limit=2&cursor={second['next_cursor']}", headers=headers)
    ).json()
    assert [c["email"] for c in third["data"]] == emails[:1]
    assert third["data"][0]["name"] == "First"
    assert third["next_cursor"] is None


async def test_list_rejects_a_forged_cursor(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/contacts?cursor=%%%", headers=bearer(tenant))
    assert response.status_code == 422
    assert response.json() == problem(
        422,
        "Unprocessable Content",
        "cursor is not one this API issued",
        "validation",
        errors=[{"loc": ["query", "cursor"], "msg": "cursor is not one this API issued"}],
    )
