"""Who may call what, and how often. Every route handler declares its access rule in ``opt``; one
app-level guard enforces it, and the rate limits with it.

``opt=access("operator")`` admits operators and admins; ``opt=PUBLIC`` admits anyone. A handler
that declares neither makes the app refuse to start (see :func:`check_route_access`).

Rate limits count after the key is checked, never before: a verified key spends its own budget
(``ESPALIER_RATE_LIMIT_PER_MINUTE``), public routes count per client address, and a request that
fails authentication counts against its client address only (``ESPALIER_AUTH_FAILURES_PER_MINUTE``),
never against the key it names, since key ids are not secret. An address past its failures is
refused before any key is checked, so forged keys cannot lock a real key out nor make the server
run argon2 for each of them.
"""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Litestar, Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler

from espalier.api.console.session import authenticate_console
from espalier.core.infrastructure.errors import RateLimited, Unauthenticated
from espalier.core.infrastructure.identity import ROLE_RANK, Principal, require_role
from espalier.core.interface.keys import VerificationSkipped

PUBLIC: dict[str, Any] = {"public": True}
PUBLIC_PATH_PREFIXES = ("/schema",)  # litestar's OpenAPI documents
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})  # probes are never rate limited


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


JSON_MEDIA = ("application/json",)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def accepts(*media: str, untyped: bool = False) -> dict[str, Any]:
    """``opt`` for a handler whose body is not JSON: the media types it reads (and, with
    ``untyped``, a body sent without a Content-Type). Every other handler takes JSON only."""
    return {"body_media": tuple(media), "body_untyped": untyped}


def check_body_media(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """415 for a body whose Content-Type the handler does not read: a JSON route answers only a
    body declared JSON (``application/json`` or ``application/*+json``), never text, a form or XML."""
    if connection.scope["method"] not in BODY_METHODS or handler.opt.get("console"):
        return  # console forms are checked by their own CSRF rule
    headers = connection.headers
    if headers.get("content-length", "0").strip() in ("", "0") and "transfer-encoding" not in headers:
        return
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    allowed = handler.opt.get("body_media", JSON_MEDIA)
    if not media and handler.opt.get("body_untyped"):
        return
    if media in allowed or (allowed == JSON_MEDIA and media.startswith("application/") and media.endswith("+json")):
        return
    raise HTTPException(
        status_code=415,
        detail=f"send this body as {' or '.join(allowed)} (Content-Type header); got {media or 'no Content-Type'}",
    )


def client_address(connection: ASGIConnection) -> str:
    """The peer's address (a proxy in front should be the only peer; forwarded headers are not trusted)."""
    return connection.client.host if connection.client else "unknown"


def _limit(platform: Any, key: str, per_minute: int, what: str) -> None:
    decision = platform.limiter.hit(key, per_minute)
    if not decision.allowed:
        raise RateLimited(
            f"rate limit reached: {per_minute} requests a minute {what}; retry in {decision.retry_after} s",
            retry_after=decision.retry_after,
        )


def admit_key(platform: Any, token: str | None, address: str) -> Principal:
    """The key's principal, with the failure limit of the address around the check (see the module).
    An address past its limit still gets in with a key verified recently (no argon2 to run), so a
    flood from a shared address does not lock out the keys already in use there."""
    settings = platform.settings
    failures = f"authfail:{address}"
    blocked = platform.limiter.peek(failures, settings.auth_failures_per_minute)
    try:
        return platform.keys.authenticate(token, verify=blocked.allowed)
    except VerificationSkipped:
        raise RateLimited(
            f"too many requests from this address failed authentication (the limit is "
            f"{settings.auth_failures_per_minute} a minute); retry in {blocked.retry_after} s",
            code="auth_failures_rate_limited",
            retry_after=blocked.retry_after,
        ) from None
    except Unauthenticated:
        platform.limiter.hit(failures, settings.auth_failures_per_minute)
        raise


def _admit_request(platform: Any, token: str | None, address: str) -> Principal:
    principal = admit_key(platform, token, address)
    _limit(platform, f"key:{principal.key_id}", platform.settings.rate_limit_per_minute, "for this key")
    return principal


async def auth_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    platform = connection.app.state.platform
    path = connection.scope["path"]
    if _is_public(handler, path):
        if path not in UNLIMITED_PATHS:
            args = (platform, f"addr:{client_address(connection)}", platform.settings.rate_limit_per_minute)
            if platform.limiter.shared:  # a network round trip: off the event loop
                await anyio.to_thread.run_sync(_limit, *args, "from this address")
            else:
                _limit(*args, "from this address")
        check_body_media(connection, handler)
        return
    minimum = handler.opt.get("min_role")
    if handler.opt.get("console"):
        # the console signs in with a cookie session, never a bearer key
        await authenticate_console(connection, minimum)
        principal = connection.scope["principal"]
        await anyio.to_thread.run_sync(
            _limit, platform, f"key:{principal.key_id}", platform.settings.rate_limit_per_minute, "for this key"
        )
        return
    principal: Principal = await anyio.to_thread.run_sync(
        _admit_request, platform, bearer_token(connection), client_address(connection)
    )
    connection.scope["principal"] = principal  # read by the request logger and `provide_principal`
    require_role(principal, minimum)
    check_body_media(connection, handler)


def provide_principal(request: Request) -> Principal:
    return request.scope["principal"]


#: Declare ``principal: CurrentPrincipal`` in a handler to receive the calling key.
CurrentPrincipal = NamedDependency[Principal]


def check_route_access(app: Litestar, owners: dict[str, str] | None = None) -> None:
    """Refuse to start when a route does not say who may call it; ``owners`` (handler function
    names to plugin names) lets the message name the plugin that gave the route."""
    undeclared = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if _is_public(handler, route.path):
                continue
            minimum = handler.opt.get("min_role")
            if minimum not in ROLE_RANK:
                owner = (owners or {}).get(handler.handler_name)
                undeclared.append(
                    f"{route.path} ({handler.handler_name}" + (f", from plugin '{owner}')" if owner else ")")
                )
    if undeclared:
        raise RuntimeError(
            "these routes declare no access rule (opt=access(role) or opt=PUBLIC): " + ", ".join(undeclared)
        )
