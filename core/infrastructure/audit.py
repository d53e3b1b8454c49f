"""The audit log: who did what to which thing, written by the services that do it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel, select

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import Principal


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    actor_key_id: str | None = Field(default=None, max_length=40, index=True)
    actor_name: str | None = Field(default=None, max_length=200)
    action: str = Field(max_length=100, index=True)
    target: str | None = Field(default=None, max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


def _audit(actor: Principal | None, action: str, target: str | None, details: dict) -> AuditEvent:
    return AuditEvent(
        actor_key_id=actor.key_id if actor else None,
        actor_name=actor.name if actor else "cli",
        action=action,
        target=target,
        details=details,
    )


class AuditLog:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(
        self,
        actor: Principal | None,
        action: str,
        target: str | None = None,
        *,
        via: str | None = None,
        **details: object,
    ) -> None:
        """``via`` names the entry point (``console``, ``cli``) when it is not the API; kept only when given."""
        with session_scope(self.engine) as session:
            session.add(_audit(actor, action, target, {**details, **({"via": via} if via else {})}))

    def list(self, *, limit: int = 100, action: str | None = None, before_id: int | None = None) -> list[AuditEvent]:
        with session_scope(self.engine) as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if action:
                query = query.where(AuditEvent.action == action)
            if before_id:
                query = query.where(AuditEvent.id < before_id)
            return list(session.exec(query))
