"""Built-in plugin: policy updates of a chat model with LoRA adapters (peft + TRL).

Trainers (each a job kind ``train:<name>``):

* ``policy-rl``: RL against the reward model with a KL penalty to the frozen reference (the base
  with the adapter disabled), TRL's RLOOTrainer, optionally minus a weighted toxicity penalty;
* ``policy-dpo``: DPO on the preference pairs Espalier holds, TRL's DPOTrainer;
* ``policy-rsft``: rejection-sampling fine-tuning (best of n samples by reward and toxicity);
* ``policy-sft``: supervised fine-tuning on curated demonstrations and users' corrections.

Each ends by registering the adapter as a *candidate* version of the model
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
    register(
        PolicyTrainer(
            platform,
            "rsft",
            "LoRA policy update by rejection sampling: the best of n sampled answers per prompt (reward "
            "model minus weighted toxicity), then supervised fine-tuning on them",
        )
    )
    register(
        PolicyTrainer(
            platform,
            "sft",
            "LoRA supervised fine-tuning on curated demonstrations and users' corrections",
        )
    )
