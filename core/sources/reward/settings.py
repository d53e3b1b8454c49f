"""Settings of a reward model training run (checked when the job is submitted and when it runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput

#: ``features``: heads on frozen features of a chat model's backbone (fast on a CPU, the default);
#: ``cross-encoder``: the MiniLM cross-encoder fine-tuned end to end.
KINDS = ("features", "cross-encoder")


@dataclass
class RewardSettings:
    kind: str = "features"
    heads: int = 5  # features: an ensemble of this many heads (their spread is the uncertainty)
    backbone: str | None = None  # features: the chat model whose backbone reads; None: the default model
    epochs: int = 1  # cross-encoder: how long and how fast (the features kind fits its heads fully)
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 256
    max_pairs: int | None = None
    max_steps: int | None = None
    holdout_fraction: float = 0.2
    min_pairs: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if not 1 <= self.heads <= 32:
            raise InvalidInput(f"heads must be 1-32 (got {self.heads})")
        if not 1 <= self.epochs <= 20:
            raise InvalidInput(f"epochs must be 1-20 (got {self.epochs})")
        if not 1 <= self.batch_size <= 256:
            raise InvalidInput(f"batch_size must be 1-256 (got {self.batch_size})")
        if not 0 < self.learning_rate < 1:
            raise InvalidInput(f"learning_rate must be in (0, 1) (got {self.learning_rate})")
        if not 16 <= self.max_length <= 512:
            raise InvalidInput(f"max_length must be 16-512 tokens (got {self.max_length})")
        if not 0 < self.holdout_fraction < 1:
            raise InvalidInput(f"holdout_fraction must be in (0, 1) (got {self.holdout_fraction})")
        if self.min_pairs < 2:
            raise InvalidInput(f"min_pairs must be at least 2 (got {self.min_pairs})")


def settings_from(params: dict[str, Any]) -> RewardSettings:
    known = set(RewardSettings.__dataclass_fields__)
    unknown = set(params) - known
    if unknown:
        raise InvalidInput(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
    settings = RewardSettings(**params)
    settings.check()
    return settings
