"""The reward model artifact format and scoring with it.

An artifact is a folder: a Hugging Face sequence-classification model with one output
(``save_pretrained``), its tokenizer, and ``reward_card.json`` (how inputs were encoded, data
snapshot, metrics). Trainers write it; :class:`SequenceClassifierScorer` reads it. Inputs are encoded as a
text pair (prompt, completion); the prompt keeps its *end* (the latest turn) when it is long.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CARD_NAME = "reward_card.json"
DEFAULT_MAX_LENGTH = 256
PROMPT_TAIL_CHARS = 600  # the last turn matters most; long HH transcripts would crowd out the answer


def encode(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *, max_length: int) -> Any:
    tails = [prompt[-PROMPT_TAIL_CHARS:] for prompt in prompts]
    return tokenizer(
        tails, list(completions), truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt"
    )


def rewards(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 32,
) -> list[float]:
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = encode(
                tokenizer,
                prompts[start : start + batch_size],
                completions[start : start + batch_size],
                max_length=max_length,
            )
            out.extend(model(**batch).logits[:, 0].float().tolist())
    return out


class SequenceClassifierScorer:
    """A loaded reward model. Scores are unnormalised: compare them, do not threshold them."""

    def __init__(self, path: str | Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        self.card = json.loads((self.path / CARD_NAME).read_text())
        self.max_length = int(self.card.get("max_length", DEFAULT_MAX_LENGTH))
        from espalier.plugins.common.gguf import LOAD_LOCK

        with LOAD_LOCK:  # one transformers load at a time in the process (see LOAD_LOCK)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path)
        self.model.eval()
        self._lock = threading.Lock()  # one forward at a time: CPU threads are shared anyway

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        with self._lock:
            return rewards(self.model, self.tokenizer, prompts, completions, max_length=self.max_length)


class BuiltinLoader:
    """Reward scorer loader ``builtin``: both artifact formats the ``reward`` trainer writes, told
    apart by the card's ``format`` (``espalier-reward/1``: a sequence classifier;
    ``espalier-reward-features/1``: feature heads on a chat model's backbone)."""

    def __init__(self, name: str = "builtin") -> None:
        self.name = name

    def load(self, path: Path) -> Any:
        card = json.loads((Path(path) / CARD_NAME).read_text())
        if card.get("format") == "espalier-reward-features/1":
            from espalier.plugins.reward_models.features import FeatureHeadScorer

            return FeatureHeadScorer(path)
        return SequenceClassifierScorer(path)
