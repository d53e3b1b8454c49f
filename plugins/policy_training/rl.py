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


class RunningScale:
    """A signal's spread over every sample seen so far (Welford's running variance), to express
    each score in units of it. Raw, a reward model whose scores spread over several units drowns a
    0-1 toxicity penalty whatever its weight (the loop benchmark's RL runs grew more toxic under a
    penalty of weight 1); in units of their spread, ``toxicity_weight`` is the penalty's importance
    relative to the reward model's. The spread is floored at ``floor`` so that a run of alike
    samples early on does not magnify noise. ``last_mean`` is the latest batch's raw mean (the
    curves record raw values)."""

    def __init__(self, floor: float):
        self.floor = floor
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.last_mean: float | None = None

    def scaled(self, values: list[float]) -> list[float]:
        for value in values:
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (value - self.mean)
        if values:
            self.last_mean = sum(values) / len(values)
        spread = max(self.floor, (self._m2 / self.count) ** 0.5 if self.count > 1 else 0.0)
        return [v / spread for v in values]


def reward_functions(scorers: Scorers) -> tuple[list[Any], dict[str, RunningScale]]:
    """TRL reward functions: the reward model's score, and minus the toxicity of the completion,
    each in units of its running spread (:class:`RunningScale`); and those scales, whose
    ``last_mean`` is the raw value for the curves.

    Both always run: the toxicity curve is how rising toxicity is noticed even at weight 0.
    """
    scales = {"reward_model": RunningScale(floor=1e-3), "toxicity": RunningScale(floor=0.05)}

    def reward_model(prompts, completions, **kwargs):
        rewards = scorers.rewards(prompts, [completion_text(c) for c in completions])
        return scales["reward_model"].scaled(rewards) if rewards else rewards

    def toxicity_penalty(prompts, completions, **kwargs):
        toxicity = scorers.toxicities([completion_text(c) for c in completions])
        return [-t for t in scales["toxicity"].scaled(toxicity)]

    return [reward_model, toxicity_penalty], scales


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

    functions, scales = reward_functions(scorers)

    def on_log(step: int, logs: dict[str, float], _model: Any) -> dict[str, float | None]:
        return {
            "reward": logs.get("reward"),
            "kl": logs.get("kl"),
            "loss": logs.get("loss"),
            "reward_model": scales["reward_model"].last_mean,
            "toxicity": scales["toxicity"].last_mean,
            "reward_std": logs.get("reward_std"),
            "completion_tokens": logs.get("completions/mean_length"),
        }

    trainer = RLOOTrainer(
        model=model,
        reward_funcs=functions,
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
