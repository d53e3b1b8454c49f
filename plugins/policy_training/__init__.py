"""Built-in plugin: policy updates of a chat model with LoRA adapters (peft + TRL).

Trainers (each a job kind ``train:<name>``):

* ``policy-rl``: RL against the reward model with a KL penalty to the frozen reference (the base
  with the adapter disabled), TRL's RLOOTrainer, optionally minus a weighted toxicity penalty;
* ``policy-dpo``: DPO on the preference pairs Espalier holds, TRL's DPOTrainer.

Both end by registering the adapter as a *candidate* version of the model
(``ModelService.add_version``); promotion makes it serve. Settings and the checks made before a
run is queued are in :mod:`espalier.core.sources.learning.policy`; start runs with ``POST /api/policy/train`` or
``espalier policy train``.
"""

from __future__ import annotations

from espalier import hookimpl
from espalier.plugins.policy_training.trainer import PolicyTrainer

__all__ = ["PolicyTrainer"]


@hookimpl(trylast=True)
def register_trainers(register, platform):
    # The trainers read models, reward models, pairs and guardrails through the platform.
    register(
        PolicyTrainer(
            platform,
            "rl",
            "LoRA policy update by RL (RLOO) against the reward model with a KL penalty to the "
            "base model, optionally minus a weighted toxicity penalty",
        )
    )
    register(
        PolicyTrainer(platform, "dpo", "LoRA policy update by DPO on the preference pairs (reference: the base model)")
    )
