"""Agents: run any registered agent on a question (and a collection) and watch its
Thought/Action/Observation steps arrive as the run streams them; read past traces.

The run streams server-sent events exactly as ``POST /api/agents/{name}/runs`` with
``stream=true`` does; the page reads them with ``fetch`` and writes every field as text (tool
observations are untrusted: they never become markup).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from espalier.api.agents.routes import SSE_HEADERS, _stream_steps
from espalier.api.console.render import NavItem, page, read_form
from espalier.api.console.session import console
from espalier.api.openai.streaming import EventStream

NAV = NavItem("Agents", "/console/agents")


class AgentRunForm(msgspec.Struct, forbid_unknown_fields=True):
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    collection: Annotated[str, msgspec.Meta(max_length=200)] = ""
    model: Annotated[str, msgspec.Meta(max_length=100)] = ""
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] = 6


def _runs(platform: Any, principal: Any) -> list[dict[str, Any]]:
    # operators see the runs of their own key, admins everyone's (as the API allows)
    return platform.agent_runs.list(principal, limit=50, all_keys=True)


@get("/console/agents", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def agents_page(request: Request) -> Template:
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    collections = [c.name for c in platform.rag.list_collections(principal)]
    return page(
        request,
        "agents.html",
        active=NAV.path,
        agents=platform.agent_runs.describe(),
        collections=collections,
        models=[m.name for m in platform.models.list()],
        default_model=platform.settings.default_model,
        runs=_runs(platform, principal),
    )


@get("/console/agents/runs/{run_id:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def run_page(request: Request, run_id: FromPath[str]) -> Template:
    run = request.app.state.platform.agent_runs.get(run_id, request.scope["principal"])  # type: ignore[typeddict-item]
    return page(request, "agent_run.html", active=NAV.path, run=run)


@post("/console/agents/{name:str}/runs", opt=console("operator"), include_in_schema=False, status_code=200)
async def run_agent(request: Request, name: FromPath[str]) -> EventStream:
    """Server-sent events: ``start``, one ``step`` per step, then ``run`` (the stored run) or ``error``."""
    form = await read_form(request, AgentRunForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    service = platform.agent_runs
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def prepare() -> Any:  # every 4xx happens here, before the stream starts
        return service.prepare(
            name,
            form.question,
            principal,
            model=form.model or None,
            max_steps=form.max_steps,
            collection=form.collection or None,
            cancel=cancel,
            on_step=lambda step: loop.call_soon_threadsafe(queue.put_nowait, ("step", step)),
            via="console",
        )

    context = await anyio.to_thread.run_sync(prepare)
    return EventStream(
        _stream_steps(service, context, cancel, queue), media_type="text/event-stream", headers=SSE_HEADERS
    )


ROUTES = [agents_page, run_page, run_agent]
