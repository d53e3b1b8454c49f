"""Plugins (operators), API keys and the audit log (admins)."""

from __future__ import annotations

from typing import Annotated

import anyio
import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from espalier import __version__
from espalier.api.console.render import NavItem, page, read_form
from espalier.api.console.session import console

PLUGINS_NAV = NavItem("Plugins", "/console/plugins")
KEYS_NAV = NavItem("Keys", "/console/keys", "admin")
AUDIT_NAV = NavItem("Audit", "/console/audit", "admin")


class KeyForm(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: str = "user"


@get("/console/plugins", opt=console("operator"), include_in_schema=False)
async def plugins_page(request: Request) -> Template:
    host = request.app.state.platform.plugins
    return page(
        request,
        "plugins.html",
        active=PLUGINS_NAV.path,
        version=__version__,
        plugins=host.describe(),
        failures=[vars(failure) for failure in host.failures],
    )


@get("/console/keys", opt=console("admin"), include_in_schema=False, sync_to_thread=True)
def keys_page(request: Request) -> Template:
    return page(request, "keys.html", active=KEYS_NAV.path, keys=request.app.state.platform.keys.list())


@post("/console/keys", opt=console("admin"), include_in_schema=False, status_code=200)
async def create_key(request: Request) -> Template:
    form = await read_form(request, KeyForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    created = await anyio.to_thread.run_sync(
        lambda: platform.keys.create(name=form.name, role=form.role, created_by=principal)
    )
    keys = await anyio.to_thread.run_sync(platform.keys.list)
    return page(request, "_keys.html", active=KEYS_NAV.path, keys=keys, created=created)


@post(
    "/console/keys/{key_id:str}/revoke",
    opt=console("admin"),
    include_in_schema=False,
    sync_to_thread=True,
    status_code=200,
)
def revoke_key(request: Request, key_id: FromPath[str]) -> Template:
    platform = request.app.state.platform
    platform.keys.revoke(key_id, by=request.scope["principal"])  # type: ignore[typeddict-item]
    return page(request, "_keys.html", active=KEYS_NAV.path, keys=platform.keys.list())


@get("/console/audit", opt=console("admin"), include_in_schema=False, sync_to_thread=True)
def audit_page(request: Request, action: FromQuery[str | None] = None) -> Template:
    events = request.app.state.platform.audit.list(limit=200, action=action or None)
    return page(request, "audit.html", active=AUDIT_NAV.path, events=events, action=action or "")


ROUTES = [plugins_page, keys_page, create_key, revoke_key, audit_page]
