"""A loaded transformers causal LM served as a :class:`~espalier.core.contracts.ChatModel`.

Generation is a plain decoding loop over the model's KV cache, run in the caller's thread: no
helper thread to leak, ``cancel`` is polled between tokens, and a consumer that stops reading a
stream stops the work. The ``n`` candidates of a request share one prompt, so the prompt is
computed once and its cache repeated ``n`` times; the candidates then decode as one batch.

Concurrency: each forward pass holds the model's lock, so concurrent requests on one model take
turns token by token (each keeps its own cache) instead of oversubscribing the CPU cores.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from espalier.core.contracts import ChatMessage, Generation, GenerationParams, ModelSpec, TokenDelta
from espalier.core.errors import InvalidInput

from .constrain import JsonConstraint
from .loader import LoadedModel
from .text import CandidateText

MAX_CANDIDATES = 16
NUCLEUS_SEARCH = 512


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
        # for the others the host writes them into the messages (core/tool_calls.py).
        template = getattr(self.tokenizer, "chat_template", None)
        self.native_tools = isinstance(template, str) and "tools" in template and "tool_call" in template
        # transformers 5.x renamed ``past_key_values`` to ``cache``; older versions know only the former.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        # Only the last position's logits are needed from the prompt.
        self._prefill_args = {"logits_to_keep": 1} if "logits_to_keep" in forward_args else {}

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
        candidates = self._check(ids, params)
        for _ in self._decode(ids, params, candidates, cancel):
            pass
        return [
            Generation(candidate.text, candidate.finish_reason or "cancelled", len(ids), candidate.completion_tokens)
            for candidate in candidates
        ]

    def stream_text(
        self, prompt: str, params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        ids = self.text_prompt_ids(prompt)
        candidates = self._check(ids, params)
        return self._decode(ids, params, candidates, cancel)

    # Generation --------------------------------------------------------------------------------

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        prompt = self.prompt_ids(messages, params.tools)
        candidates = self._check(prompt, params)
        for _ in self._decode(prompt, params, candidates, cancel):
            pass
        return [
            Generation(
                text=candidate.text,
                finish_reason=candidate.finish_reason or "cancelled",
                prompt_tokens=len(prompt),
                completion_tokens=candidate.completion_tokens,
            )
            for candidate in candidates
        ]

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        # Checked before the generator starts, so a bad request fails when stream() is called.
        prompt = self.prompt_ids(messages, params.tools)
        candidates = self._check(prompt, params)
        return self._decode(prompt, params, candidates, cancel)

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
        return [CandidateText(self.tokenizer, params.stop) for _ in range(params.n)]

    def _decode(
        self,
        prompt: list[int],
        params: GenerationParams,
        candidates: list[CandidateText],
        cancel: Callable[[], bool] | None,
    ) -> Iterator[TokenDelta]:
        """Yield each candidate's new text as tokens arrive; the last delta of each carries its
        ``finish_reason``. Deltas with no text are only yielded when they finish a candidate."""
        n = len(candidates)
        sampler = _Sampler(params, self.model.device)
        if params.json_schema is not None:
            sampler.constraint = JsonConstraint(self.tokenizer, params.json_schema, n, self.model.config.vocab_size)
        # Inference mode is entered per step, never across a ``yield``: it is thread-local state
        # and must not leak into the consumer's code (or into another thread that resumes us).
        if cancel is not None and cancel():
            yield from _finish_all(candidates, "cancelled")
            return
        next_tokens, cache = self._prefill(prompt, n, sampler)
        for step in range(params.max_tokens):
            if step:
                if cancel is not None and cancel():
                    yield from _finish_all(candidates, "cancelled")
                    return
                next_tokens = self._next(next_tokens, cache, sampler)
            for index, token in enumerate(next_tokens.tolist()):
                candidate = candidates[index]
                if candidate.done:
                    continue
                if token in self.eos_token_ids:
                    candidate.completion_tokens += 1
                    yield TokenDelta(index, candidate.finish("stop"), "stop", candidate.completion_tokens)
                    continue
                text = candidate.push(token)
                if sampler.constraint is not None and sampler.constraint.advance(index, token) and not candidate.done:
                    text += candidate.finish("stop")  # the JSON document is complete
                if candidate.done:
                    yield TokenDelta(index, text, candidate.finish_reason, candidate.completion_tokens)
                elif text:
                    yield TokenDelta(index, text, None, candidate.completion_tokens)
            if all(candidate.done for candidate in candidates):
                return
        yield from _finish_all(candidates, "length")

    def _prefill(self, prompt: list[int], n: int, sampler: _Sampler):
        """Run the prompt once and sample each candidate's first token; the cache is repeated for
        the ``n`` candidates afterwards."""
        with torch.inference_mode():
            input_ids = torch.tensor([prompt], dtype=torch.long, device=self.model.device)
            with self.loaded.lock:
                output = self.model(input_ids=input_ids, use_cache=True, **self._prefill_args)
            cache = getattr(output, self._cache_arg)
            logits = output.logits[:, -1, :]
            if n > 1:
                cache.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
            return sampler(logits), cache

    def _next(self, tokens: torch.Tensor, cache, sampler: _Sampler) -> torch.Tensor:
        with torch.inference_mode():
            with self.loaded.lock:
                output = self.model(input_ids=tokens[:, None], use_cache=True, **{self._cache_arg: cache})
            return sampler(output.logits[:, -1, :])


def _finish_all(candidates: list[CandidateText], reason: str) -> Iterator[TokenDelta]:
    for index, candidate in enumerate(candidates):
        if not candidate.done:
            tail = candidate.finish(reason)
            yield TokenDelta(index, tail, candidate.finish_reason, candidate.completion_tokens)


class _Sampler:
    """Picks the next token of each row: greedy at temperature 0, else temperature and top-p
    sampling from a generator seeded by ``params.seed`` (the same seed gives the same text)."""

    def __init__(self, params: GenerationParams, device: torch.device):
        self.constraint: JsonConstraint | None = None
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.generator = None
        if self.temperature > 0:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        if self.generator is None:
            return logits.argmax(dim=-1)
        probs = (logits.float() / self.temperature).softmax(dim=-1)
        if self.top_p >= 1.0:
            return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(-1)
        # The nucleus nearly always lies among the most likely few hundred tokens: look there first
        # and sort the whole vocabulary only when those do not reach top_p.
        top, order = probs.topk(min(NUCLEUS_SEARCH, probs.shape[-1]), dim=-1)
        if bool((top.sum(dim=-1) < self.top_p).any()):
            top, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set of tokens whose probability reaches top_p (always the first).
        top = top.masked_fill(top.cumsum(dim=-1) - top > self.top_p, 0.0)
        picked = torch.multinomial(top, num_samples=1, generator=self.generator)
        return order.gather(-1, picked).squeeze(-1)


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
