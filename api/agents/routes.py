"""Agents: run one (answer plus full trace, or its steps streamed as server-sent events), list and
read stored traces. A key sees only its own runs; admins may list everyone's."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.openai.streaming import EventStream
from espalier.core.tools.agents.service import AgentContext, AgentService

log = logging.getLogger("espalier.api.agents")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


class AgentRunCreate(msgspec.Struct, forbid_unknown_fields=True):
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    model: str | None = None
    tools: list[str] | None = None
    collection: str | None = None
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    stream: bool = False


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: ".encode() + json.dumps(data, default=str, separators=(",", ":")).encode() + b"\n\n"


async def _stream_steps(
    service: AgentService, context: AgentContext, cancel: threading.Event, queue: asyncio.Queue[Any]
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()

    def produce() -> None:
        try:
            result = service.execute(context)
            loop.call_soon_threadsafe(queue.put_nowait, ("run", result))
        except BaseException as exc:  # execute stores its own failures; this is the database failing
            log.error("agent run %s could not be stored: %r", context.run_id, exc)
            loop.call_soon_threadsafe(queue.put_nowait, ("error", {"message": "the run could not be stored"}))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    worker = threading.Thread(target=produce, name=f"espalier-agent-{context.run_id[-6:]}", daemon=True)
    worker.start()
    try:
        yield _sse("start", {"id": context.run_id, "agent": context.agent, "model": context.model})
        while True:
            item = await queue.get()
            if item is _END:
                break
            kind, payload = item
            yield _sse(kind, payload)
    finally:
        cancel.set()  # the client went away (or we are done): the agent stops at its next check
        if worker.is_alive():
            await anyio.to_thread.run_sync(worker.join, 30)


@get("/api/agents", opt=access("user"), tags=["agents"], sync_to_thread=True, summary="Registered agents")
def list_agents(request: Request) -> dict[str, Any]:
    return {"agents": request.app.state.platform.agent_runs.describe()}


@post(
    "/api/agents/{name:str}/runs",
    opt=access("user"),
    tags=["agents"],
    status_code=200,
    summary="Run an agent: the answer and its full trace, or (stream=true) its steps as server-sent events",
)
async def run_agent(
    request: Request, name: FromPath[str], data: JSONBody[AgentRunCreate], principal: CurrentPrincipal
) -> Any:
    service: AgentService = request.app.state.platform.agent_runs
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    on_step = (lambda step: loop.call_soon_threadsafe(queue.put_nowait, ("step", step))) if data.stream else None

    def prepare() -> AgentContext:  # every 4xx happens here, before a stream starts
        return service.prepare(
            name,
            data.question,
            principal,
            model=data.model,
            tools=data.tools,
            max_steps=data.max_steps,
            timeout_s=data.timeout_s,
            collection=data.collection,
            cancel=cancel,
            on_step=on_step,
        )

    context = await anyio.to_thread.run_sync(prepare)
    if data.stream:
        return EventStream(
            _stream_steps(service, context, cancel, queue), media_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        return await anyio.to_thread.run_sync(service.execute, context)
    finally:
        cancel.set()


@get(
    "/api/agents/runs",
    opt=access("user"),
    tags=["agents"],
    sync_to_thread=True,
    summary="Stored agent runs, newest first (your key's own; admins may pass all=true)",
)
def list_runs(
    request: Request,
    principal: CurrentPrincipal,
    agent: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    all: FromQuery[bool] = False,
) -> dict[str, Any]:
    return {"runs": request.app.state.platform.agent_runs.list(principal, agent=agent, limit=limit, all_keys=all)}


@get(
    "/api/agents/runs/{run_id:str}",
    opt=access("user"),
    tags=["agents"],
    sync_to_thread=True,
    summary="One agent run with its full trace",
)
def get_run(request: Request, run_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    return request.app.state.platform.agent_runs.get(run_id, principal)


ROUTES = [list_agents, run_agent, list_runs, get_run]
