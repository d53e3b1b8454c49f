"""Built-in plugin: the reward model trainer and retraining from new feedback.

Trainer ``reward`` (job kind ``train:reward``) trains a MiniLM reward model on every preference
pair Espalier holds (derived from feedback, plus imported files) and registers it as a new
version; it becomes current only when not worse than the current one on the same held-out pairs.

``on_feedback`` starts a retrain when ``ESPALIER_REWARD_RETRAIN_AFTER_PAIRS`` new pairs have
arrived since the current model's data snapshot (0 turns this off).
"""

from __future__ import annotations

import logging

from espalier import hookimpl

from .trainer import RewardTrainer, maybe_retrain

log = logging.getLogger("espalier.reward")
__all__ = ["RewardTrainer", "maybe_retrain"]


@hookimpl(trylast=True)
def register_trainers(register):
    register(RewardTrainer())


@hookimpl
def startup(platform):
    # The trainer reads pairs and registers versions through the platform it runs in.
    if "reward" in platform.trainers:
        trainer = platform.trainers.get("reward")
        if isinstance(trainer, RewardTrainer):
            trainer.bind(platform)


@hookimpl
def on_feedback(event, platform):
    maybe_retrain(platform)
