"""Built-in plugin: the reward model trainer and retraining from new feedback.

Trainer ``reward`` (job kind ``train:reward``) trains a reward model on every preference pair
Espalier holds (derived from feedback, plus imported files): by default an ensemble of linear
heads on the chat model's frozen features (``features``), or the MiniLM cross-encoder
(``cross-encoder``). It registers it as a new version, which becomes current only when not worse
than the current one on the same held-out pairs. Retrains start from the current version.

``on_feedback`` starts a retrain when ``ESPALIER_REWARD_RETRAIN_AFTER_PAIRS`` new pairs have
arrived since the current model's data snapshot (0 turns this off); a file of imported pairs
starts none (the operator trains when the import is done).

Model provider ``best-of-n``: an alias that samples n candidates from a base model and answers
with the one the current reward model prefers.
"""

from __future__ import annotations

import logging

from espalier import hookimpl
from espalier.plugins.reward_models.best_of_n import BestOfNProvider
from espalier.plugins.reward_models.scoring import BuiltinLoader
from espalier.plugins.reward_models.trainer import RewardTrainer, maybe_retrain

log = logging.getLogger("espalier.reward")
__all__ = ["BestOfNProvider", "RewardTrainer", "maybe_retrain"]


@hookimpl(trylast=True)
def register_trainers(register, platform):
    register(RewardTrainer(platform))


@hookimpl(trylast=True)
def register_reward_scorers(register):
    register(BuiltinLoader(), default=True)
    register(BuiltinLoader("sequence-classifier"))  # its former name, for settings that still say it


@hookimpl(trylast=True)
def register_model_providers(register, platform):
    register(BestOfNProvider(platform))


@hookimpl
def on_feedback(event, platform):
    # A file of imported pairs is an operator's deliberate act, usually followed by a training run
    # of their own choosing: it is heard like any feedback, and the retrain stays their call.
    if event.kind == "import":
        return
    maybe_retrain(platform)
