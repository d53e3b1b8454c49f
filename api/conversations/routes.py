"""Conversations: what each key asked and what it was shown (the anchor for feedback)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery, Parameter

from espalier.api.guards import CurrentPrincipal, access


@get(
    "/api/conversations",
    opt=access("user"),
    tags=["conversations"],
    sync_to_thread=True,
    summary="The calling key's conversations, most recent first (admins: ?all=true for everyone's)",
)
def list_conversations(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    all: FromQuery[bool] = False,  # noqa: A002 - the public query parameter's name
) -> dict[str, Any]:
    conversations = request.app.state.platform.conversations.list(principal, limit=limit, everyone=all)
    return {
        "conversations": [
            {"id": c.id, "owner_key_id": c.owner_key_id, "created_at": c.created_at, "updated_at": c.updated_at}
            for c in conversations
        ]
    }


@get(
    "/api/conversations/{conversation_id:str}",
    opt=access("user"),
    tags=["conversations"],
    sync_to_thread=True,
    summary="One conversation with every request and candidate shown",
)
def get_conversation(request: Request, conversation_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    return request.app.state.platform.conversations.get(conversation_id, principal)


ROUTES = [list_conversations, get_conversation]
