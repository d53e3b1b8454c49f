"""Best-of-n serving: a model alias that samples n candidates from a base model and answers with
the one the current reward model prefers.

    espalier models add tips-bon --provider best-of-n --source smollm2-135m-instruct --option n=4

The alias re-reads the current reward model on every request, so a promotion takes effect at
once. Sampling at temperature 0 would give n identical candidates, so 0 is raised to 0.8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from espalier.core.infrastructure.contracts import ChatMessage, Generation, GenerationParams, ModelSpec, TokenDelta
from espalier.core.infrastructure.errors import InvalidInput, Unavailable
from espalier.core.sources.feedback.pairs import prompt_text

if TYPE_CHECKING:
    from espalier.core.platform import Platform

MAX_N = 16
ZERO_TEMPERATURE_STANDIN = 0.8


def _n(spec: ModelSpec) -> int:
    try:
        n = int(spec.options.get("n", 4))
    except (TypeError, ValueError):
        raise InvalidInput(f"option n must be a whole number (got {spec.options.get('n')!r})") from None
    if not 2 <= n <= MAX_N:
        raise InvalidInput(f"option n must be between 2 and {MAX_N} (got {n})")
    return n


class BestOfNProvider:
    name = "best-of-n"

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def validate(self, spec: ModelSpec) -> None:
        _n(spec)
        source, _ = self.platform.models.resolve(spec.source, None)  # NotFound names the models there are
        if source.provider == self.name:
            raise InvalidInput("a best-of-n alias must point at a model that samples, not at another alias")

    def load(self, spec: ModelSpec, *, cache_dir: str) -> BestOfNModel:
        return BestOfNModel(self.platform, spec.source, _n(spec))


class BestOfNModel:
    def __init__(self, platform: Platform, base: str, n: int):
        self.platform = platform
        self.base_name = base
        self.n = n
        self.base, _ = platform.models.load(base)
        self.context_window = self.base.context_window
        # Structured output: every candidate is decoded under the schema by the model it samples from.
        self.constrained_decoding = getattr(self.base, "constrained_decoding", False)
        self.reports_logprobs = getattr(self.base, "reports_logprobs", False)  # of the chosen candidate

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.base.count_tokens(messages)

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        record = self.platform.reward_models.current()
        if record is None:
            raise Unavailable(
                "this best-of-n model needs a trained reward model: submit a 'train:reward' job", code="no_reward_model"
            )
        scorer = self.platform.reward_models.scorer(record)
        prompt = prompt_text([{"role": m.role, "content": m.content} for m in messages])
        sampling = replace(params, n=self.n, temperature=params.temperature or ZERO_TEMPERATURE_STANDIN)
        answers = []
        for index in range(params.n):
            if params.seed is not None:
                sampling = replace(sampling, seed=params.seed + index)
            candidates = self.base.generate(messages, sampling, cancel)
            scores = scorer.score([prompt] * len(candidates), [c.text for c in candidates])
            answers.append(candidates[max(range(len(candidates)), key=scores.__getitem__)])
        return answers

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        # The choice needs every candidate complete: the chosen answer arrives as one piece.
        for index, answer in enumerate(self.generate(messages, params, cancel)):
            yield TokenDelta(
                index, answer.text, answer.finish_reason, answer.completion_tokens, logprobs=answer.logprobs
            )
