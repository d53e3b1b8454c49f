"""Sign in with an operator or admin key, sign out. The key is exchanged once for a session
cookie (HttpOnly, SameSite=Strict, Secure on TLS); the browser never keeps the key."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import anyio
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from espalier.api.console.session import (
    COOKIE,
    CSRF_FIELD,
    PRE_SESSION_COOKIE,
    SIGN_IN_PATH,
    ConsoleSignInRequired,
    console,
)
from espalier.api.errors import problem
from espalier.api.guards import PUBLIC, accepts, admit_key, client_address
from espalier.core.infrastructure.errors import Forbidden, RateLimited, Unauthenticated
from espalier.core.interface.console_sessions.service import same_token


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _cookie(request: Request, name: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path="/console",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _safe_next(target: str | None) -> str:
    # only a console path: never an open redirect to another site
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


def _sign_in_form(request: Request, *, error: str = "", status: int = 200, next_path: str = "/console") -> Template:
    token = secrets.token_urlsafe(32)
    return Template(
        template_name="sign_in.html",
        context={"csrf_token": token, "error": error, "next": _safe_next(next_path)},
        cookies=[_cookie(request, PRE_SESSION_COOKIE, token, 600)],
        status_code=status,
    )


@get(SIGN_IN_PATH, opt=PUBLIC, include_in_schema=False)
async def sign_in_page(request: Request, next: FromQuery[str | None] = None) -> Template:  # noqa: A002
    return _sign_in_form(request, next_path=next or "/console")


@post(
    SIGN_IN_PATH,
    opt={**PUBLIC, **accepts("application/x-www-form-urlencoded", "multipart/form-data")},
    include_in_schema=False,
)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    if not same_token(request.cookies.get(PRE_SESSION_COOKIE, ""), form.get(CSRF_FIELD)):
        return _sign_in_form(request, error="The sign-in form expired; try again.", status=403)
    platform = request.app.state.platform
    raw_key = form.get("key") if isinstance(form.get("key"), str) else None
    try:
        # the address's failed sign-ins count like failed API calls (see api/guards.py)
        await anyio.to_thread.run_sync(admit_key, platform, (raw_key or "").strip() or None, client_address(request))
        signed = await anyio.to_thread.run_sync(platform.console_sessions.sign_in, raw_key)
    except RateLimited as exc:
        return _sign_in_form(request, error=exc.message, status=429)
    except Unauthenticated:
        return _sign_in_form(request, error="That key is not valid (or was revoked).", status=401)
    except Forbidden as exc:
        return _sign_in_form(request, error=exc.message, status=403)
    response = Redirect(_safe_next(form.get("next")), status_code=303)
    response.cookies.append(_cookie(request, COOKIE, signed.token, signed.max_age))
    response.cookies.append(_cookie(request, PRE_SESSION_COOKIE, "", 0))
    return response


@post("/console/sign-out", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def sign_out(request: Request) -> Redirect:
    platform = request.app.state.platform
    platform.console_sessions.sign_out(request.cookies.get(COOKIE), request.scope["principal"])  # type: ignore[typeddict-item]
    response = Redirect(SIGN_IN_PATH, status_code=303)
    response.cookies.append(_cookie(request, COOKIE, "", 0))
    return response


def sign_in_required(request: Request, exc: ConsoleSignInRequired) -> Response:
    """Browsers go to the sign-in form; HTMX is told to go there; anything else gets 401."""
    target = f"{SIGN_IN_PATH}?next={quote(request.url.path)}"
    if request.headers.get("hx-request"):
        return Response(None, status_code=401, headers={"HX-Redirect": target})
    if request.method in ("GET", "HEAD"):
        return Redirect(target, status_code=303)
    return problem(401, exc.detail, code="unauthenticated", request=request)


ROUTES = [sign_in_page, sign_in, sign_out]
