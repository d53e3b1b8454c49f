"""Console sign-in: an operator or admin API key is exchanged for a short-lived session.

The browser holds a random token in an HttpOnly cookie; the database holds its SHA-256, the key
it stands for, a CSRF token and an expiry. Every use re-checks the key, so revoking the key (or a
key without the operator role) ends its console sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.engine import Engine

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import Forbidden, Unauthenticated
from espalier.core.infrastructure.identity import ApiKey, Principal
from espalier.core.interface.console_sessions.tables import ConsoleSession
from espalier.core.interface.keys import KeyService

CONSOLE_ROLE = "operator"  # the least role that may use the console


@dataclass(frozen=True)
class SignedIn:
    token: str  # goes into the cookie, never stored
    csrf_token: str
    principal: Principal
    max_age: int  # seconds


@dataclass(frozen=True)
class ActiveSession:
    principal: Principal
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleSessionService:
    def __init__(self, engine: Engine, keys: KeyService, audit: AuditLog, *, lifetime: timedelta):
        self.engine = engine
        self.keys = keys
        self.audit = audit
        self.lifetime = lifetime

    def sign_in(self, raw_key: str | None) -> SignedIn:
        principal = self.keys.authenticate((raw_key or "").strip() or None)
        if not principal.has_role(CONSOLE_ROLE):
            raise Forbidden("the console is for operator and admin keys; this key has the 'user' role")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = utcnow()
        with session_scope(self.engine) as session:
            # sweep expired sessions here, so the table never grows without bound
            session.exec(delete(ConsoleSession).where(ConsoleSession.expires_at < now))  # type: ignore[call-overload]
            session.add(
                ConsoleSession(
                    token_hash=_digest(token), key_id=principal.key_id, csrf_token=csrf, expires_at=now + self.lifetime
                )
            )
        self.audit.record(principal, "console.sign_in", principal.key_id)
        return SignedIn(token, csrf, principal, int(self.lifetime.total_seconds()))

    def resolve(self, token: str | None) -> ActiveSession:
        """The session's key and CSRF token; ``Unauthenticated`` when absent, expired or revoked."""
        if not token or len(token) > 200:
            raise Unauthenticated("sign in to the console")
        with session_scope(self.engine) as session:
            record = session.get(ConsoleSession, _digest(token))
            if record is None or record.expires_at <= utcnow():
                raise Unauthenticated("your console session has expired: sign in again")
            key = session.get(ApiKey, record.key_id)
            if key is None or key.revoked_at is not None:
                raise Unauthenticated("the key behind this console session was revoked: sign in again")
            principal = Principal(key_id=key.id, name=key.name, role=key.role)
            return ActiveSession(principal, record.csrf_token)

    def sign_out(self, token: str | None, principal: Principal | None = None) -> None:
        """End a session (audited as ``console.sign_out`` for ``principal``)."""
        if principal is not None:
            self.audit.record(principal, "console.sign_out")
        if not token:
            return
        with session_scope(self.engine) as session:
            record = session.get(ConsoleSession, _digest(token))
            if record is not None:
                session.delete(record)


def same_token(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
