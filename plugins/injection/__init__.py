"""Built-in prompt-injection guardrail and its classifier trainer.

The ``injection`` scorer always works from rules (override phrases, role markers, jailbreak
personas, system-prompt requests) and canaries (``ESPALIER_INJECTION_CANARIES``, comma
separated). When ``ESPALIER_INJECTION_CHECKPOINT`` names a checkpoint trained with
:func:`train_injection_model` (job kind ``train:injection-classifier``), its score is combined
with the rules' by taking the larger. A configured path that does not exist stops start-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from espalier import hookimpl
from espalier.plugins.toxicity.training import ClassifierTrainer, Progress, train_classifier

from .rules import RULES, Rule, RuleSet
from .scorer import InjectionScorer

CHECKPOINT_ENV = "ESPALIER_INJECTION_CHECKPOINT"
CONFIG_DIR_ENV = "ESPALIER_INJECTION_CONFIG_DIR"
CANARIES_ENV = "ESPALIER_INJECTION_CANARIES"

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


def scorer_from_environment(environ: Mapping[str, str] = os.environ) -> InjectionScorer:
    canaries = [c for c in environ.get(CANARIES_ENV, "").split(",") if c.strip()]
    checkpoint = environ.get(CHECKPOINT_ENV, "").strip() or None
    return InjectionScorer(checkpoint, environ.get(CONFIG_DIR_ENV, "").strip() or None, canaries=canaries)


@hookimpl(trylast=True)
def register_guardrails(register):
    register(scorer_from_environment())


@hookimpl(trylast=True)
def register_trainers(register):
    register(
        ClassifierTrainer(
            "injection-classifier",
            "Fine-tune MiniLM on labelled prompts ({text, label: injection/benign}) into an injection checkpoint",
            category="injection",
            model_name="espalier-injection",
        )
    )
