"""The ``injection`` guardrail: rules, canaries and (when configured) a trained classifier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.contracts import Direction, GuardrailScore
from espalier.plugins.common.text_classifiers.detoxify import DetoxifyScorer
from espalier.plugins.injection.rules import RuleSet


class InjectionScorer:
    """Scores ``{"injection": max(rule score, classifier score)}`` (plus ``"canary"`` when canaries
    are configured: 1.0 when the text contains one, which also sets ``injection`` to 1.0).

    :param checkpoint: a detoxify-format checkpoint from :func:`train_injection_model`; without
        one the rules alone score.
    :param config_dir: its offline config folder (default: ``hf_config/`` beside it).
    :param canaries: secret strings planted in system prompts; seeing one in text means a leak.
    :param use_rules: turn the rules off to score with the classifier alone (for comparisons).
    """

    #: Leave retrieved passages that read like instructions out of grounded prompts, and withhold
    #: such tool output from an agent's model.
    default_policies = (
        {
            "name": "default-retrieved-injection",
            "direction": "retrieved",
            "thresholds": {"injection": 0.5},
            "action": "block",
        },
        {
            "name": "default-agent-tool-injection",
            "direction": "tool",
            "routes": ["agent"],
            "thresholds": {"injection": 0.5},
            "action": "block",
        },
    )

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        config_dir: str | Path | None = None,
        *,
        canaries: Sequence[str] = (),
        name: str = "injection",
        use_rules: bool = True,
        rules: RuleSet | None = None,
    ):
        self.name = name
        self.rules = rules or RuleSet(canaries=canaries)
        self.use_rules = use_rules
        self.classifier: DetoxifyScorer | None = None
        if checkpoint is not None:
            self.classifier = DetoxifyScorer(checkpoint, config_dir, name=f"{name}-classifier")
        if not use_rules and self.classifier is None:
            raise ValueError("an injection scorer without rules needs a classifier checkpoint")
        self.categories = ("injection", "canary") if self.rules.canaries else ("injection",)
        self.version = "rules-1" + (f"+{self.classifier.version}" if self.classifier else "")

    def _classifier_scores(self, texts: Sequence[str]) -> list[float]:
        if self.classifier is None:
            return [0.0] * len(texts)
        category = "injection" if "injection" in self.classifier.categories else self.classifier.categories[0]
        return [s.scores[category] for s in self.classifier.score(texts, direction="input")]

    def score(self, texts: Sequence[str], *, direction: Direction = "input") -> list[GuardrailScore]:
        if not texts:
            return []
        learned = self._classifier_scores(texts)
        results = []
        for text, classifier_score in zip(texts, learned, strict=False):
            rule_score = self.rules.score(text) if self.use_rules else 0.0
            scores = {"injection": max(rule_score, classifier_score)}
            if self.rules.canaries:
                scores["canary"] = 1.0 if self.rules.canary_hit(text) else 0.0
            results.append(GuardrailScore(scorer=self.name, scores=scores, version=self.version))
        return results

    def explain(self, text: str) -> dict[str, Any]:
        """Which rules matched and what the classifier said, for audit logs and the console."""
        return {
            "rules": [{"rule": name, "weight": weight} for name, weight in self.rules.matches(text)],
            "classifier": self._classifier_scores([text])[0] if self.classifier else None,
        }
