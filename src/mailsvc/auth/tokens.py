"""JWTs through PyJWT: issue HS256 tokens, and verify only the algorithms that are configured.

The key is chosen by the token's `alg` header *after* that alg is checked against the configured
list, and each family has its own key source (the HMAC secret, or the JWKS public keys), so a
token cannot trick the server into using a public key as an HMAC secret.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet

from mailsvc.config import Settings
from mailsvc.errors import Unauthorized
from mailsvc.kit.time import utcnow

_REQUIRED_CLAIMS = ["sub", "tenant", "scope", "aud", "iss", "exp", "iat"]
_HMAC = {"HS256", "HS384", "HS512"}
_ASYMMETRIC = {"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}


@dataclass(frozen=True)
class Claims:
    subject: str
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    token_id: str | None


def issue_token(
    *,
    tenant_id: uuid.UUID,
    scopes: Iterable[str],
    ttl: timedelta,
    subject: str = "cli",
    config: Settings,
) -> str:
    if config.jwt_secret is None:
        raise RuntimeError("MAILSVC_JWT_SECRET is not set: cannot sign a token")
    now = utcnow()
    claims = {
        "sub": subject,
        "tenant": str(tenant_id),
        "scope": " ".join(sorted(set(scopes))),
        "aud": config.jwt_audience,
        "iss": config.jwt_issuer,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.jwt_secret.get_secret_value(), algorithm="HS256")


@lru_cache(maxsize=4)
def _jwks(document: str) -> dict[str, PyJWK]:
    keys = PyJWKSet.from_json(document).keys
    return {key.key_id: key for key in keys if key.key_id}


def _key_for(header: dict[str, Any], config: Settings) -> Any:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in config.jwt_algorithms:
        raise Unauthorized(f"token algorithm {alg!r} is not accepted")
    if alg in _HMAC:
        if config.jwt_secret is None:
            raise Unauthorized(f"token algorithm {alg!r} is not accepted")
        return config.jwt_secret.get_secret_value()
    if alg in _ASYMMETRIC and config.jwt_public_keys:
        jwk = _jwks(config.jwt_public_keys).get(str(header.get("kid")))
        if jwk is None:
            raise Unauthorized("token key id (kid) is unknown")
        return jwk.key
    raise Unauthorized(f"token algorithm {alg!r} is not accepted")


# Callers send the same token with every request. A token that verified is remembered until it
# expires, keyed by the token itself (signature included) and by the verifying configuration.
_VERIFIED_MAX = 4096
_verified: dict[tuple[str, int], tuple[float, Claims]] = {}


def _fingerprint(config: Settings) -> int:
    return hash(
        (
            config.jwt_secret.get_secret_value() if config.jwt_secret else None,
            tuple(config.jwt_algorithms),
            config.jwt_public_keys,
            config.jwt_audience,
            config.jwt_issuer,
        )
    )


def verify_token(token: str, config: Settings) -> Claims:
    key = (token, _fingerprint(config))
    hit = _verified.get(key)
    if hit is not None and hit[0] + config.jwt_leeway_seconds > time.time():
        return hit[1]
    expires, claims = _verify(token, config)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[key] = (expires, claims)
    return claims


def _verify(token: str, config: Settings) -> tuple[float, Claims]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("token is malformed") from exc
    key = _key_for(header, config)
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[header["alg"]],
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway_seconds,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token has expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise Unauthorized("token audience is not mailsvc") from exc
    except jwt.InvalidIssuerError as exc:
        raise Unauthorized("token issuer is not accepted") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("token signature is invalid") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"token is invalid: {exc}") from exc
    try:
        tenant_id = uuid.UUID(str(payload["tenant"]))
    except ValueError as exc:
        raise Unauthorized("token tenant claim is not a tenant id") from exc
    scope = payload["scope"]
    if not isinstance(scope, str):
        raise Unauthorized("token scope claim must be a space-separated string")
    return float(payload["exp"]), Claims(
        subject=str(payload["sub"]),
        tenant_id=tenant_id,
        scopes=frozenset(scope.split()),
        token_id=payload.get("jti"),
    )
