"""A loaded transformers causal LM served as a :class:`~espalier.core.infrastructure.contracts.ChatModel`.

This class renders and checks requests in the caller's thread; the forward passes run on the
process's generation engine (:mod:`.engine`), one thread that batches concurrent requests. The
caller reads its pieces of text from a queue; ``cancel`` is polled between tokens, and a consumer
that stops reading a stream (or drops it) stops the work at the next step. The ``n`` candidates
of a request share one prompt pass and decode as rows of the same batch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from espalier.core.infrastructure.contracts import (
    ChatMessage,
    Generation,
    GenerationParams,
    ModelSpec,
    TokenDelta,
    TokenLogprob,
)
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.transformers_models.constrain import JsonConstraint
from espalier.plugins.transformers_models.engine import ForwardSpec, get_engine
from espalier.plugins.transformers_models.loader import LoadedModel
from espalier.plugins.transformers_models.packing import packed_layers
from espalier.plugins.transformers_models.text import MAX_TOP_LOGPROBS, CandidateText, TokenPieces

MAX_CANDIDATES = 16
MAX_SCORED_TOKENS = 4096  # echo with logprobs: prompt tokens scored in one request
SCORE_BLOCK = 256  # positions projected onto the vocabulary at once when scoring a prompt


class TransformersChatModel:
    """One registered model. Several of these may share the same :class:`LoadedModel` weights."""

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, context_window: int | None = None):
        self.spec = spec
        self.name = spec.name
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.dtype = loaded.dtype
        config_window = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.context_window: int = int(context_window or config_window)
        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)
        # Templates that render ``tools`` themselves (Qwen2.5, Llama 3.1...) get the definitions;
        # for the others the host writes them into the messages (core/tools/tool_calls.py).
        template = getattr(self.tokenizer, "chat_template", None)
        self.native_tools = isinstance(template, str) and "tools" in template and "tool_call" in template
        self.constrained_decoding = True  # params.json_schema is enforced token by token (constrain.py)
        self.pieces = TokenPieces(self.tokenizer)  # token texts and bytes, for logprobs
        self.reports_logprobs = True  # params.logprobs: each token scored by the engine (engine.py)
        # transformers 5.x renamed ``past_key_values`` to ``cache``; older versions know only the former.
        forward_args = inspect.signature(self.model.forward).parameters
        self._forward = ForwardSpec(
            cache_arg="cache" if "cache" in forward_args else "past_key_values",
            # Only the last position's logits are needed from the prompt.
            prefill_args={"logits_to_keep": 1} if "logits_to_keep" in forward_args else {},
            batched=loaded.row_attention,
        )

    def __repr__(self) -> str:
        return f"TransformersChatModel(name={self.name!r}, dtype={self.dtype}, context_window={self.context_window})"

    # Prompt ------------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()) -> list[int]:
        """Token ids of ``messages`` rendered by the model's chat template, ready for a reply."""
        if not messages:
            raise InvalidInput("At least one message is needed.")
        chat = [_template_message(message) for message in messages]
        extra = {"tools": [dict(tool) for tool in tools]} if tools and self.native_tools else {}
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **extra)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()) -> int:
        return len(self.prompt_ids(messages, tools))

    # Plain prompts (``/v1/completions``): the text as given, no chat template ------------------

    def text_prompt_ids(self, prompt: str) -> list[int]:
        if not prompt:
            raise InvalidInput("The prompt is empty.")
        return self.tokenizer(prompt)["input_ids"]

    def count_text_tokens(self, prompt: str) -> int:
        return len(self.text_prompt_ids(prompt))

    def generate_text(
        self, prompt: str, params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        ids = self.text_prompt_ids(prompt)
        return _collect(self._submit(ids, params, cancel), params.n, len(ids))

    def stream_text(
        self, prompt: str, params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        return self._submit(self.text_prompt_ids(prompt), params, cancel)

    # Generation --------------------------------------------------------------------------------

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        prompt = self.prompt_ids(messages, params.tools)
        return _collect(self._submit(prompt, params, cancel), params.n, len(prompt))

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        """Yield each candidate's new text as tokens arrive; the last delta of each carries its
        ``finish_reason``. The request is checked and queued before this returns, so a bad
        request fails here and the first token is being computed while the caller goes on."""
        return self._submit(self.prompt_ids(messages, params.tools), params, cancel)

    def _submit(
        self, prompt: list[int], params: GenerationParams, cancel: Callable[[], bool] | None
    ) -> Iterator[TokenDelta]:
        candidates = self._check(prompt, params)
        constraint = None
        if params.json_schema is not None:  # tool calls: decoding kept to the function's JSON Schema
            constraint = JsonConstraint(
                self.tokenizer, params.json_schema, len(candidates), self.model.config.vocab_size
            )
        sequence = get_engine().submit(
            self.loaded, self._forward, prompt, params, candidates, self.eos_token_ids, cancel, constraint=constraint
        )
        return sequence.deltas()

    def serving_stats(self) -> dict[str, Any]:
        """How prompt passes of these weights run: reuse of earlier prompts (:mod:`.prefix`) and
        the linear layers on pre-packed weights (:mod:`.packing`)."""
        prefixes = self.loaded.prefixes
        cache = None
        if prefixes is not None:
            cache = {
                **prefixes.stats.as_dict(),
                "entries": len(prefixes),
                "bytes": prefixes.bytes,
                "capacity_bytes": prefixes.capacity_bytes,
            }
        return {"prefix_cache": cache, "packed_prefill_layers": packed_layers(self.model)}

    # Scoring -----------------------------------------------------------------------------------

    def completion_logprobs(self, messages: Sequence[ChatMessage], completions: Sequence[str]) -> list[list[float]]:
        """Log-probability of each token of each completion after ``messages`` (the chat template
        applied): what evaluation needs to estimate the KL between two versions on the same text."""
        prompt = self.prompt_ids(messages)
        results: list[list[float]] = []
        for completion in completions:
            ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
            if not ids:
                results.append([])
                continue
            full = (prompt + ids)[-self.context_window :]
            start = len(full) - len(ids)
            with torch.inference_mode():
                input_ids = torch.tensor([full], dtype=torch.long, device=self.model.device)
                with self.loaded.lock:
                    logits = self.model(input_ids=input_ids).logits[0].float()
            logprobs = logits[start - 1 : -1].log_softmax(dim=-1)
            picked = logprobs.gather(-1, input_ids[0, start:, None]).squeeze(-1)
            results.append(picked.tolist())
        return results

    def prompt_logprobs(self, prompt: str, top: int = 0) -> list[TokenLogprob]:
        """Each token of a plain-text ``prompt`` scored by the model given the tokens before it (the
        first has nothing before it: its ``logprob`` is None), with ``top`` alternatives: what ``echo`` with
        ``logprobs`` on ``/v1/completions`` returns, so that evaluation harnesses can score given
        text by its log-likelihood."""
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"top logprobs must be 0-{MAX_TOP_LOGPROBS} (got {top}).")
        ids = self.text_prompt_ids(prompt)
        if len(ids) > self.context_window:
            raise InvalidInput(
                f"This model's context window is {self.context_window} tokens; the prompt has {len(ids)}.",
                code="context_length_exceeded",
            )
        if len(ids) > MAX_SCORED_TOKENS:
            raise InvalidInput(
                f"echo with logprobs scores at most {MAX_SCORED_TOKENS} prompt tokens; this prompt has {len(ids)}",
                code="context_length_exceeded",
            )
        chosen: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
            with self.loaded.lock:
                hidden = self.model.model(input_ids=input_ids).last_hidden_state[0, :-1]
            # The vocabulary projection and its log-softmax a block of positions at a time: the
            # whole [positions x vocabulary] matrix in float32 would take gigabytes.
            for start in range(0, hidden.shape[0], SCORE_BLOCK):
                logprobs = self.model.lm_head(hidden[start : start + SCORE_BLOCK]).float().log_softmax(dim=-1)
                targets = input_ids[0, start + 1 : start + 1 + logprobs.shape[0], None]
                chosen.extend(logprobs.gather(-1, targets).squeeze(-1).tolist())
                if top:
                    values, indices = logprobs.topk(top, dim=-1)
                    tops.extend(
                        list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)
                    )
                else:
                    tops.extend([] for _ in range(logprobs.shape[0]))
        text, data = self.pieces.piece(ids[0])
        first = TokenLogprob(text, None, data)
        return [first, *(self.pieces.logprob(t, v, alt) for t, v, alt in zip(ids[1:], chosen, tops, strict=True))]

    def completion_kl(
        self, prompt: Sequence[ChatMessage] | str, completions: Sequence[str], reference: Any
    ) -> list[list[float]]:
        """For each token of each completion after ``prompt`` (messages, through the chat template;
        or plain text), the exact KL(this model || ``reference``) between their next-token
        distributions, in nats: what the evaluation reports as the KL from the reference. Never
        negative. ``reference`` is another model of this provider on the same tokenizer."""
        prompt_ids = self.text_prompt_ids(prompt) if isinstance(prompt, str) else self.prompt_ids(prompt)
        results: list[list[float]] = []
        for completion in completions:
            ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
            if not ids:
                results.append([])
                continue
            full = (prompt_ids + ids)[-self.context_window :]
            start = len(full) - len(ids)
            distributions = []
            for side in (self, reference):
                with torch.inference_mode():
                    input_ids = torch.tensor([full], dtype=torch.long, device=side.model.device)
                    with side.loaded.lock:
                        logits = side.model(input_ids=input_ids).logits[0, start - 1 : -1].float()
                distributions.append(logits.log_softmax(dim=-1))
            mine, ref = distributions
            results.append((mine.exp() * (mine - ref)).sum(dim=-1).clamp_min(0.0).tolist())
        return results

    def _check(self, prompt: list[int], params: GenerationParams) -> list[CandidateText]:
        if params.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1 (got {params.max_tokens}).")
        if not 1 <= params.n <= MAX_CANDIDATES:
            raise InvalidInput(f"n must be between 1 and {MAX_CANDIDATES} (got {params.n}).")
        if params.temperature < 0:
            raise InvalidInput(f"temperature must be 0 or more (got {params.temperature}).")
        if not 0 < params.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1] (got {params.top_p}).")
        total = len(prompt) + params.max_tokens
        if total > self.context_window:
            raise InvalidInput(
                f"This model's context window is {self.context_window} tokens, but the prompt has "
                f"{len(prompt)} tokens and max_tokens asks for {params.max_tokens} more ({total} in all). "
                "Shorten the messages or lower max_tokens.",
                code="context_length_exceeded",
                details={
                    "context_window": self.context_window,
                    "prompt_tokens": len(prompt),
                    "max_tokens": params.max_tokens,
                },
            )
        if params.logprobs is not None and not 0 <= params.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"top logprobs must be 0-{MAX_TOP_LOGPROBS} (got {params.logprobs}).")
        pieces = self.pieces if params.logprobs is not None else None
        return [CandidateText(self.tokenizer, params.stop, pieces) for _ in range(params.n)]


def _collect(deltas: Iterator[TokenDelta], n: int, prompt_tokens: int) -> list[Generation]:
    texts, reasons, tokens = [""] * n, [None] * n, [0] * n
    scored: list[list[TokenLogprob] | None] = [None] * n
    for delta in deltas:
        texts[delta.index] += delta.text
        if delta.tokens is not None:
            tokens[delta.index] = delta.tokens
        if delta.finish_reason:
            reasons[delta.index] = delta.finish_reason
        if delta.logprobs is not None:
            scored[delta.index] = (scored[delta.index] or []) + delta.logprobs
    return [
        Generation(text, reason or "cancelled", prompt_tokens, count, logprobs=logprobs)
        for text, reason, count, logprobs in zip(texts, reasons, tokens, scored, strict=True)
    ]


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: tool call arguments as objects, not JSON text."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            function = dict(call["function"])
            try:
                function["arguments"] = json.loads(function.get("arguments") or "{}")
            except ValueError:
                pass
            calls.append({**call, "function": function})
        out["tool_calls"] = calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(item) for item in value)
    return frozenset(ids)
