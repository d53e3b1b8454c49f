"""API keys and the audit log (admins only)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from espalier.api.admin.schemas import AuditOut, KeyCreate, KeyCreated, KeyOut, key_out
from espalier.api.guards import CurrentPrincipal, access
from espalier.api.schema_types import INT64_MAX


class KeysController(Controller):
    path = "/api/keys"
    tags = ["admin"]
    opt = access("admin")

    @get(sync_to_thread=True, summary="List API keys (never their secrets)")
    def list_keys(self, request: Request, include_revoked: FromQuery[bool] = True) -> dict[str, list[KeyOut]]:
        keys = request.app.state.platform.keys.list(include_revoked=include_revoked)
        return {"keys": [key_out(record) for record in keys]}

    @post(sync_to_thread=True, summary="Create a key; the response shows it once")
    def create_key(self, request: Request, data: JSONBody[KeyCreate], principal: CurrentPrincipal) -> KeyCreated:
        created = request.app.state.platform.keys.create(name=data.name, role=data.role, created_by=principal)
        out = key_out(created.record)
        return KeyCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, key=created.key)

    @delete("/{key_id:str}", status_code=200, sync_to_thread=True, summary="Revoke a key")
    def revoke_key(self, request: Request, key_id: FromPath[str], principal: CurrentPrincipal) -> KeyOut:
        return key_out(request.app.state.platform.keys.revoke(key_id, by=principal))


@get("/api/audit", opt=access("admin"), tags=["admin"], sync_to_thread=True, summary="The audit log, newest first")
def list_audit(
    request: Request,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    action: FromQuery[str | None] = None,
    before_id: Annotated[int | None, Parameter(ge=1, le=INT64_MAX)] = None,
) -> dict[str, list[AuditOut]]:
    events = request.app.state.platform.audit.list(limit=limit, action=action, before_id=before_id)
    return {
        "events": [
            AuditOut(
                id=e.id,
                at=e.at,
                actor_key_id=e.actor_key_id,
                actor_name=e.actor_name,
                action=e.action,
                target=e.target,
                details=e.details,
            )
            for e in events
        ]
    }


ROUTES = [KeysController, list_audit]
