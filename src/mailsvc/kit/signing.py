"""MACs bound to a tenant and a purpose, with keys derived per (tenant, purpose) from one secret.

A token one tenant's key signed never verifies under another tenant's key, nor under the same
tenant's key for another purpose (a confirmation link is not an unsubscribe token). Keys are
derived with HKDF-SHA256 (RFC 5869): the secret is the input key material and
"mailsvc/<purpose>/v2" plus the tenant id is the info, so no key is ever a value the raw secret
signs elsewhere (the JWT secret may be the source). A previous secret, when given, still verifies
what it signed, so the secret can be rotated without breaking links already sent.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = "mailsvc/{purpose}/v2"


@lru_cache(maxsize=4096)
def derive_key(secret: bytes, tenant_id: uuid.UUID, purpose: str) -> bytes:
    """The 32-byte key of one tenant for one purpose. Cached: every link of a batch needs it."""
    info = _INFO.format(purpose=purpose).encode() + b"\x00" + tenant_id.bytes
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class Signer:
    """Signs with the current secret; verifies with it, or with the previous one while rotating."""

    current: bytes
    previous: bytes | None = None

    def __post_init__(self) -> None:
        if not self.current:
            raise ValueError("a signing secret must not be empty")

    def sign(self, tenant_id: uuid.UUID, purpose: str, message: bytes) -> bytes:
        key = derive_key(self.current, tenant_id, purpose)
        return hmac.new(key, message, hashlib.sha256).digest()

    def verify(self, tenant_id: uuid.UUID, purpose: str, message: bytes, mac: bytes) -> bool:
        """Whether `mac` is this tenant's MAC of `message` for `purpose`, under either secret."""
        secrets = (self.current,) if self.previous is None else (self.current, self.previous)
        matched = False
        for secret in secrets:  # both compared, so the timing does not tell which one matched
            key = derive_key(secret, tenant_id, purpose)
            expected = hmac.new(key, message, hashlib.sha256).digest()
            matched |= hmac.compare_digest(mac, expected)
        return matched
