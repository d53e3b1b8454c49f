"""API keys and roles.

A key reads ``esp_<id>_<secret>``. The id is public (it names the key in logs, the audit log and
rate limits); the secret is stored only as an argon2 hash and shown once, at creation. A verified
key is remembered in-process by the SHA-256 of the whole key so argon2 runs once per key, not once
per request; revocation is still checked against the database on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
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
from espalier.core.infrastructure.errors import InvalidInput, NotFound, Unauthenticated
from espalier.core.infrastructure.identity import ROLES, ApiKey, Principal, require_role, validate_role

KEY_PREFIX = "esp"
LAST_USED_RESOLUTION = timedelta(minutes=1)

_hasher = PasswordHasher()


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
        self._verified: dict[str, str] = {}  # sha256(key) -> key id
        self._lock = threading.Lock()

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
            for digest, cached in list(self._verified.items()):
                if cached == key_id:
                    del self._verified[digest]
        return record

    # Authentication ---------------------------------------------------------------------
    def authenticate(self, raw: str | None) -> Principal:
        if not raw:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        key_id = parse_key_id(raw)
        if key_id is None:
            raise Unauthenticated("invalid API key")
        digest = hashlib.sha256(raw.encode()).hexdigest()
        # Read on every request, so revocation counts from the next one, in every process.
        with read_connection(self.engine) as connection:
            record = connection.execute(_KEY_ROW, {"key_id": key_id}).first()
        if record is None or record.revoked_at is not None:
            raise Unauthenticated("invalid or revoked API key")
        if self._verified.get(digest) != key_id:
            try:
                _hasher.verify(record.secret_hash, raw.split("_", 2)[2])
            except (VerificationError, InvalidHashError):
                raise Unauthenticated("invalid or revoked API key") from None
            with self._lock:
                self._verified[digest] = key_id
        now = utcnow()
        if record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION:
            with self.engine.begin() as connection:
                connection.execute(_TOUCH_KEY, {"key_id": key_id, "now": now})
        return Principal(key_id=record.id, name=record.name, role=record.role)


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
    "require_role",
    "validate_role",
]
