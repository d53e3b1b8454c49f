"""The default toxicity scorer: alt-profanity-check's bundled word-based classifier.

Fast (a linear model over a bag of words, well under a millisecond a message) and always
available, but it only sees words: it misses subtle threats and implicit hate. Its training data
included the Davidson tweets, so do not judge it on those alone (see ``bench/guardrails.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from espalier.core.infrastructure.contracts import Direction, GuardrailScore


class ProfanityScorer:
    """Guardrail ``profanity``: ``{"toxicity": p}`` with ``p`` the classifier's probability."""

    categories = ("toxicity",)
    #: Flag toxic input and output, never block, until an operator writes policies of their own.
    default_policies = (
        {"name": "default-input", "direction": "input", "thresholds": {"toxicity": 0.5}, "action": "flag"},
        {"name": "default-output", "direction": "output", "thresholds": {"toxicity": 0.5}, "action": "flag"},
    )

    def __init__(self, name: str = "profanity"):
        self.name = name
        try:
            self.version = f"alt-profanity-check=={version('alt-profanity-check')}"
        except PackageNotFoundError:  # pragma: no cover - installed as a dependency
            self.version = "alt-profanity-check"
        self._predict = None

    def _load(self):
        if self._predict is None:
            # Importing unpickles the vectorizer and model (about a second), so wait for first use.
            from profanity_check import predict_prob

            self._predict = predict_prob
        return self._predict

    def score(self, texts: Sequence[str], *, direction: Direction = "input") -> list[GuardrailScore]:
        if not texts:
            return []
        probabilities = self._load()(list(texts))
        return [
            GuardrailScore(scorer=self.name, scores={"toxicity": float(p)}, version=self.version) for p in probabilities
        ]
