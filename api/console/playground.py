"""Playground: chat with any registered model, see ``n`` candidates side by side, rank them
(rank 1 is best, ties allowed, a candidate may be flagged unacceptable)."""

from __future__ import annotations

import secrets
from typing import Annotated

import anyio
import msgspec
from litestar import Request, get, post
from litestar.response import Template

from espalier.api.console.render import NavItem, page, ranked_candidates, read_form
from espalier.api.console.session import console
from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams

NAV = NavItem("Playground", "/console/playground")
MAX_CANDIDATES = 4


class ChatForm(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
    system: Annotated[str, msgspec.Meta(max_length=20_000)] = ""
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_CANDIDATES)] = 2
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.8


@get("/console/playground", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def playground_page(request: Request) -> Template:
    platform = request.app.state.platform
    return page(
        request,
        "playground.html",
        active=NAV.path,
        models=[m.name for m in platform.models.list()],
        default_model=platform.settings.default_model,
        max_candidates=MAX_CANDIDATES,
    )


@post("/console/playground/chat", opt=console("operator"), include_in_schema=False, status_code=200)
async def playground_chat(request: Request) -> Template:
    form = await read_form(request, ChatForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    messages = ([ChatMessage("system", form.system)] if form.system.strip() else []) + [
        ChatMessage("user", form.prompt)
    ]
    chat = ChatRequest(
        model=form.model,
        messages=messages,
        params=GenerationParams(max_tokens=form.max_tokens, temperature=form.temperature, n=form.n),
    )
    result = await anyio.to_thread.run_sync(platform.chat.complete, chat, principal)
    candidates = [
        {"id": cid, "text": g.text, "finish_reason": g.finish_reason, "tokens": g.completion_tokens}
        for cid, g in zip(result.completion_ids, result.generations, strict=True)
    ]
    return page(
        request,
        "_candidates.html",
        result=result,
        candidates=candidates,
        prompt=form.prompt,
        idempotency_key=f"console-{secrets.token_hex(12)}",
    )


@post("/console/playground/rank", opt=console("operator"), include_in_schema=False, status_code=200)
async def playground_rank(request: Request) -> Template:
    """Stores the ranking as feedback (the same record ``POST /api/feedback/rankings`` makes), so it
    becomes preference pairs; the form's idempotency key makes a double submit store it once."""
    form = await request.form()
    request_id = form.get("request_id") or ""
    candidates = ranked_candidates(form)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    submission = await anyio.to_thread.run_sync(
        lambda: platform.feedback.submit_ranking(
            principal, form.get("idempotency_key") or None, request_id=request_id, candidates=candidates
        )
    )
    # candidates in the order they were shown (the form lists them so), best rank first
    shown = {
        completion_id: number for number, completion_id in enumerate((c["completion_id"] for c in candidates), start=1)
    }
    order = sorted(
        ((shown[c["completion_id"]], c["rank"], c["unacceptable"]) for c in candidates),
        key=lambda row: (row[1], row[0]),
    )
    return page(request, "_ranked.html", feedback=submission.record, order=order)


ROUTES = [playground_page, playground_chat, playground_rank]
