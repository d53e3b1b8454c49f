"""Request and response bodies of the admin API (never the table models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: str = "user"  # checked by the key service, whose error lists the roles


class KeyOut(msgspec.Struct):
    id: str
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = ""
    note: str = "Store this key now: it is shown only once."


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor_key_id: str | None
    actor_name: str | None
    action: str
    target: str | None
    details: dict[str, Any]


def key_out(record: Any) -> KeyOut:
    return KeyOut(
        id=record.id,
        name=record.name,
        role=record.role,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        revoked_at=record.revoked_at,
    )
