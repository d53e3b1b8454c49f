"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, ``/v1/moderations``. Point the official ``openai`` SDK's ``base_url`` at ``http://host:8000/v1``."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import anyio
import numpy as np
from litestar import Request, Response, Router, get, post
from litestar.params import FromPath, JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.openai import convert
from espalier.api.openai.errors import OPENAI_EXCEPTION_HANDLERS
from espalier.api.openai.moderations import moderations
from espalier.api.openai.responses import ROUTES as RESPONSES_ROUTES
from espalier.api.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from espalier.api.openai.streaming import EventStream, open_events
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.interface.chat.service import RAG_ALIAS, StreamSession, new_request_id, served_model_id
from espalier.core.sources.models.service import split_model_id

MAX_EMBEDDING_INPUTS = 2048
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
IGNORED_HEADER = "x-espalier-ignored"


def _ignored(data: ChatCompletionRequest) -> dict[str, str]:
    """OpenAI fields a request may set that change nothing here, named in a header rather than
    refused (the official SDK and agent frameworks send them by default): calls are returned as the
    model writes them whatever ``parallel_tool_calls`` says, there is one service tier, and every
    request is stored (``store``, ``metadata``)."""
    names = [
        name for name in ("parallel_tool_calls", "service_tier", "store", "metadata") if getattr(data, name) is not None
    ]
    return {IGNORED_HEADER: ", ".join(names)} if names else {}


async def _stream_response(
    session: StreamSession, cancel: threading.Event, kind: str, include_usage: bool, headers: dict[str, str]
) -> EventStream:
    base = {
        "id": session.request_id,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": session.created,
        "model": served_model_id(session.request, session.version),
        "system_fingerprint": f"espalier-{session.version.label}",
    }
    extension = {
        "conversation_id": session.conversation_id,
        "model_version": session.version.label,
        "completion_ids": session.completion_ids,
        **({"sources": session.sources} if session.sources is not None else {}),
    }
    if kind == "chat":
        first = [
            {
                **base,
                "choices": [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                        "logprobs": None,
                    }
                ],
                "espalier": extension,
            }
            for index in range(session.request.params.n)
        ]
        chunk = lambda delta: convert.chat_chunk(base, delta)  # noqa: E731
    else:
        first = []
        chunk = lambda delta: convert.completion_chunk(base, delta)  # noqa: E731

    def usage() -> dict[str, Any]:
        completion_tokens = sum(session.tokens)
        return {
            **base,
            "choices": [],
            "espalier": extension,
            "usage": {
                "prompt_tokens": session.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": session.prompt_tokens + completion_tokens,
            },
        }

    return EventStream(
        await open_events(session, cancel, first, chunk, usage if include_usage else None),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, "x-espalier-model-version": session.version.label, **headers},
    )


@post("/chat/completions", opt=access("user"), summary="Chat completion (OpenAI-compatible)", status_code=200)
async def chat_completions(request: Request, data: JSONBody[ChatCompletionRequest], principal: CurrentPrincipal) -> Any:
    platform = request.app.state.platform
    chat_request = convert.chat_request(data)
    if data.stream:
        cancel = threading.Event()
        session = await anyio.to_thread.run_sync(lambda: platform.chat.stream(chat_request, principal, cancel.is_set))
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        return await _stream_response(session, cancel, "chat", include_usage, _ignored(data))
    result = await anyio.to_thread.run_sync(lambda: platform.chat.complete(chat_request, principal))
    return Response(
        convert.chat_response(result), headers={"x-espalier-model-version": result.model_version, **_ignored(data)}
    )


@post(
    "/completions", opt=access("user"), summary="Text completion of a plain prompt (OpenAI-compatible)", status_code=200
)
async def completions(request: Request, data: JSONBody[CompletionRequest], principal: CurrentPrincipal) -> Any:
    platform = request.app.state.platform
    requests = convert.completion_requests(data)
    if data.stream:
        if len(requests) != 1:
            raise InvalidInput("streaming takes a single prompt", details={"param": "prompt"})
        cancel = threading.Event()
        session = await anyio.to_thread.run_sync(lambda: platform.chat.stream(requests[0], principal, cancel.is_set))
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        return await _stream_response(session, cancel, "completion", include_usage, {})

    top = data.logprobs or 0
    if data.max_tokens == 0:  # scoring the prompts (echo with logprobs): nothing generated

        def score_all() -> list:
            return [platform.chat.prompt_logprobs(item, principal, top) for item in requests]

        scored = await anyio.to_thread.run_sync(score_all)
        body = convert.scored_response(
            requests, scored, new_request_id("completion"), served_model_id(requests[0], scored[0][0])
        )
        return Response(body, headers={"x-espalier-model-version": scored[0][0].label})

    def run_all() -> tuple[list, list | None]:
        results = [platform.chat.complete(item, principal) for item in requests]
        echoed = None
        if data.echo:
            echoed = [
                (
                    item.prompt,
                    platform.chat.prompt_logprobs(item, principal, top)[1] if data.logprobs is not None else None,
                )
                for item in requests
            ]
        return results, echoed

    results, echoed = await anyio.to_thread.run_sync(run_all)
    return Response(
        convert.completion_response(results, echoed), headers={"x-espalier-model-version": results[0].model_version}
    )


@post("/embeddings", opt=access("user"), summary="Embeddings (OpenAI-compatible)", status_code=200)
async def embeddings(request: Request, data: JSONBody[EmbeddingRequest]) -> dict[str, Any]:
    platform = request.app.state.platform
    if data.model not in platform.embedders:
        raise NotFound(
            f"no embedding model '{data.model}' (available: {', '.join(platform.embedders.names()) or 'none'})",
            code="model_not_found",
            details={"param": "model"},
        )
    embedder = platform.embedders.get(data.model)
    texts = [data.input] if isinstance(data.input, str) else data.input
    if not texts:
        raise InvalidInput("input must not be empty", details={"param": "input"})
    if not all(isinstance(text, str) for text in texts):
        raise InvalidInput(
            "input must be a string or a list of strings; token arrays are not supported", details={"param": "input"}
        )
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidInput(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", details={"param": "input"})
    if any(not text for text in texts):
        raise InvalidInput("inputs must be non-empty strings", details={"param": "input"})
    if data.dimensions is not None and data.dimensions != embedder.dimensions:
        raise InvalidInput(
            f"'{data.model}' has {embedder.dimensions} dimensions; omit 'dimensions' or pass {embedder.dimensions}",
            details={"param": "dimensions"},
        )
    vectors = await anyio.to_thread.run_sync(embedder.embed, texts)
    count = getattr(embedder, "count_tokens", None)
    tokens = sum(count(texts)) if callable(count) else sum(len(text.split()) for text in texts)
    items = []
    for index, vector in enumerate(vectors):
        if data.encoding_format == "base64":
            encoded: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        else:
            encoded = [float(value) for value in vector]
        items.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": items,
        "model": data.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _model_entry(info: Any) -> dict[str, Any]:
    """The bare name: whichever version serves now."""
    return {
        "id": info.name,
        "object": "model",
        "created": int(info.created_at.timestamp()) if info.created_at else 0,
        "owned_by": info.plugin or "espalier",
        "espalier": {
            "type": "chat",
            "provider": info.provider,
            "serving_version": info.serving_version,
            "versions": [v["label"] for v in info.versions],
            "context_window": info.context_window,
            "loaded": info.loaded,
        },
    }


def _version_entry(info: Any, version: dict[str, Any]) -> dict[str, Any]:
    """One version as its own id, ``name@label``, so versions can be served and compared by name."""
    return {
        "id": f"{info.name}@{version['label']}",
        "object": "model",
        "created": int(version["created_at"].timestamp()) if version.get("created_at") else 0,
        "owned_by": info.plugin or "espalier",
        "espalier": {
            "type": "chat",
            "model": info.name,
            "version": version["label"],
            "version_id": version["id"],
            "status": version["status"],
            "serving": version["serving"],
            "provider": info.provider,
            "context_window": info.context_window,
            "loaded": version.get("loaded", False),
        },
    }


def _rag_entry(platform: Any) -> dict[str, Any]:
    """The ``rag`` alias: the default model, grounded in the collections a request names (or all
    the calling key may read)."""
    return {
        "id": RAG_ALIAS,
        "object": "model",
        "created": 0,
        "owned_by": "espalier",
        "espalier": {
            "type": "chat",
            "alias_of": platform.settings.default_model,
            "grounded": True,
            "retrievers": platform.retrievers.names(),
        },
    }


@get(
    "/models",
    opt=access("user"),
    summary="Models that can be served (OpenAI-compatible); every version as name@label",
    sync_to_thread=True,
)
def list_models(request: Request) -> dict[str, Any]:
    platform = request.app.state.platform
    data = []
    for info in platform.models.list():
        data.append(_model_entry(info))
        data.extend(_version_entry(info, version) for version in info.versions)
    if platform.retrievers.names():
        data.append(_rag_entry(platform))
    for entry in platform.embedders:
        data.append(
            {
                "id": entry.name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": entry.plugin,
                "espalier": {"type": "embedding", "dimensions": entry.item.dimensions},
            }
        )
    return {"object": "list", "data": data}


@get(
    "/models/{model_id:str}",
    opt=access("user"),
    summary="One model or one version (name@label; OpenAI-compatible)",
    sync_to_thread=True,
)
def get_model(request: Request, model_id: FromPath[str]) -> dict[str, Any]:
    platform = request.app.state.platform
    if model_id == RAG_ALIAS and platform.retrievers.names():
        return _rag_entry(platform)
    name, label = split_model_id(model_id)
    info = platform.models.info(name)
    if label is None:
        return _model_entry(info)
    for version in info.versions:
        if version["label"] == label:
            return _version_entry(info, version)
    raise NotFound(f"model '{name}' has no version '{label}'", code="model_not_found")


openai_router = Router(
    path="/v1",
    route_handlers=[chat_completions, completions, embeddings, list_models, get_model, moderations, *RESPONSES_ROUTES],
    exception_handlers=OPENAI_EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    tags=["openai"],
)

ROUTES = [openai_router]
