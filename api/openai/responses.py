"""The Responses API: ``POST /v1/responses``, ``GET /v1/responses/{id}``, streamed with its typed
events. Each request becomes a chat request on the same service (guardrails, grounding, tools,
structured output, storage), so what ``/v1/chat/completions`` does for a message list it does
here for ``input`` items.

Mapping:

* ``input`` (text, or ``message`` / ``function_call`` / ``function_call_output`` items),
  ``instructions`` (a system message for this request only, as OpenAI does), and
  ``previous_response_id``: the stored conversation of an earlier response of the same key
  (its input and output), continued in the same Espalier conversation;
* ``tools``: ``function`` tools (OpenAI's function calling, the same checks and constrained
  decoding), and ``file_search`` with ``vector_store_ids`` naming Espalier collections: the
  answer is grounded in them (the collections' read rules apply) and cites what it used
  (``file_search_call`` item, ``file_citation`` annotations); other built-in tools are refused
  by name (``code_interpreter`` too: model-written code runs only in the sandbox through the
  ``pal`` agent, ``POST /api/agents/pal/runs``);
* ``text.format``: ``json_schema`` / ``json_object`` as ``response_format`` (structured outputs).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.openai.schemas import EspalierOptions, Text
from espalier.api.openai.streaming import EventStream, open_events
from espalier.api.schema_types import Count
from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, ChatResult, GenerationParams, TokenDelta
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.sources.conversations.tables import ResponseRecord
from espalier.core.tools import structured, tool_calls

MAX_ITEMS = 500
UNSUPPORTED_TOOLS = (
    "code_interpreter",
    "web_search",
    "web_search_preview",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
)


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    input: Text | list[dict[str, Any]]
    instructions: Text | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: Count | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    truncation: str | None = None
    user: str | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    seed: int | None = None
    espalier: EspalierOptions | None = None


def _bad(message: str, param: str) -> InvalidInput:
    return InvalidInput(message, details={"param": param})


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be text or a list of parts", f"{where}.content")
    texts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise _bad(
                f"{where}.content[{number}]: only text parts are supported (input_text, output_text), not {kind!r}",
                f"{where}.content[{number}]",
            )
        texts.append(part["text"])
    return "".join(texts)


def input_messages(raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as chat messages (dicts, as stored): text is one user message; items map to
    messages, consecutive ``function_call`` items to one assistant message with its calls."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not raw or len(raw) > MAX_ITEMS:
        raise _bad(f"input must be text or a list of 1-{MAX_ITEMS} items", "input")
    out: list[dict[str, Any]] = []
    for number, item in enumerate(raw):
        where = f"input[{number}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(f"{where}.role must be user, system, developer or assistant", f"{where}.role")
            out.append(
                {
                    "role": "system" if role == "developer" else role,
                    "content": _content_text(item.get("content"), where),
                }
            )
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
            if not all(isinstance(v, str) for v in (call_id, name, arguments)):
                raise _bad(f"{where}: a function_call needs call_id, name and arguments (a JSON string)", where)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") and not out[-1]["content"]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise _bad(f"{where}: a function_call_output needs call_id and output (text)", where)
            out.append({"role": "tool", "content": output, "tool_call_id": call_id})
        elif kind in ("file_search_call", "reasoning"):
            continue  # an earlier turn's record: nothing for the model to read
        else:
            raise _bad(f"{where}.type {kind!r} is not supported (message, function_call, function_call_output)", where)
    return out


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored response's output items as the messages a next turn continues from."""
    items = [
        {"type": "message", "role": "assistant", "content": [p for p in i["content"] if p.get("type") == "output_text"]}
        if i["type"] == "message"
        else i
        for i in output
        if i["type"] in ("message", "function_call")
    ]
    return input_messages(items) if items else []


def _tools(raw: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[str] | None]:
    """(chat-completions function tools, collections to ground in from file_search)."""
    functions: list[dict[str, Any]] = []
    collections: list[str] | None = None
    for number, tool in enumerate(raw or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        where = f"tools[{number}]"
        if kind == "function":
            spec = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            functions.append({"type": "function", "function": spec})
        elif kind == "file_search":
            ids = tool.get("vector_store_ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise _bad(f"{where}: file_search needs vector_store_ids (Espalier collection names)", where)
            collections = [*(collections or []), *ids]
        elif kind in UNSUPPORTED_TOOLS:
            extra = (
                ": model-written code runs only in Espalier's sandbox, through the pal agent "
                "(POST /api/agents/pal/runs)"
                if kind == "code_interpreter"
                else ""
            )
            raise InvalidInput(
                f"the built-in tool '{kind}' is not supported here{extra}",
                code="unsupported_parameter",
                details={"param": f"{where}.type"},
            )
        else:
            raise _bad(f"{where}.type must be function or file_search (got {kind!r})", f"{where}.type")
    return functions, collections


def _tool_choice(raw: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(raw, dict):
        if raw.get("type") == "function" and isinstance(raw.get("name"), str):
            return {"type": "function", "function": {"name": raw["name"]}}
        if raw.get("type") == "file_search":
            return "auto"
        raise _bad("tool_choice must be auto, none, required or {'type': 'function', 'name': ...}", "tool_choice")
    return raw


def _text_format(raw: dict[str, Any] | None) -> Any:
    fmt = (raw or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise _bad("text.format must be an object with a 'type'", "text.format")
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return structured.parse_response_format({"type": "json_schema", "json_schema": spec})
    return structured.parse_response_format(fmt)


def chat_request(body: ResponsesRequest, history: list[dict[str, Any]], conversation_id: str | None) -> ChatRequest:
    messages = [*history, *input_messages(body.input)]
    chat = [ChatMessage("system", body.instructions)] if body.instructions else []
    for number, message in enumerate(messages):
        calls = tool_calls.parse_assistant_calls(message["tool_calls"], number) if message.get("tool_calls") else None
        chat.append(ChatMessage(message["role"], message["content"], calls, message.get("tool_call_id")))  # type: ignore[arg-type]
    tool_calls.check_conversation(chat)
    functions, collections = _tools(body.tools)
    tools = tool_calls.parse_tools(functions)
    # With file_search alone there is no function to choose: its tool_choice (auto, file_search) is moot.
    raw_choice = _tool_choice(body.tool_choice) if tools else None
    choice = tool_calls.parse_tool_choice(raw_choice, tools)
    options = body.espalier
    return ChatRequest(
        model=body.model,
        messages=chat,
        params=GenerationParams(
            max_tokens=body.max_output_tokens or 0,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
        ),
        conversation_id=conversation_id or (options.conversation_id if options else None),
        version=options.version if options else None,
        collections=collections if collections is not None else (options.collections if options else None),
        tools=tool_calls.ToolSetup(tools, choice) if tools else None,
        response_format=_text_format(body.text),
    )


# Stored responses ---------------------------------------------------------------------------------
def _owned(record: ResponseRecord | None, principal: Principal, response_id: str) -> ResponseRecord:
    if record is None or not (record.owner_key_id == principal.key_id or principal.has_role("admin")):
        raise NotFound(f"no response '{response_id}' for this key", code="response_not_found")
    return record


def load(engine: Any, response_id: str, principal: Principal) -> ResponseRecord:
    with session_scope(engine) as session:
        return _owned(session.get(ResponseRecord, response_id), principal, response_id)


def history_of(engine: Any, previous: str | None, principal: Principal) -> tuple[list[dict[str, Any]], str | None]:
    """The messages an earlier response continued from and what it answered, and its conversation."""
    if previous is None:
        return [], None
    record = load(engine, previous, principal)
    return [*record.messages, *output_messages(record.body.get("output", []))], record.conversation_id


def store(
    engine: Any,
    principal: Principal,
    body: dict[str, Any],
    request: ChatRequest,
    messages: list[dict],
    result_ids: tuple[str, str],
) -> None:
    request_id, conversation_id = result_ids
    with session_scope(engine) as session:
        session.add(
            ResponseRecord(
                id=body["id"],
                owner_key_id=principal.key_id,
                conversation_id=conversation_id,
                request_id=request_id,
                previous_response_id=body.get("previous_response_id"),
                model=request.model,
                messages=messages,
                body=body,
            )
        )


# Response objects ---------------------------------------------------------------------------------
def _new(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _message_item(text: str, sources: list[dict[str, Any]] | None, item_id: str | None = None) -> dict[str, Any]:
    annotations = [
        {
            "type": "file_citation",
            "file_id": s["document_id"],
            "filename": s.get("source") or s["document_id"],
            "index": len(text),
        }
        for s in sources or []
    ]
    return {
        "type": "message",
        "id": item_id or _new("msg"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}],
    }


def _call_items(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function_call",
            "id": _new("fc"),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }
        for call in calls
    ]


def _search_item(query: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "file_search_call",
        "id": _new("fs"),
        "status": "completed",
        "queries": [query],
        "results": [
            {
                "file_id": s["document_id"],
                "filename": s.get("source") or s["document_id"],
                "score": s.get("score"),
                "text": s.get("text"),
                "attributes": {"collection": s.get("collection")},
            }
            for s in sources
        ],
    }


def response_object(
    body: ResponsesRequest,
    response_id: str,
    created: int,
    output: list[dict[str, Any]],
    finish_reason: str,
    usage: tuple[int, int],
    version: str,
    status: str | None = None,
) -> dict[str, Any]:
    incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status or ("incomplete" if incomplete else "completed"),
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "error": None,
        "model": body.model,
        "output": output,
        "instructions": body.instructions,
        "previous_response_id": body.previous_response_id,
        "tools": body.tools or [],
        "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "max_output_tokens": body.max_output_tokens,
        "text": body.text or {"format": {"type": "text"}},
        "truncation": body.truncation or "disabled",
        "store": body.store is not False,
        "metadata": body.metadata or {},
        "usage": {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage[0] + usage[1],
        },
        "espalier": {"model_version": version},
    }


def output_items(result: ChatResult, query: str) -> tuple[list[dict[str, Any]], str]:
    generation = result.generations[0]
    items: list[dict[str, Any]] = []
    if result.sources is not None:
        items.append(_search_item(query, result.sources))
    if generation.tool_calls:
        if generation.text:
            items.append(_message_item(generation.text, None))
        items.extend(_call_items(generation.tool_calls))
    else:
        items.append(_message_item(generation.text, result.sources))
    return items, generation.finish_reason


def _last_user_text(request: ChatRequest) -> str:
    return next((m.content for m in reversed(request.messages) if m.role == "user"), "")


# Routes -------------------------------------------------------------------------------------------
@post("/responses", opt=access("user"), summary="Create a response (OpenAI's Responses API)", status_code=200)
async def create_response(request: Request, data: JSONBody[ResponsesRequest], principal: CurrentPrincipal) -> Any:
    platform = request.app.state.platform
    history, conversation_id = await anyio.to_thread.run_sync(
        lambda: history_of(platform.engine, data.previous_response_id, principal)
    )
    chat = chat_request(data, history, conversation_id)
    consumer = [*history, *input_messages(data.input)]
    response_id, created = _new("resp"), int(time.time())
    if data.stream:
        return await _stream(platform, data, chat, principal, consumer, response_id, created)
    result = await anyio.to_thread.run_sync(lambda: platform.chat.complete(chat, principal))
    items, finish = output_items(result, _last_user_text(chat))
    body = response_object(
        data,
        response_id,
        created,
        items,
        finish,
        (result.prompt_tokens, result.completion_tokens),
        result.model_version,
    )
    if data.store is not False:
        await anyio.to_thread.run_sync(
            lambda: store(platform.engine, principal, body, chat, consumer, (result.request_id, result.conversation_id))
        )
    return Response(body, headers={"x-espalier-model-version": result.model_version})


async def _stream(
    platform: Any,
    data: ResponsesRequest,
    chat_request: ChatRequest,
    principal: Principal,
    consumer: list[dict[str, Any]],
    response_id: str,
    created: int,
) -> EventStream:
    cancel = threading.Event()
    session = await anyio.to_thread.run_sync(lambda: platform.chat.stream(chat_request, principal, cancel.is_set))
    state = _StreamState(data, session, response_id, created)
    first = [
        state.event("response.created", response=state.snapshot("in_progress")),
        state.event("response.in_progress", response=state.snapshot("in_progress")),
    ]

    def closing() -> list[dict[str, Any]]:
        events, body = state.close()
        if data.store is not False:
            store(
                platform.engine, principal, body, chat_request, consumer, (session.request_id, session.conversation_id)
            )
        return events

    return EventStream(
        await open_events(
            session, cancel, first, state.on_delta, closing, done_marker=False, error_events=state.failed
        ),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "x-espalier-model-version": session.version.label,
        },
    )


class _StreamState:
    """The typed events of one streamed response, numbered, and the items they build."""

    def __init__(self, data: ResponsesRequest, session: Any, response_id: str, created: int):
        self.data, self.session = data, session
        self.response_id, self.created = response_id, created
        self.sequence = 0
        self.text = ""
        self.message_id: str | None = None
        self.items: list[dict[str, Any]] = []
        self.finish = "stop"
        self.error: dict[str, str] | None = None
        if session.sources is not None:
            self.items.append(_search_item(_last_user_text(session.request), session.sources))

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def snapshot(self, status: str) -> dict[str, Any]:
        tokens = (self.session.prompt_tokens, sum(self.session.tokens))
        return response_object(
            self.data,
            self.response_id,
            self.created,
            list(self.items),
            self.finish,
            tokens,
            self.session.version.label,
            status=status,
        )

    def _open_message(self) -> list[dict[str, Any]]:
        self.message_id = _new("msg")
        item = {"type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        index = len(self.items)
        return [
            self.event("response.output_item.added", output_index=index, item=item),
            self.event(
                "response.content_part.added", item_id=self.message_id, output_index=index, content_index=0, part=part
            ),
        ]

    def on_delta(self, delta: TokenDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if delta.finish_reason:
            self.finish = delta.finish_reason
        if delta.tool_calls:
            if delta.text:
                events += self._open_message() + self._text(delta.text) + self._close_message()
            for item in _call_items(delta.tool_calls):
                index = len(self.items)
                self.items.append(item)
                events += [
                    self.event(
                        "response.output_item.added",
                        output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""},
                    ),
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=item["arguments"],
                    ),
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=item["arguments"],
                    ),
                    self.event("response.output_item.done", output_index=index, item=item),
                ]
            return events
        if delta.text:
            if self.message_id is None:
                events += self._open_message()
            events += self._text(delta.text)
        return events

    def _text(self, text: str) -> list[dict[str, Any]]:
        self.text += text
        index = len(self.items)
        return [
            self.event(
                "response.output_text.delta",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        index = len(self.items)
        item = _message_item(self.text, self.session.sources, self.message_id)
        part = item["content"][0]
        self.items.append(item)
        message_id, self.message_id, text, self.text = self.message_id, None, self.text, ""
        return [
            self.event(
                "response.output_text.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done", item_id=message_id, output_index=index, content_index=0, part=part
            ),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def failed(self, message: str, code: str) -> list[dict[str, Any]]:
        """A failure after the first piece: OpenAI's ``error`` event, then ``response.failed``."""
        self.error = {"code": code, "message": message}
        body = self.snapshot("failed")
        body["error"] = self.error
        return [
            self.event("error", code=code, message=message, param=None),
            self.event("response.failed", response=body),
        ]

    def close(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if self.error is not None:  # response.failed was sent; what is stored says so
            body = self.snapshot("failed")
            body["error"] = self.error
            return [], body
        events: list[dict[str, Any]] = []
        if self.message_id is None and not any(i["type"] in ("message", "function_call") for i in self.items):
            events += self._open_message()  # an empty answer is still a message
        if self.message_id is not None:
            events += self._close_message()
        body = self.snapshot("")
        body["status"] = "incomplete" if body["incomplete_details"] else "completed"
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        events.append(self.event(kind, response=body))
        return events, body


@get(
    "/responses/{response_id:str}",
    opt=access("user"),
    sync_to_thread=True,
    summary="A stored response (this key's own)",
)
def get_response(request: Request, response_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    return load(request.app.state.platform.engine, response_id, principal).body


ROUTES = [create_response, get_response]
