"""Built-in toxicity guardrails and the guardrail classifier trainer.

Scorers:

* ``profanity``: alt-profanity-check's bundled classifier; always registered (the default).
* ``detoxify``: a detoxify-format checkpoint run by detoxify's own code; registered only when an
  operator configures one with ``ESPALIER_TOXICITY_CHECKPOINT`` (and optionally
  ``ESPALIER_TOXICITY_CONFIG_DIR``, else ``hf_config/`` beside the checkpoint). A configured path
  that does not exist stops start-up with a message naming it, rather than failing on the first
  message scored.

Trainer ``toxicity-classifier`` (job kind ``train:toxicity-classifier``) fine-tunes MiniLM on a
JSONL file and writes a checkpoint that the ``detoxify`` scorer and detoxify itself load.
"""

from __future__ import annotations

import os

from espalier import hookimpl

from .data import LabelledTexts, load_labelled, stratified_sample, stratified_split
from .detoxify_scorer import DetoxifyScorer
from .profanity import ProfanityScorer
from .training import ClassifierTrainer, TrainingCancelled, train_classifier, train_toxicity_model

CHECKPOINT_ENV = "ESPALIER_TOXICITY_CHECKPOINT"
CONFIG_DIR_ENV = "ESPALIER_TOXICITY_CONFIG_DIR"

__all__ = [
    "ClassifierTrainer",
    "DetoxifyScorer",
    "LabelledTexts",
    "ProfanityScorer",
    "TrainingCancelled",
    "load_labelled",
    "stratified_sample",
    "stratified_split",
    "train_classifier",
    "train_toxicity_model",
]


@hookimpl(trylast=True)
def register_guardrails(register):
    register(ProfanityScorer())
    # Read when the hook runs (start-up), never at import time.
    checkpoint = os.environ.get(CHECKPOINT_ENV, "").strip()
    if checkpoint:
        register(DetoxifyScorer(checkpoint, os.environ.get(CONFIG_DIR_ENV, "").strip() or None))


@hookimpl(trylast=True)
def register_trainers(register):
    register(
        ClassifierTrainer(
            "toxicity-classifier",
            "Fine-tune MiniLM on labelled text ({text, label}) into a detoxify-format toxicity checkpoint",
            category="toxicity",
            model_name="espalier-toxicity",
        )
    )
