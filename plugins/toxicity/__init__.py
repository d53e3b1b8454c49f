"""Built-in toxicity guardrails and the guardrail classifier trainer.

Scorers:

* ``profanity``: alt-profanity-check's bundled classifier; always registered (the default).
* ``detoxify``: a detoxify-format checkpoint run by detoxify's own code; registered when an
  operator configures one (setting ``toxicity_checkpoint``, optionally ``toxicity_config_dir``,
  else ``hf_config/`` beside the checkpoint) or, failing that, when one was trained with
  ``espalier guardrails train`` / the ``train:toxicity-classifier`` job (recorded under
  ``<artifacts>/guardrails/toxicity.json``). A configured path that does not exist stops start-up
  with a message naming it, rather than failing on the first message scored.
* ``judge``: a second detoxify-format checkpoint, trained apart from the first (setting
  ``judge_checkpoint``, or the last one trained with ``espalier guardrails train --judge``). It
  offers no policy, so it guards nothing: evaluations use it by default, so a policy update that
  optimised ``detoxify`` is still judged by a scorer it never saw.

Trainer ``toxicity-classifier`` (job kind ``train:toxicity-classifier``) fine-tunes MiniLM on a
JSONL file, writes a checkpoint that the ``detoxify`` scorer and detoxify itself load, and
records it as the one to serve from the next start.
"""

from __future__ import annotations

from espalier import hookimpl
from espalier.core.interface.guardrails.policies import trained_model
from espalier.plugins.common.text_classifiers.data import (
    LabelledTexts,
    load_labelled,
    stratified_sample,
    stratified_split,
)
from espalier.plugins.common.text_classifiers.detoxify import DetoxifyScorer
from espalier.plugins.common.text_classifiers.training import (
    ClassifierTrainer,
    TrainingCancelled,
    train_classifier,
    train_toxicity_model,
)
from espalier.plugins.toxicity.profanity import ProfanityScorer

JUDGE = "judge"  # the scorer's name
JUDGE_RECORD = "toxicity-judge"  # what `guardrails train --judge` records it as

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
def register_guardrails(register, settings):
    # The scorer evaluations measure toxicity with (unless ESPALIER_EVALUATION_SCORER names one):
    # a detoxify checkpoint when there is one, else the word-based profanity classifier.
    detoxify = None
    if settings.toxicity_checkpoint is not None:
        detoxify = DetoxifyScorer(settings.toxicity_checkpoint, settings.toxicity_config_dir)
    elif (card := trained_model(settings.guardrail_models_dir, "toxicity")) is not None:
        detoxify = DetoxifyScorer(card["artifacts"]["checkpoint"], card["artifacts"].get("config_dir"))
    register(ProfanityScorer(), default=detoxify is None)
    if detoxify is not None:
        register(detoxify, default=True)
    if settings.judge_checkpoint is not None:
        register(DetoxifyScorer(settings.judge_checkpoint, settings.judge_config_dir, name=JUDGE))
    elif (card := trained_model(settings.guardrail_models_dir, JUDGE_RECORD)) is not None:
        register(DetoxifyScorer(card["artifacts"]["checkpoint"], card["artifacts"].get("config_dir"), name=JUDGE))


@hookimpl(trylast=True)
def register_trainers(register, platform):
    description = "Fine-tune MiniLM on labelled text ({text, label}) into a detoxify-format toxicity checkpoint"
    register(ClassifierTrainer.for_guardrail(platform, "toxicity", description))
