"""A loaded transformers causal LM served as a :class:`~espalier.core.contracts.ChatModel`.

This class renders and checks requests in the caller's thread; the forward passes run on the
process's generation engine (:mod:`.engine`), one thread that batches concurrent requests. The
caller reads its pieces of text from a queue; ``cancel`` is polled between tokens, and a consumer
that stops reading a stream (or drops it) stops the work at the next step. The ``n`` candidates
of a request share one prompt pass and decode as rows of the same batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence

from espalier.core.contracts import ChatMessage, Generation, GenerationParams, ModelSpec, TokenDelta
from espalier.core.errors import InvalidInput

from .engine import ForwardSpec, get_engine
from .loader import LoadedModel
from .text import CandidateText

MAX_CANDIDATES = 16


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

    def prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of ``messages`` rendered by the model's chat template, ready for a reply."""
        if not messages:
            raise InvalidInput("At least one message is needed.")
        chat = [{"role": message.role, "content": message.content} for message in messages]
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.prompt_ids(messages))

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
        prompt = self.prompt_ids(messages)
        return _collect(self._submit(prompt, params, cancel), params.n, len(prompt))

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        """Yield each candidate's new text as tokens arrive; the last delta of each carries its
        ``finish_reason``. The request is checked and queued before this returns, so a bad
        request fails here and the first token is being computed while the caller goes on."""
        return self._submit(self.prompt_ids(messages), params, cancel)

    def _submit(self, prompt: list[int], params: GenerationParams, cancel: Callable[[], bool] | None) -> Iterator[TokenDelta]:
        candidates = self._check(prompt, params)
        sequence = get_engine().submit(self.loaded, self._forward, prompt, params, candidates, self.eos_token_ids, cancel)
        return sequence.deltas()

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


def _collect(deltas: Iterator[TokenDelta], n: int, prompt_tokens: int) -> list[Generation]:
    texts, reasons, tokens = [""] * n, [None] * n, [0] * n
    for delta in deltas:
        texts[delta.index] += delta.text
        if delta.tokens is not None:
            tokens[delta.index] = delta.tokens
        if delta.finish_reason:
            reasons[delta.index] = delta.finish_reason
    return [
        Generation(text, reason or "cancelled", prompt_tokens, count)
        for text, reason, count in zip(texts, reasons, tokens, strict=True)
    ]


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(item) for item in value)
    return frozenset(ids)
