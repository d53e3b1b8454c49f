"""Who is calling: a key's identity and role, and the key records it is read from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow
from espalier.core.infrastructure.errors import Forbidden, InvalidInput


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(index=True, max_length=200)
    role: str = Field(max_length=20)
    secret_hash: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str | None = Field(default=None, max_length=40)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


ROLES = ("user", "operator", "admin")


ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and role. Never holds the secret."""

    key_id: str
    name: str
    role: str

    def has_role(self, minimum: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[minimum]


def validate_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise InvalidInput(f"unknown role '{role}': use one of {', '.join(ROLES)}")
    return role


def require_role(principal: Principal, minimum: str) -> None:
    if not principal.has_role(minimum):
        raise Forbidden(f"this needs the '{minimum}' role; key '{principal.name}' has '{principal.role}'")
