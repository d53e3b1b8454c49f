"""Chat and text completions: validate, expand templates, generate, and store exactly what was
shown (so feedback can point at it).

Everything here blocks (model calls, database writes); the API calls it off the event loop.
Streaming hands back a :class:`StreamSession` whose ``deltas()`` is consumed in a worker thread
and whose ``finish()`` stores what was actually delivered, also when the client went away.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from espalier.core.infrastructure.contracts import (
    ChatMessage,
    ChatModel,
    ChatRequest,
    ChatResult,
    CompletionEvent,
    Generation,
    GenerationParams,
    TokenDelta,
    TokenLogprob,
    ToolSetup,
)
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.interface.guardrails.policies import CheckContext, GuardrailService
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord, Conversation
from espalier.core.sources.models.service import ModelService, split_model_id
from espalier.core.sources.models.tables import ModelVersion
from espalier.core.sources.templates.service import TemplateService, render
from espalier.core.tools.structured import reply_schema, with_instructions
from espalier.core.tools.tool_calls import (
    RetrievedTextGuard,
    call_schema,
    calls_text,
    generic_messages,
    native_messages,
    read_tool_calls,
)

if TYPE_CHECKING:
    from espalier.core.tools.grounding import Grounder

log = logging.getLogger("espalier.chat")

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 500
MAX_STOP = 4
DEFAULT_MAX_TOKENS = 512


#: A chat model alias: the default model, grounded in the collections the request names (or every
#: collection the key may read).
RAG_ALIAS = "rag"


def new_request_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def validate_params(params: GenerationParams, *, auto_ok: bool = True) -> None:
    """Checks a consumer's sampling settings. ``max_tokens == 0`` means "fit the context"."""
    if not 0 <= params.temperature <= 2:
        raise InvalidInput(
            f"temperature must be between 0 and 2 (got {params.temperature})", code="invalid_temperature"
        )
    if not 0 < params.top_p <= 1:
        raise InvalidInput(f"top_p must be in (0, 1] (got {params.top_p})", code="invalid_top_p")
    if params.max_tokens < 0 or params.max_tokens == 0 and not auto_ok:
        raise InvalidInput(f"max_tokens must be at least 1 (got {params.max_tokens})", code="invalid_max_tokens")
    if not 1 <= params.n <= 16:
        raise InvalidInput(f"n must be between 1 and 16 (got {params.n})", code="invalid_n")
    if len(params.stop) > MAX_STOP or any(not stop for stop in params.stop):
        raise InvalidInput(f"stop takes at most {MAX_STOP} non-empty strings", code="invalid_stop")


class StreamSession:
    """One streamed request: iterate ``deltas()`` (blocking), then call ``finish()`` once."""

    def __init__(
        self,
        service: ChatService,
        request: ChatRequest,
        principal: Principal | None,
        model: ChatModel,
        version: ModelVersion,
        messages: list[ChatMessage],
        iterator: Iterator[TokenDelta],
        prompt_tokens: int,
        conversation_id: str,
        request_id: str | None = None,
    ):
        self.service = service
        self.request = request
        self.principal = principal
        self.model = model
        self.version = version
        self.messages = messages
        self.request_id = request_id or new_request_id(request.kind)
        self.conversation_id = conversation_id
        self.completion_ids = [f"cmp_{secrets.token_hex(10)}" for _ in range(request.params.n)]
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.texts = [""] * request.params.n
        self.tokens = [0] * request.params.n
        self.finish_reasons: list[str | None] = [None] * request.params.n
        self.tool_calls: list[list[dict[str, Any]] | None] = [None] * request.params.n
        self.sources: list[dict[str, Any]] | None = None
        self.flag_input: Callable[[], None] = lambda: None  # the input's flag-only guardrails, run at the end
        self._iterator = iterator
        self._started = time.perf_counter()

    def deltas(self) -> Iterator[TokenDelta]:
        for delta in self._iterator:
            if delta.text:
                self.texts[delta.index] += delta.text
            if delta.tokens is not None:
                self.tokens[delta.index] = delta.tokens
            elif delta.text:
                self.tokens[delta.index] += 1
            if delta.finish_reason:
                self.finish_reasons[delta.index] = delta.finish_reason
            if delta.tool_calls:
                self.tool_calls[delta.index] = delta.tool_calls
            yield delta

    def finish(self) -> ChatResult:
        generations = [
            Generation(text, reason or "cancelled", self.prompt_tokens, tokens, calls)  # type: ignore[arg-type]
            for text, reason, tokens, calls in zip(
                self.texts, self.finish_reasons, self.tokens, self.tool_calls, strict=True
            )
        ]
        status = "cancelled" if any(reason is None or reason == "cancelled" for reason in self.finish_reasons) else "ok"
        try:
            result = self.service._store(
                self.request,
                self.principal,
                self.version,
                self.messages,
                generations,
                self.request_id,
                self.completion_ids,
                self.conversation_id,
                self.created,
                self._started,
                status,
            )
        finally:
            self.flag_input()
        result.sources = self.sources
        return result


def _check_capabilities(request: ChatRequest, model: ChatModel) -> None:
    """Refuse what the model cannot do rather than answer without it: structured output from a
    model that cannot keep its decoding to a schema (``constrained_decoding``), logprobs from one
    that does not report them (``reports_logprobs``)."""
    if request.response_format is not None:
        if request.kind != "chat":
            raise InvalidInput("response_format is for chat completions", details={"param": "response_format"})
        if not getattr(model, "constrained_decoding", False):
            raise InvalidInput(
                f"'response_format' is not supported by model '{request.model}': it cannot keep its decoding "
                "to a JSON Schema (the local transformers models can)",
                code="unsupported_parameter",
                details={"param": "response_format"},
            )
    if request.params.logprobs is not None and not getattr(model, "reports_logprobs", False):
        raise InvalidInput(
            f"'logprobs' is not supported by model '{request.model}': it does not report its tokens' "
            "probabilities (the local transformers models do)",
            code="unsupported_parameter",
            details={"param": "logprobs"},
        )


class ChatService:
    def __init__(
        self,
        engine: Engine,
        models: ModelService,
        templates: TemplateService,
        grounder: Grounder | None = None,
        default_model: str | None = None,
        guardrails: GuardrailService | None = None,
        announce: Callable[[str, object], None] | None = None,
    ):
        self.engine = engine
        self.models = models
        self.templates = templates
        self.grounder = grounder
        self.default_model = default_model
        self.guardrails = guardrails
        self.announce = announce or (lambda hook, event: None)  # on_completion, once stored

    def _load(
        self, request: ChatRequest, principal: Principal | None, messages: list[ChatMessage]
    ) -> tuple[ChatModel, ModelVersion, list[ChatMessage], list[dict[str, Any]] | None]:
        """Loads the model; for grounded requests (``collections`` or the ``rag`` alias) quotes sources."""
        collections = request.collections
        grounded = collections is not None
        if request.retriever is not None and not grounded and request.model != RAG_ALIAS:
            raise InvalidInput(
                "espalier.retriever needs espalier.collections (or the 'rag' model)",
                details={"param": "espalier.retriever"},
            )
        if request.model == RAG_ALIAS:
            if self.grounder is None or self.default_model is None:
                raise InvalidInput("the 'rag' model needs the retrieval service")
            request.model = self.default_model
            grounded = True  # no collections named: the grounder picks what the key may read
        name, named = split_model_id(request.model)
        if named is not None:
            if request.version is not None and request.version != named:
                raise InvalidInput(
                    f"model '{request.model}' names version '{named}' but espalier.version is "
                    f"'{request.version}': give one",
                    details={"param": "model"},
                )
            request.model, request.version = name, named
        model, version = self.models.load(request.model, request.version)
        if not grounded:
            return model, version, self._tool_prompt(request, model, messages), None
        if request.kind != "chat":
            raise InvalidInput("grounded answers are for chat completions", details={"param": "espalier.collections"})
        if self.grounder is None:
            raise InvalidInput("retrieval is not available on this server")
        messages, sources = self.grounder.ground(messages, collections, principal, model, retriever=request.retriever)
        return model, version, self._tool_prompt(request, model, messages), sources

    @staticmethod
    def _tool_prompt(request: ChatRequest, model: ChatModel, messages: list[ChatMessage]) -> list[ChatMessage]:
        """Function definitions and earlier calls and results, in the model's format or the generic
        one; and for structured output, the schema stated in the prompt and kept by the decoder."""
        _check_capabilities(request, model)
        fmt = request.response_format
        if fmt is not None:
            messages = with_instructions(messages, fmt)
        setup = request.tools
        if request.kind != "chat" or (setup is None and not any(m.tool_calls or m.role == "tool" for m in messages)):
            if fmt is not None:
                request.params.json_schema = fmt.schema
            return messages
        call = call_schema(setup) if setup is not None and setup.active else None
        if fmt is not None:
            request.params.json_schema = reply_schema(fmt, call, setup)
        elif call is not None:
            request.params.json_schema = call
        if getattr(model, "native_tools", False):
            if setup is not None and setup.active:
                request.params.tools = [tool.definition() for tool in setup.tools]
            return native_messages(messages, setup)
        return generic_messages(messages, setup)

    @staticmethod
    def _calls(
        setup: ToolSetup, guard: RetrievedTextGuard, text: str, finish_reason: str | None, request_id: str
    ) -> tuple[str | None, list[dict[str, Any]]]:
        if finish_reason not in ("stop", "length"):
            return text, []
        content, calls = read_tool_calls(text, setup)
        refusal = guard.refusal(calls) if calls else None
        if refusal:
            log.warning("request %s: tool call not returned: %s", request_id, refusal)
            return text, []
        return content, calls

    def _read_calls(
        self, request: ChatRequest, generations: list[Generation], guard: RetrievedTextGuard | None, request_id: str
    ) -> list[Generation]:
        """Replies that are valid function calls become ``tool_calls``; anything else stays content."""
        setup = request.tools
        if setup is None or not setup.active or guard is None:
            return generations
        out = []
        for generation in generations:
            content, calls = self._calls(setup, guard, generation.text, generation.finish_reason, request_id)
            if calls:
                generation = replace(generation, text=content or "", finish_reason="tool_calls", tool_calls=calls)
            out.append(generation)
        return out

    def _read_streamed_calls(
        self, request: ChatRequest, deltas: Iterator[TokenDelta], guard: RetrievedTextGuard, request_id: str
    ) -> Iterator[TokenDelta]:
        """With tools on, each candidate's text is held until it ends: only then is it known whether
        it is a function call (sent as OpenAI's ``tool_calls`` delta) or content (sent whole)."""
        setup = request.tools
        assert setup is not None
        held: dict[int, str] = {}
        scored: dict[int, list[TokenLogprob]] = {}
        for delta in deltas:
            held[delta.index] = held.get(delta.index, "") + delta.text
            if delta.logprobs is not None:
                scored.setdefault(delta.index, []).extend(delta.logprobs)
            if delta.finish_reason is None:
                continue
            text = held.pop(delta.index)
            logprobs = scored.pop(delta.index, None)
            content, calls = self._calls(setup, guard, text, delta.finish_reason, request_id)
            if calls:
                yield TokenDelta(delta.index, content or "", "tool_calls", delta.tokens, calls, logprobs)
            else:
                yield TokenDelta(delta.index, text, delta.finish_reason, delta.tokens, logprobs=logprobs)

    def _check_input(
        self, request: ChatRequest, messages: list[ChatMessage], context: CheckContext
    ) -> tuple[list[ChatMessage], Callable[[], None]]:
        """Guardrails on the way in, before any model is loaded or called (a block raises).

        Only the policies that can change what the model sees (block, redact) run here; the
        returned callable runs the flag-only ones on what was received, once the model has
        answered, so they cost the first token nothing. Call it whatever the outcome.
        """
        if self.guardrails is None:
            return messages, lambda: None
        guardrails, received, prompt = self.guardrails, messages, request.prompt or ""

        def flag_input() -> None:
            if request.kind == "completion":
                guardrails.check_prompt(prompt, context, "flags")
            else:
                guardrails.check_input(received, context, "flags")

        if request.kind == "completion":
            request.prompt = guardrails.check_prompt(prompt, context, "before")
            return messages, flag_input
        return guardrails.check_input(messages, context, "before"), flag_input

    # Preparation -------------------------------------------------------------------------------
    def _prepare(self, request: ChatRequest, principal: Principal | None) -> tuple[list[ChatMessage], str]:
        """Checked messages and the conversation id; the caller claims the conversation
        (:meth:`_claim_conversation`) when it suits it. Prompt beginnings the model computes are
        reused for ``principal``'s requests alone (``cache_scope``)."""
        validate_params(request.params)
        request.params.cache_scope = principal.key_id if principal else None
        conversation_id = _conversation_id(request.conversation_id)
        if request.kind == "completion":
            if request.prompt is None or not request.prompt.strip():
                raise InvalidInput("prompt must be a non-empty string", code="invalid_prompt")
            return [], conversation_id
        messages = list(request.messages)
        if request.template:
            template = self.templates.get(request.template)
            variables = dict(request.variables or {})
            history = messages
            if "input" in template.variables and "input" not in variables:
                if not messages or messages[-1].role != "user":
                    raise InvalidInput(
                        f"template '{template.name}' fills 'input' from the last user message; "
                        f"send one or pass variables.input"
                    )
                variables["input"] = messages[-1].content
                history = messages[:-1]
            messages = render(template, variables, history)
        if not messages:
            raise InvalidInput("messages must contain at least one message", code="empty_messages")
        if len(messages) > MAX_MESSAGES:
            raise InvalidInput(f"at most {MAX_MESSAGES} messages per request")
        for number, message in enumerate(messages):
            if message.role not in ROLES:
                raise InvalidInput(f"messages[{number}].role must be one of {', '.join(ROLES)}")
        return messages, conversation_id

    @staticmethod
    def _fit_max_tokens(model: ChatModel, request: ChatRequest, messages: list[ChatMessage]) -> None:
        if request.params.max_tokens:
            return
        if request.kind == "completion":
            used = _text_model(model, request.model).count_text_tokens(request.prompt)
        else:
            used = _count(model, messages, request.params)
        room = model.context_window - used
        if room < 1:
            raise InvalidInput(
                f"This model's context window is {model.context_window} tokens and the prompt alone has {used}; "
                "shorten the messages.",
                code="context_length_exceeded",
                details={"context_window": model.context_window, "prompt_tokens": used},
            )
        request.params.max_tokens = min(DEFAULT_MAX_TOKENS, room)

    def prompt_logprobs(
        self, request: ChatRequest, principal: Principal | None, top: int = 0
    ) -> tuple[ModelVersion, list[TokenLogprob]]:
        """Score a plain-text prompt token by token, generating nothing (``/v1/completions`` with
        ``echo`` and ``logprobs``: evaluation harnesses score given text by its log-likelihood).
        The input guardrails run as for a completion; nothing is stored, as nothing was answered."""
        messages, _ = self._prepare(request, principal)
        context = CheckContext(request.kind, new_request_id(request.kind), principal)
        messages, flag_input = self._check_input(request, messages, context)
        try:
            model, version, _, _ = self._load(request, principal, messages)
            scorer = getattr(_text_model(model, request.model), "prompt_logprobs", None)
            if scorer is None:
                raise InvalidInput(
                    f"'echo' with 'logprobs' is not supported by model '{request.model}': it does not score prompts",
                    code="unsupported_parameter",
                    details={"param": "echo"},
                )
            return version, scorer(request.prompt, top)
        finally:
            flag_input()

    def _claim_conversation(self, request: ChatRequest, conversation_id: str, principal: Principal | None) -> None:
        """Open the consumer's conversation for ``principal``, or check that it is theirs (NotFound
        if not). A conversation id the server just made up is nobody's yet: :meth:`_store` opens it
        with the request, and nothing is written before the answer."""
        if request.conversation_id is None:
            return
        owner = principal.key_id if principal else None
        with session_scope(self.engine) as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                session.add(Conversation(id=conversation_id, owner_key_id=owner))
            elif not _may_write(conversation, principal):
                raise NotFound(f"no conversation '{conversation_id}' for this key")

    # Generation --------------------------------------------------------------------------------
    def complete(
        self, request: ChatRequest, principal: Principal | None, cancel: Callable[[], bool] | None = None
    ) -> ChatResult:
        messages, conversation_id = self._prepare(request, principal)
        self._claim_conversation(request, conversation_id, principal)
        request_id = new_request_id(request.kind)
        context = CheckContext(request.kind, request_id, principal)
        messages, flag_input = self._check_input(request, messages, context)
        started = time.perf_counter()
        consumer = messages
        try:
            model, version, messages, sources = self._load(request, principal, messages)
            self._fit_max_tokens(model, request, messages)
            if request.kind == "completion":
                generations = _text_model(model, request.model).generate_text(request.prompt, request.params, cancel)
            else:
                generations = model.generate(messages, request.params, cancel)
        finally:
            flag_input()
        if self.guardrails is not None:
            generations = self.guardrails.check_output(generations, context)
        guard = RetrievedTextGuard(request.tools, consumer, sources) if request.tools else None
        generations = self._read_calls(request, generations, guard, request_id)
        result = self._store(
            request,
            principal,
            version,
            messages,
            generations,
            request_id,
            [f"cmp_{secrets.token_hex(10)}" for _ in generations],
            conversation_id,
            int(time.time()),
            started,
            "ok",
        )
        result.sources = sources
        return result

    def stream(
        self, request: ChatRequest, principal: Principal | None, cancel: Callable[[], bool] | None = None
    ) -> StreamSession:
        messages, conversation_id = self._prepare(request, principal)
        request_id = new_request_id(request.kind)
        context = CheckContext(request.kind, request_id, principal)
        messages, flag_input = self._check_input(request, messages, context)
        consumer = messages
        iterator: Iterator[TokenDelta] | None = None
        try:
            model, version, messages, sources = self._load(request, principal, messages)
            self._fit_max_tokens(model, request, messages)
            if request.kind == "completion":
                text_model = _text_model(model, request.model)
                iterator = text_model.stream_text(request.prompt, request.params, cancel)
                count = lambda: text_model.count_text_tokens(request.prompt)  # noqa: E731
            else:
                iterator = model.stream(messages, request.params, cancel)  # validates before returning
                count = lambda: _count(model, messages, request.params)  # noqa: E731
            # Claimed while the first token is on its way, so its database write does not delay
            # that token; someone else's conversation still ends the request (and its generation).
            self._claim_conversation(request, conversation_id, principal)
        except BaseException:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            flag_input()
            raise
        # A model that already rendered the prompt says how long it was (no second rendering
        # while the first token is on its way).
        prompt_tokens = getattr(iterator, "prompt_tokens", None)
        if prompt_tokens is None:
            prompt_tokens = count()
        if self.guardrails is not None:
            iterator = self.guardrails.watch_stream(iterator, request.params.n, context)
        if request.tools is not None and request.tools.active:
            guard = RetrievedTextGuard(request.tools, consumer, sources)
            iterator = self._read_streamed_calls(request, iterator, guard, request_id)
        session = StreamSession(
            self, request, principal, model, version, messages, iterator, prompt_tokens, conversation_id, request_id
        )
        session.sources = sources
        session.flag_input = flag_input
        return session

    def _store(
        self,
        request: ChatRequest,
        principal: Principal | None,
        version: ModelVersion,
        messages: Sequence[ChatMessage],
        generations: list[Generation],
        request_id: str,
        completion_ids: list[str],
        conversation_id: str,
        created: int,
        started: float,
        status: str,
    ) -> ChatResult:
        prompt_tokens = generations[0].prompt_tokens if generations else 0
        completion_tokens = sum(g.completion_tokens for g in generations)
        params = request.params
        stored_messages = (
            [
                {
                    "role": m.role,
                    "content": m.content,
                    **({"tool_calls": list(m.tool_calls)} if m.tool_calls else {}),
                    **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {}),
                }
                for m in messages
            ]
            if request.kind == "chat"
            else [{"role": "prompt", "content": request.prompt}]
        )
        with session_scope(self.engine) as session:
            owner = principal.key_id if principal else None
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:  # one the server opened for this request (see _claim_conversation)
                conversation = Conversation(id=conversation_id, owner_key_id=owner)
            elif not _may_write(conversation, principal):
                # a server-made id someone else claimed while this answer was being written
                raise NotFound(f"no conversation '{conversation_id}' for this key")
            conversation.updated_at = utcnow()
            session.add(conversation)
            session.flush()
            session.add(
                ChatRequestRecord(
                    id=request_id,
                    conversation_id=conversation_id,
                    owner_key_id=owner,
                    kind=request.kind,
                    model=request.model,
                    model_version=version.id,
                    messages=stored_messages,
                    params={
                        "temperature": params.temperature,
                        "top_p": params.top_p,
                        "max_tokens": params.max_tokens,
                        "n": params.n,
                        "stop": list(params.stop),
                        "seed": params.seed,
                    },
                    template=request.template,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=round((time.perf_counter() - started) * 1000, 2),
                    status=status,
                )
            )
            session.flush()
            for index, (generation, completion_id) in enumerate(zip(generations, completion_ids, strict=True)):
                session.add(
                    CompletionRecord(
                        id=completion_id,
                        request_id=request_id,
                        index=index,
                        text=calls_text(generation.text, generation.tool_calls)
                        if generation.tool_calls
                        else generation.text,
                        finish_reason=generation.finish_reason,
                        completion_tokens=generation.completion_tokens,
                    )
                )
        self.announce(
            "on_completion",
            CompletionEvent(
                request_id=request_id,
                kind=request.kind,
                conversation_id=conversation_id,
                model=request.model,
                model_version=version.label,
                api_key_id=principal.key_id if principal else None,
                completion_ids=tuple(completion_ids),
                finish_reasons=tuple(g.finish_reason for g in generations),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                status=status,
            ),
        )
        return ChatResult(
            request_id=request_id,
            conversation_id=conversation_id,
            created=created,
            model=served_model_id(request, version),
            model_version=version.label,
            generations=generations,
            completion_ids=completion_ids,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            template=request.template,
        )


def served_model_id(request: ChatRequest, version: ModelVersion) -> str:
    """The model id a response names: ``name@label`` when the request chose a version (by id or by
    label), else the bare name it asked for (the serving version, named in ``model_version``)."""
    return request.model if request.version is None else f"{request.model}@{version.label}"


def _count(model: ChatModel, messages: list[ChatMessage], params: GenerationParams) -> int:
    """Prompt tokens, with the function definitions a native-tools template adds."""
    if params.tools:
        return model.count_tokens(messages, tools=params.tools)  # type: ignore[call-arg]
    return model.count_tokens(messages)


def _text_model(model: ChatModel, name: str) -> Any:
    if not all(hasattr(model, attr) for attr in ("generate_text", "stream_text", "count_text_tokens")):
        raise InvalidInput(f"model '{name}' serves chat only; use /v1/chat/completions", code="unsupported_model")
    return model


class ConversationService:
    """Reading what was asked and shown. A key sees its own conversations; admins see all."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def list(self, principal: Principal, *, limit: int = 50, everyone: bool = False) -> list[Conversation]:
        from sqlmodel import select

        with session_scope(self.engine) as session:
            query = select(Conversation).order_by(Conversation.updated_at.desc()).limit(limit)
            if not (everyone and principal.has_role("admin")):
                query = query.where(Conversation.owner_key_id == principal.key_id)
            return list(session.exec(query))

    def get(self, conversation_id: str, principal: Principal) -> dict[str, Any]:
        from sqlmodel import select

        with session_scope(self.engine) as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or (
                conversation.owner_key_id != principal.key_id and not principal.has_role("admin")
            ):
                raise NotFound(f"no conversation '{conversation_id}' for this key")
            requests = list(
                session.exec(
                    select(ChatRequestRecord)
                    .where(ChatRequestRecord.conversation_id == conversation_id)
                    .order_by(ChatRequestRecord.created_at)
                )
            )
            completions = list(
                session.exec(
                    select(CompletionRecord)
                    .where(CompletionRecord.request_id.in_([r.id for r in requests]))
                    .order_by(CompletionRecord.index)
                )
            )
        by_request: dict[str, list[CompletionRecord]] = {}
        for completion in completions:
            by_request.setdefault(completion.request_id, []).append(completion)
        return {
            "id": conversation.id,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "requests": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "model": r.model,
                    "model_version": r.model_version,
                    "messages": r.messages,
                    "params": r.params,
                    "template": r.template,
                    "status": r.status,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "latency_ms": r.latency_ms,
                    "created_at": r.created_at,
                    "completions": [
                        {
                            "id": c.id,
                            "index": c.index,
                            "text": c.text,
                            "finish_reason": c.finish_reason,
                            "completion_tokens": c.completion_tokens,
                        }
                        for c in by_request.get(r.id, [])
                    ],
                }
                for r in requests
            ],
        }


def _may_write(conversation: Conversation, principal: Principal | None) -> bool:
    """May ``principal`` add requests to ``conversation``? Its owner may, and admins."""
    owner = principal.key_id if principal else None
    return conversation.owner_key_id == owner or bool(principal and principal.has_role("admin"))


def _conversation_id(conversation_id: str | None) -> str:
    """The consumer's conversation id, checked, or a new one."""
    if conversation_id is None:
        return f"conv_{secrets.token_hex(10)}"
    if (
        not (1 <= len(conversation_id) <= 80)
        or not conversation_id.replace("-", "").replace("_", "").replace(".", "").isalnum()
    ):
        raise InvalidInput("conversation_id must be 1-80 letters, digits, '-', '_' or '.'")
    return conversation_id
