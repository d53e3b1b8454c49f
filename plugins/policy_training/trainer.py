"""The ``policy-rl`` and ``policy-dpo`` trainers (jobs ``train:policy-rl``, ``train:policy-dpo``).

A run: check the settings again (the job may have been queued through ``POST /api/jobs``), load a
trainable copy of the base weights, train a LoRA adapter with TRL, measure the base and the
trained policy on held-out prompts (reward, toxicity, KL from the reference), save the adapter,
the curves and a card, and register the adapter as a *candidate* version of the model.
Nothing is registered when the run fails or is cancelled.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier.core.infrastructure.jobs.service import JobCancelled
from espalier.core.sources.learning.policy import PolicySettings, preflight, settings_from
from espalier.plugins.policy_training.common import (
    RunLog,
    Scorers,
    describe,
    kl_summary,
    load_base,
    plot_curves,
    sample,
    training_prompt,
)

if TYPE_CHECKING:
    from espalier.core.platform import Platform

ADAPTER_DIR = "adapter"
PLOT_NAME = "curves.png"
CARD_NAME = "policy_card.json"


class PolicyTrainer:
    def __init__(self, platform: Platform, method: str, description: str):
        self.platform = platform
        self.method = method
        self.name = f"policy-{method}"
        self.description = description

    def train(self, job: Any) -> dict[str, Any]:
        settings = settings_from({**job.params, "method": self.method})
        plan = preflight(self.platform, settings)
        return run(self.platform, job, settings, plan)


def optimises_toxicity(settings: PolicySettings) -> bool:
    """Whether the update was steered by the toxicity scorer (its penalty in the reward, or the
    samples it kept or paired): that scorer then cannot judge the result."""
    steered = settings.method in ("rl", "rsft") or (settings.method == "dpo" and settings.pairs == "sampled")
    return steered and settings.toxicity_weight > 0


def split_prompts(prompts: list[str], settings: PolicySettings) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded shuffle, then the first ``eval_prompts`` are held out."""
    order = list(prompts)
    random.Random(settings.seed).shuffle(order)
    held = order[: settings.held_out(len(order))]
    train = order[len(held) :] or order
    return train, held


def run(platform: Any, job: Any, settings: PolicySettings, plan: Any) -> dict[str, Any]:
    import torch
    from peft import LoraConfig

    started = time.perf_counter()
    out = Path(job.artifact_dir)
    run_log = RunLog(job, settings, job.log)
    torch.manual_seed(settings.seed)
    job.progress(0.01, "loading the base weights")
    model, tokenizer, folder = load_base(platform, plan.model)
    job.log(f"{settings.method} on {plan.model} ({folder}); {plan.summary()}")
    scorers = Scorers(platform, plan.reward_model, settings.toxicity_scorer)
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha or 2 * settings.lora_rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )

    if settings.budget_minutes is not None:
        # Sampling and training stop in time for the held-out measurement and the save.
        run_log.deadline = started + 0.85 * 60 * settings.budget_minutes
    pairs: list[Any] = []
    rows: list[Any] = []
    if settings.method in ("rsft", "sft"):
        from espalier.plugins.policy_training.sft import rejection_samples, train_sft

        if settings.method == "rsft":
            train_prompts, held = split_prompts(plan.prompts, settings)
            sampling_deadline = (
                started + 0.45 * 60 * settings.budget_minutes if settings.budget_minutes is not None else None
            )
            rows = rejection_samples(
                platform,
                plan.model,
                tokenizer,
                train_prompts,
                scorers,
                settings,
                run_log,
                out,
                deadline=sampling_deadline,
            )
        else:
            from espalier.core.sources.learning.demonstrations import demonstrations

            rows = demonstrations(platform.pairs, settings.sft_path, include_corrections=settings.include_corrections)
            held = split_prompts(plan.prompts, settings)[1] if plan.prompts and settings.eval_prompts else []
        trainer = train_sft(model, tokenizer, rows, settings, lora, run_log, out)
    elif settings.method == "rl":
        train_prompts, held = split_prompts(plan.prompts, settings)
        from espalier.plugins.policy_training.rl import train_rl

        trainer = train_rl(
            model,
            tokenizer,
            [training_prompt(tokenizer, p, settings) for p in train_prompts],
            scorers,
            settings,
            lora,
            run_log,
            out,
        )
    else:
        from espalier.plugins.policy_training.dpo import sampled_pairs, train_dpo

        if settings.pairs == "sampled":
            train_prompts, held = split_prompts(plan.prompts, settings)
            job.progress(0.01, f"sampling {settings.samples_per_prompt} completions of {len(train_prompts)} prompts")
            pairs = sampled_pairs(model, tokenizer, train_prompts, scorers, settings, run_log, out)
        else:
            pool = plan.prompts or list(dict.fromkeys(p.prompt for p in plan.pairs))
            held = split_prompts(pool, settings)[1] if settings.eval_prompts else []
            # Pairs whose prompt is measured on stay out of training, unless that leaves too few.
            measured = set(held)
            unseen = [pair for pair in plan.pairs if pair.prompt not in measured]
            pairs = unseen if len(unseen) >= settings.min_pairs else plan.pairs
        probe = [training_prompt(tokenizer, p, settings) for p in held[:2]]
        trainer = train_dpo(model, tokenizer, pairs, probe, settings, lora, run_log, out)
    train_seconds = time.perf_counter() - started
    if run_log.cancelled or job.cancelled():
        job.log(f"cancelled after {trainer.state.global_step} steps; nothing registered")
        raise JobCancelled()
    policy = trainer.model
    steps_done = trainer.state.global_step
    job.log(f"trained {steps_done} steps in {train_seconds:.1f}s ({run_log.stop_reason})")

    evaluation: dict[str, Any] = {}
    if held:
        job.progress(0.88, f"measuring base and policy on {len(held)} held-out prompts")
        prompts = [training_prompt(tokenizer, p, settings) for p in held]
        args = {
            "max_new_tokens": settings.max_completion_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed + 1,
        }
        with policy.disable_adapter():
            base_samples = sample(policy, tokenizer, prompts, with_kl=False, **args)
        if job.cancelled():
            raise JobCancelled()
        policy_samples = sample(policy, tokenizer, prompts, with_kl=True, **args)
        evaluation = {
            "prompts": len(held),
            "base": describe(scorers, base_samples),
            "policy": describe(scorers, policy_samples),
            **kl_summary(policy_samples),
            "examples": [
                {"prompt": str(p)[-300:], "base": b, "policy": a}
                for p, b, a in zip(held[:3], base_samples.texts, policy_samples.texts, strict=False)
            ],
        }
        base_row, policy_row = evaluation["base"], evaluation["policy"]
        if policy_row["toxicity"] > base_row["toxicity"] + 0.05:
            run_log.warn(
                "toxicity-eval",
                f"held-out toxicity rose from {base_row['toxicity']:.3f} (base) to "
                f"{policy_row['toxicity']:.3f} (policy): do not promote without a look",
            )
        if evaluation["kl_per_token"] > settings.kl_bound:
            run_log.warn(
                "kl-eval",
                f"held-out KL from the reference is {evaluation['kl_per_token']:.3f} per token, "
                f"past the bound {settings.kl_bound}",
            )
        job.log(
            "held-out: base "
            + json.dumps(base_row)
            + " policy "
            + json.dumps(policy_row)
            + f" KL {evaluation['kl']:.4f} ({evaluation['kl_per_token']:.4f}/token)"
        )
    if job.cancelled():
        raise JobCancelled()

    job.progress(0.96, "saving the adapter")
    adapter = out / ADAPTER_DIR
    policy.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    plot = plot_curves(run_log.history, out / PLOT_NAME, f"{settings.method} on {plan.model}")
    label = settings.label or f"{settings.method}-{job.job_id}"[:64]
    metrics = {
        "method": settings.method,
        "job_id": job.job_id,
        "steps": steps_done,
        "stop_reason": run_log.stop_reason,
        "reward_model": plan.reward_model.id if plan.reward_model is not None else None,
        "reward_model_version": plan.reward_model.version if plan.reward_model is not None else None,
        "beta": settings.effective_beta,
        "lora_rank": settings.lora_rank,
        "learning_rate": settings.learning_rate,
        "prompt_format": settings.prompt_format,
        # The gate refuses to judge toxicity with the scorer an update optimised.
        "toxicity_scorer_optimised": settings.toxicity_scorer if optimises_toxicity(settings) else None,
        "demonstrations": len(rows) if rows else None,
        "budget_minutes": settings.budget_minutes,
        "train_seconds": round(train_seconds, 2),
        "pairs": pair_summary(settings, pairs, out),
        "final": {name: values[-1][1] for name, values in run_log.history.items() if values},
        "evaluation": {k: v for k, v in evaluation.items() if k != "examples"},
        "warnings": run_log.warnings,
    }
    card = {
        "format": "espalier-policy/1",
        "model": plan.model,
        "base_folder": str(folder),
        "label": label,
        "settings": settings.as_dict() | {"prompts": len(settings.prompts)},
        "metrics": metrics,
        "evaluation": evaluation,
        "history": run_log.history,
    }
    (out / CARD_NAME).write_text(json.dumps(card, indent=2, default=str))
    version = platform.models.add_version(
        plan.model, label=label, adapter=str(adapter), metrics=metrics, status="candidate"
    )
    job.log(f"registered {plan.model} version '{label}' ({version.id}) as a candidate")
    return {
        "model": plan.model,
        "version": version.id,
        "label": label,
        "adapter": str(adapter),
        "plot": str(plot),
        "card": str(out / CARD_NAME),
        "steps": steps_done,
        "stop_reason": run_log.stop_reason,
        "warnings": run_log.warnings,
        "evaluation": evaluation,
        "metrics": metrics["final"],
        "pairs": metrics["pairs"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def pair_summary(settings: PolicySettings, pairs: list[Any], out: Path) -> dict[str, Any] | None:
    """DPO's pairs: where they came from, how many, and for sampled pairs the file and score margins."""
    if settings.method != "dpo":
        return None
    summary: dict[str, Any] = {"source": settings.pairs, "count": len(pairs)}
    if settings.pairs == "sampled":
        from espalier.plugins.policy_training.dpo import SAMPLED_PAIRS_NAME

        margins = [p.chosen_score - p.rejected_score for p in pairs]
        summary |= {
            "file": str(out / SAMPLED_PAIRS_NAME),
            "samples_per_prompt": settings.samples_per_prompt,
            "mean_margin": round(sum(margins) / len(margins), 6),
        }
    return summary
