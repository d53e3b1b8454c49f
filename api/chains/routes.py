"""Named chains: list them, run a turn (in a new or an existing session), read a session."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, JSONBody

from espalier.api.guards import CurrentPrincipal, access


class ChainRunCreate(msgspec.Struct, forbid_unknown_fields=True):
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None = None


@get("/api/chains", opt=access("user"), tags=["chains"], sync_to_thread=True, summary="Named chains")
def list_chains(request: Request) -> dict[str, Any]:
    return {"chains": request.app.state.platform.chains.describe()}


@post(
    "/api/chains/{name:str}/runs",
    opt=access("user"),
    tags=["chains"],
    status_code=200,
    sync_to_thread=True,
    summary="Run one turn of a chain; pass session_id to continue a session (its memory)",
)
def run_chain(
    request: Request, name: FromPath[str], data: JSONBody[ChainRunCreate], principal: CurrentPrincipal
) -> dict[str, Any]:
    return request.app.state.platform.chains.run(name, data.input, principal, session_id=data.session_id)


@get(
    "/api/chains/sessions/{session_id:str}",
    opt=access("user"),
    tags=["chains"],
    sync_to_thread=True,
    summary="A chain session: its turns and summary",
)
def get_session(request: Request, session_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    return request.app.state.platform.chains.session(session_id, principal)


ROUTES = [list_chains, run_chain, get_session]
