"""The console's cookie session, checked by the app's one auth guard for routes marked
``opt=console(role)``: no bearer keys here, only a signed-in browser, and a CSRF token on every
request that changes something (an ``X-CSRF-Token`` header, which HTMX sends, or a ``_csrf``
form field)."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException

from espalier.core.infrastructure.errors import Forbidden, Unauthenticated
from espalier.core.infrastructure.identity import ROLE_RANK, require_role
from espalier.core.interface.console_sessions.service import same_token

COOKIE = "espalier_console"
PRE_SESSION_COOKIE = "espalier_console_pre"  # double-submit token of the sign-in form itself
CSRF_FIELD = "_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SIGN_IN_PATH = "/console/sign-in"


def console(min_role: str = "operator") -> dict[str, Any]:
    """``opt`` of a console route: the least role, reached through a console session."""
    if ROLE_RANK.get(min_role, -1) < ROLE_RANK["operator"]:
        raise ValueError("console routes are for operators or admins")
    return {"min_role": min_role, "console": True}


class ConsoleSignInRequired(NotAuthorizedException):
    """No valid console session: pages redirect to the sign-in form, other calls get 401."""


async def authenticate_console(connection: ASGIConnection, minimum: str) -> None:
    platform = connection.app.state.platform
    try:
        active = await anyio.to_thread.run_sync(platform.console_sessions.resolve, connection.cookies.get(COOKIE))
    except Unauthenticated as exc:
        raise ConsoleSignInRequired(detail=exc.message) from None
    connection.scope["principal"] = active.principal  # type: ignore[typeddict-unknown-key]
    connection.scope["console_csrf"] = active.csrf_token  # type: ignore[typeddict-unknown-key]
    require_role(active.principal, minimum)
    if connection.scope["method"] not in SAFE_METHODS:
        await check_csrf(connection, active.csrf_token)


async def check_csrf(connection: ASGIConnection, expected: str) -> None:
    given = connection.headers.get(CSRF_HEADER)
    if given is None:
        # litestar keeps the parsed form in the connection state, so the handler reads it again for free
        form = await Request(connection.scope, connection.receive).form()
        given = form.get(CSRF_FIELD)
    if not same_token(expected, given if isinstance(given, str) else None):
        raise Forbidden(
            "the form's security token is missing or stale: reload the page and try again", code="csrf_failed"
        )
