"""RL against the reward model with a KL penalty: TRL's RLOOTrainer with a LoRA adapter.

Why RLOO rather than GRPO: RLOO subtracts ``beta * KL`` from each completion's reward (the
classic KL-penalised RLHF objective, max E[r] - beta KL(pi || pi_ref)) and uses the mean reward of
the other completions of the same prompt as the baseline, unbiased and with no value head, so one
copy of the weights suffices. GRPO puts the KL in the loss instead, defaults to beta = 0 and divides
advantages by the group's reward spread, which magnifies noise when a reward model scores a
group's completions almost alike (common with a small reward model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from espalier.core.sources.learning.policy import PolicySettings
from espalier.plugins.policy_training.common import RunLog, Scorers, completion_text, make_callback, quiet


def reward_functions(scorers: Scorers) -> list[Any]:
    """TRL reward functions: the reward model's score, and minus the toxicity of the completion.

    Both always run: the toxicity curve is how rising toxicity is noticed even at weight 0.
    """

    def reward_model(prompts, completions, **kwargs):
        return scorers.rewards(prompts, [completion_text(c) for c in completions])

    def toxicity_penalty(prompts, completions, **kwargs):
        return [-t for t in scorers.toxicities([completion_text(c) for c in completions])]

    return [reward_model, toxicity_penalty]


def train_rl(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    scorers: Scorers,
    settings: PolicySettings,
    lora: Any,
    run: RunLog,
    out: Path,
) -> Any:
    import torch
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    config = RLOOConfig(
        output_dir=str(out / "trainer"),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size * settings.num_generations,
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_tokens,
        temperature=settings.temperature,
        beta=settings.effective_beta,
        reward_weights=[1.0, settings.toxicity_weight],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )

    def on_log(step: int, logs: dict[str, float], _model: Any) -> dict[str, float | None]:
        toxicity = logs.get("rewards/toxicity_penalty/mean")
        return {
            "reward": logs.get("reward"),
            "kl": logs.get("kl"),
            "loss": logs.get("loss"),
            "reward_model": logs.get("rewards/reward_model/mean"),
            "toxicity": -toxicity if toxicity is not None else None,
            "reward_std": logs.get("reward_std"),
            "completion_tokens": logs.get("completions/mean_length"),
        }

    trainer = RLOOTrainer(
        model=model,
        reward_funcs=reward_functions(scorers),
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[make_callback(run, on_log)],
    )
    run.job.progress(0.05, f"training {settings.steps} steps")
    quiet(trainer)
    trainer.train()
    return trainer
