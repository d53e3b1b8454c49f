"""Built-in prompt-injection guardrail and its classifier trainer.

The ``injection`` scorer always works from rules (override phrases, role markers, jailbreak
personas, system-prompt requests) and canaries (setting ``injection_canaries``). When the setting
``injection_checkpoint`` names a checkpoint trained with :func:`train_injection_model` (job kind
``train:injection-classifier``), or one was trained and recorded, its score is combined with the
rules' by taking the larger. A configured path that does not exist stops start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from espalier import hookimpl
from espalier.core.interface.guardrails.policies import trained_model
from espalier.plugins.common.text_classifiers.training import ClassifierTrainer, Progress, train_classifier
from espalier.plugins.injection.rules import RULES, Rule, RuleSet
from espalier.plugins.injection.scorer import InjectionScorer

__all__ = ["RULES", "InjectionScorer", "Rule", "RuleSet", "train_injection_model"]


def train_injection_model(
    data: str | Path | Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    epochs: int = 2,
    max_length: int = 128,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train the injection classifier (category ``injection``; labels such as ``injection``/``benign``
    or 0/1). Same options and return value as :func:`~espalier.plugins.toxicity.train_toxicity_model`.
    """
    options.setdefault("category", "injection")
    options.setdefault("name", "espalier-injection")
    return train_classifier(data, out_dir, epochs=epochs, max_length=max_length, progress=progress, **options)


def scorer_from_settings(settings: Any) -> InjectionScorer:
    checkpoint, config_dir = settings.injection_checkpoint, settings.injection_config_dir
    if checkpoint is None:
        card = trained_model(settings.guardrail_models_dir, "injection")
        if card is not None:
            checkpoint, config_dir = card["artifacts"]["checkpoint"], card["artifacts"].get("config_dir")
    return InjectionScorer(checkpoint, config_dir, canaries=list(settings.injection_canaries))


@hookimpl(trylast=True)
def register_guardrails(register, settings):
    register(scorer_from_settings(settings))


@hookimpl(trylast=True)
def register_trainers(register, platform):
    description = "Fine-tune MiniLM on labelled prompts ({text, label: injection/benign}) into an injection checkpoint"
    register(ClassifierTrainer.for_guardrail(platform, "injection", description))
