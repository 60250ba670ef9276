"""Every way a token can be wrong gets 401, with a problem body that says which."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mailsvc.config import Settings
from mailsvc.models import Tenant
from tests.support.api import REQUEST_ID
from tests.support.auth import JWT_SECRET, token


def claims(owner: Tenant, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "billing-service",
        "tenant": str(owner.id),
        "scope": "messages:read",
        "aud": "mailsvc",
        "iss": "mailsvc",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], key: str | None = None) -> str:
    return jwt.encode(payload, key or JWT_SECRET, algorithm="HS256")


async def call(client: httpx.AsyncClient, token_value: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token_value}"} if token_value is not None else {}
    return await client.get("/v1/messages", headers=headers)


def unauthorized(detail: str) -> dict[str, Any]:
    return {
        "type": "https://mailsvc.dev/problems/unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
        "request_id": REQUEST_ID,
    }


async def test_valid_token(client: httpx.AsyncClient, tenant: Tenant) -> None:
    assert (await call(client, hs256(claims(tenant)))).status_code == 200


async def test_missing_token(client: httpx.AsyncClient) -> None:
    response = await call(client, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="mailsvc"'
    assert response.json() == unauthorized("an Authorization: Bearer token is required")


async def test_expired_token(client: httpx.AsyncClient, tenant: Tenant) -> None:
    past = int(time.time()) - 3600
    response = await call(client, hs256(claims(tenant, iat=past - 60, exp=past)))
    assert response.status_code == 401
    assert response.json() == unauthorized("token has expired")


async def test_alg_none(client: httpx.AsyncClient, tenant: Tenant) -> None:
    unsigned = jwt.encode(claims(tenant), key="", algorithm="none")
    response = await call(client, unsigned)
    assert response.status_code == 401
    assert response.json() == unauthorized("token algorithm 'none' is not accepted")


async def test_wrong_audience(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, hs256(claims(tenant, aud="someone-else")))
    assert response.status_code == 401
    assert response.json() == unauthorized("token audience is not mailsvc")


async def test_wrong_issuer(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, hs256(claims(tenant, iss="evil")))
    assert response.status_code == 401
    assert response.json() == unauthorized("token issuer is not accepted")


async def test_wrong_key(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, hs256(claims(tenant), key="not-the-secret-" * 3))
    assert response.status_code == 401
    assert response.json() == unauthorized("token signature is invalid")


async def test_missing_claim(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, hs256(claims(tenant, tenant=None)))
    assert response.status_code == 401
    assert response.json() == unauthorized("token lacks the 'tenant' claim")


async def test_malformed(client: httpx.AsyncClient) -> None:
    response = await call(client, "not.a.jwt")
    assert response.status_code == 401
    assert response.json() == unauthorized("token is malformed")


async def test_unknown_tenant(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, hs256(claims(tenant, tenant=str(uuid.uuid4()))))
    assert response.status_code == 401
    assert response.json() == unauthorized("token tenant does not exist")


async def test_hs384_not_configured(client: httpx.AsyncClient, tenant: Tenant) -> None:
    forged = jwt.encode(claims(tenant), JWT_SECRET, algorithm="HS384")
    response = await call(client, forged)
    assert response.status_code == 401
    assert response.json() == unauthorized("token algorithm 'HS384' is not accepted")


async def test_admin_scope_implies_the_others(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await call(client, token(tenant, ["admin"]))
    assert response.status_code == 200


# -- RS256 through JWKS, and the HS/RS confusion attack --------------------------------------------


@pytest.fixture
def rsa_keys(test_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    # The app's settings (the `client` fixture's app holds this object).
    monkeypatch.setattr(test_settings, "jwt_algorithms", ["HS256", "RS256"])
    monkeypatch.setattr(test_settings, "jwt_public_keys", json.dumps({"keys": [jwk]}))
    return key


async def test_rs256_from_jwks(
    client: httpx.AsyncClient, tenant: Tenant, rsa_keys: rsa.RSAPrivateKey
) -> None:
    signed = jwt.encode(claims(tenant), rsa_keys, algorithm="RS256", headers={"kid": "k1"})
    assert (await call(client, signed)).status_code == 200


async def test_rs256_unknown_kid(
    client: httpx.AsyncClient, tenant: Tenant, rsa_keys: rsa.RSAPrivateKey
) -> None:
    signed = jwt.encode(claims(tenant), rsa_keys, algorithm="RS256", headers={"kid": "k9"})
    response = await call(client, signed)
    assert response.status_code == 401
    assert response.json() == unauthorized("token key id (kid) is unknown")


async def test_public_key_as_hmac_secret_is_refused(
    client: httpx.AsyncClient, tenant: Tenant, rsa_keys: rsa.RSAPrivateKey
) -> None:
    """The HS/RS confusion attack: HS256 signed with the server's public key."""
    public_pem = rsa_keys.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    signing_input = b".".join(
        jwt.utils.base64url_encode(json.dumps(part).encode()) for part in (header, claims(tenant))
    )
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    response = await call(client, forged)
    assert response.status_code == 401
    assert response.json() == unauthorized("token signature is invalid")
