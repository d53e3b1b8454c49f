"""Who may call what. Every route handler declares it in ``opt``; one app-level guard enforces it.

``opt=access("operator")`` admits operators and admins; ``opt=PUBLIC`` admits anyone. A handler
that declares neither makes the app refuse to start (see :func:`check_route_access`).
"""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Litestar, Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from espalier.api.console.session import authenticate_console
from espalier.core.infrastructure.identity import ROLE_RANK, Principal, require_role

PUBLIC: dict[str, Any] = {"public": True}
PUBLIC_PATH_PREFIXES = ("/schema",)  # litestar's OpenAPI documents


def access(min_role: str) -> dict[str, Any]:
    if min_role not in ROLE_RANK:
        raise ValueError(f"unknown role {min_role!r}")
    return {"min_role": min_role}


def bearer_token(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _is_public(handler: BaseRouteHandler, path: str) -> bool:
    if handler.opt.get("public") or path.startswith(PUBLIC_PATH_PREFIXES):
        return True
    # litestar's automatic OPTIONS answer (an Allow header, no data)
    return getattr(handler, "http_methods", None) == {"OPTIONS"} and handler.handler_name == "options_handler"


async def auth_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if _is_public(handler, connection.scope["path"]):
        return
    minimum = handler.opt.get("min_role")
    if handler.opt.get("console"):
        # the console signs in with a cookie session, never a bearer key
        await authenticate_console(connection, minimum)
        return
    platform = connection.app.state.platform
    principal: Principal = await anyio.to_thread.run_sync(platform.keys.authenticate, bearer_token(connection))
    connection.scope["principal"] = principal  # read by the request logger and `provide_principal`
    require_role(principal, minimum)


def provide_principal(request: Request) -> Principal:
    return request.scope["principal"]


#: Declare ``principal: CurrentPrincipal`` in a handler to receive the calling key.
CurrentPrincipal = NamedDependency[Principal]


def check_route_access(app: Litestar) -> None:
    """Refuse to start when a route does not say who may call it."""
    undeclared = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if _is_public(handler, route.path):
                continue
            minimum = handler.opt.get("min_role")
            if minimum not in ROLE_RANK:
                undeclared.append(f"{route.path} ({handler.handler_name})")
    if undeclared:
        raise RuntimeError(
            "these routes declare no access rule (opt=access(role) or opt=PUBLIC): " + ", ".join(undeclared)
        )
