"""API keys and roles.

A key reads ``esp_<id>_<secret>``. The id is public (it names the key in logs, the audit log and
rate limits); the secret is stored only as an argon2 hash and shown once, at creation.

Verification costs what argon2 costs (hundreds of milliseconds on a small CPU), so:

* a verified key is remembered for ``VERIFIED_TTL`` by an HMAC of the whole key under a secret
  made at start (never the key itself, and nothing a memory dump could test guesses against
  offline without that secret), at most ``VERIFIED_MAX`` of them; revocation is still checked
  against the database on every request, and forgets the key at once in this process;
* at most ``MAX_CONCURRENT_VERIFICATIONS`` argon2 checks run at a time; one that cannot start
  within ``VERIFY_WAIT_S`` answers 503 with Retry-After, so a flood of forged keys queues behind
  that bound instead of taking every thread (the API also refuses an address with too many
  failed authentications before any check: see ``api/guards.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog, _audit
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import read_connection, session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound, Unauthenticated, Unavailable
from espalier.core.infrastructure.identity import ROLES, ApiKey, Principal, require_role, validate_role

KEY_PREFIX = "esp"
LAST_USED_RESOLUTION = timedelta(minutes=1)
VERIFIED_TTL = 300.0  # seconds a verified key skips argon2
VERIFIED_MAX = 10_000
MAX_CONCURRENT_VERIFICATIONS = 2
VERIFY_WAIT_S = 5.0

_hasher = PasswordHasher()


class VerificationSkipped(Unauthenticated):
    """``authenticate(..., verify=False)`` met a key it would have had to verify."""


@dataclass(frozen=True)
class CreatedKey:
    key: str
    record: ApiKey


def parse_key_id(raw: str) -> str | None:
    """The public id part of a key, or None when the string is not shaped like a key."""
    parts = raw.split("_")
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


class KeyService:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._cache_secret = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # hmac(key) -> (key id, expiry)
        self._lock = threading.Lock()
        self._verifying = threading.BoundedSemaphore(MAX_CONCURRENT_VERIFICATIONS)

    # Management -------------------------------------------------------------------------
    def create(self, *, name: str, role: str, created_by: Principal | None = None) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("a key needs a name of 1-200 characters")
        validate_role(role)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")
        record = ApiKey(
            id=key_id,
            name=name,
            role=role,
            secret_hash=_hasher.hash(secret),
            created_by=created_by.key_id if created_by else None,
        )
        with session_scope(self.engine) as session:
            session.add(record)
            session.add(_audit(created_by, "key.create", key_id, {"name": name, "role": role}))
        return CreatedKey(key=f"{KEY_PREFIX}_{key_id}_{secret}", record=record)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        with session_scope(self.engine) as session:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if not include_revoked:
                query = query.where(ApiKey.revoked_at.is_(None))
            return list(session.exec(query))

    def count_active(self) -> int:
        return len(self.list(include_revoked=False))

    def revoke(self, key_id: str, *, by: Principal | None = None) -> ApiKey:
        with session_scope(self.engine) as session:
            record = session.get(ApiKey, key_id)
            if record is None:
                raise NotFound(f"no API key with id '{key_id}'")
            if record.revoked_at is None:
                record.revoked_at = utcnow()
                session.add(record)
                session.add(_audit(by, "key.revoke", key_id, {"name": record.name}))
        with self._lock:
            for digest, (cached, _expiry) in list(self._verified.items()):
                if cached == key_id:
                    del self._verified[digest]
        return record

    # Authentication ---------------------------------------------------------------------
    def authenticate(self, raw: str | None, *, verify: bool = True) -> Principal:
        """The key's principal. ``verify=False`` admits only a key verified recently (no argon2):
        what the API allows an address that failed authentication too often."""
        if not raw:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        key_id = parse_key_id(raw)
        if key_id is None:
            raise Unauthenticated("invalid API key")
        digest = hmac.new(self._cache_secret, raw.encode(), hashlib.sha256).digest()
        # Read on every request, so revocation counts from the next one, in every process.
        with read_connection(self.engine) as connection:
            record = connection.execute(_KEY_ROW, {"key_id": key_id}).first()
        if record is None or record.revoked_at is not None:
            raise Unauthenticated("invalid or revoked API key")
        if not self._recently_verified(digest, key_id):
            if not verify:
                raise VerificationSkipped("this key was not verified recently and may not be verified now")
            self._verify(record.secret_hash, raw.split("_", 2)[2])
            with self._lock:
                self._verified[digest] = (key_id, time.monotonic() + VERIFIED_TTL)
                self._verified.move_to_end(digest)
                while len(self._verified) > VERIFIED_MAX:
                    self._verified.popitem(last=False)
        now = utcnow()
        if record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION:
            with self.engine.begin() as connection:
                connection.execute(_TOUCH_KEY, {"key_id": key_id, "now": now})
        return Principal(key_id=record.id, name=record.name, role=record.role)

    def _recently_verified(self, digest: bytes, key_id: str) -> bool:
        with self._lock:
            cached = self._verified.get(digest)
            if cached is None:
                return False
            if cached[0] != key_id or cached[1] < time.monotonic():
                del self._verified[digest]
                return False
            return True

    def _verify(self, secret_hash: str, secret: str) -> None:
        if not self._verifying.acquire(timeout=VERIFY_WAIT_S):
            raise Unavailable(
                "too many API keys are being verified at once; retry in a moment",
                code="authentication_busy",
                retry_after=1,
            )
        try:
            _hasher.verify(secret_hash, secret)
        except (VerificationError, InvalidHashError):
            raise Unauthenticated("invalid or revoked API key") from None
        finally:
            self._verifying.release()


_KEY_ROW = select(
    ApiKey.id,
    ApiKey.name,
    ApiKey.role,
    ApiKey.secret_hash,
    ApiKey.last_used_at,  # type: ignore[call-overload]
    ApiKey.revoked_at,
).where(ApiKey.id == bindparam("key_id"))
_TOUCH_KEY = update(ApiKey).where(ApiKey.id == bindparam("key_id")).values(last_used_at=bindparam("now"))  # type: ignore[arg-type]


__all__ = [
    "ROLES",
    "AuditLog",
    "CreatedKey",
    "KeyService",
    "Principal",
    "VerificationSkipped",
    "require_role",
    "validate_role",
]
