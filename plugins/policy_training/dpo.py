"""DPO directly on the preference pairs: TRL's DPOTrainer with a LoRA adapter (reference = the
adapter disabled).

Per step the job records DPO's loss, its implicit reward margin as ``reward``
(beta * [log-ratio of chosen - log-ratio of rejected]) and, every few steps, ``kl``: the KL from the
reference per token, estimated on completions sampled from the policy for two held-out prompts
(DPO itself never samples, so this is the only way to see drift as the RL path does).

Pairs come from the store (``pairs="store"``: what users ranked, plus imported pairs) or are built
here from the policy's own samples (``pairs="sampled"``, :func:`sampled_pairs`): for each training
prompt ``samples_per_prompt`` completions from the starting policy, scored with the signal RL
optimises (reward model minus ``toxicity_weight`` x toxicity), best against worst. Such pairs are
the reward model's own judgement, so they stay with the job (``sampled_pairs.jsonl`` in its
folder) and are never stored as pairs: training the next reward model on them would teach it
what it already thinks.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.infrastructure.jobs.service import JobCancelled
from espalier.core.sources.learning.policy import PolicySettings
from espalier.plugins.policy_training.common import (
    RunLog,
    Scorers,
    fit_messages,
    fit_text,
    make_callback,
    messages_from_transcript,
    quiet,
    sample,
    training_prompt,
)

SAMPLED_PAIRS_NAME = "sampled_pairs.jsonl"
PROMPTS_PER_ROUND = 8  # prompts sampled between progress reports and cancellation checks


@dataclass
class SampledPair:
    """A pair built from the policy's samples: the best and the worst completion of one prompt."""

    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


def sampled_pairs(
    model: Any, tokenizer: Any, prompts: list[str], scorers: Scorers, settings: PolicySettings, run: RunLog, out: Path
) -> list[SampledPair]:
    """Sample ``samples_per_prompt`` completions of each prompt from ``model``, score them as RL's
    reward does, and pair the best with the worst. A prompt gives no pair when its best and worst
    completions are equal, score alike or one of them is empty. Written to ``sampled_pairs.jsonl``."""
    k = settings.samples_per_prompt
    pairs: list[SampledPair] = []
    for start in range(0, len(prompts), PROMPTS_PER_ROUND):
        if run.check_cancelled():
            raise JobCancelled()
        chunk = prompts[start : start + PROMPTS_PER_ROUND]
        rendered = [q for q in (training_prompt(tokenizer, p, settings) for p in chunk) for _ in range(k)]
        samples = sample(
            model,
            tokenizer,
            rendered,
            max_new_tokens=settings.max_completion_tokens,
            temperature=settings.temperature,
            seed=settings.seed + start,
            with_kl=False,
            batch_size=4 * k,
        )
        scores = scorers.objective(rendered, samples.texts, settings.toxicity_weight)
        for index, prompt in enumerate(chunk):
            group = list(
                zip(samples.texts[index * k : (index + 1) * k], scores[index * k : (index + 1) * k], strict=True)
            )
            (chosen, high), (rejected, low) = max(group, key=lambda g: g[1]), min(group, key=lambda g: g[1])
            if chosen.strip() and rejected.strip() and chosen != rejected and high - low > 1e-6:
                pairs.append(SampledPair(prompt, chosen, rejected, high, low))
        done = min(start + PROMPTS_PER_ROUND, len(prompts))
        run.job.progress(
            0.01 + 0.04 * done / len(prompts), f"sampled {done}/{len(prompts)} prompts x {k}: {len(pairs)} pairs"
        )
    with (out / SAMPLED_PAIRS_NAME).open("w") as file:
        file.writelines(json.dumps(asdict(pair)) + "\n" for pair in pairs)
    if len(pairs) < settings.min_pairs:
        raise InvalidInput(
            f"only {len(pairs)} of {len(prompts)} prompts gave a pair (their {k} samples were alike); "
            f"min_pairs is {settings.min_pairs}: give more prompts, raise samples_per_prompt or "
            "temperature, or set toxicity_weight"
        )
    margins = [p.chosen_score - p.rejected_score for p in pairs]
    run.say(
        f"sampled pairs: {len(pairs)} from {len(prompts)} prompts x {k} samples; score margin mean "
        f"{statistics.fmean(margins):.4g}, median {statistics.median(margins):.4g}"
    )
    return pairs


def dpo_rows(tokenizer: Any, pairs: list[Any], settings: PolicySettings) -> list[dict[str, Any]]:
    """Pairs in TRL's format, cut to fit: the prompt keeps its end, the replies their start."""
    rows = []
    for pair in pairs:
        chosen = fit_text(tokenizer, pair.chosen, settings.max_completion_tokens, keep="start")
        rejected = fit_text(tokenizer, pair.rejected, settings.max_completion_tokens, keep="start")
        if settings.prompt_format == "chat":
            prompt = fit_messages(tokenizer, messages_from_transcript(pair.prompt), settings.max_prompt_tokens)
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append(
                {
                    "prompt": fit_text(tokenizer, pair.prompt, settings.max_prompt_tokens),
                    "chosen": " " + chosen.lstrip(),
                    "rejected": " " + rejected.lstrip(),
                }
            )
    return rows


def train_dpo(
    model: Any,
    tokenizer: Any,
    pairs: list[Any],
    probe: list[Any],
    settings: PolicySettings,
    lora: Any,
    run: RunLog,
    out: Path,
) -> Any:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=str(out / "trainer"),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        beta=settings.effective_beta,
        max_length=settings.max_prompt_tokens + settings.max_completion_tokens + 32,
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
    )
    probe_every = max(1, settings.steps // 10)

    def on_log(step: int, logs: dict[str, float], policy: Any) -> dict[str, float | None]:
        values = {
            "reward": logs.get("rewards/margins"),
            "loss": logs.get("loss"),
            "accuracy": logs.get("rewards/accuracies"),
            "chosen": logs.get("rewards/chosen"),
            "rejected": logs.get("rewards/rejected"),
        }
        if probe and policy is not None and (step % probe_every == 0 or step == settings.steps):
            samples = sample(
                policy,
                tokenizer,
                probe,
                max_new_tokens=settings.max_completion_tokens,
                temperature=settings.temperature,
                seed=settings.seed + step,
                with_kl=True,
            )
            values["kl"] = sum(samples.kl) / max(1, sum(samples.tokens))
        return values

    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=Dataset.from_list(dpo_rows(tokenizer, pairs, settings)),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[make_callback(run, on_log)],
    )
    run.job.progress(0.05, f"training {settings.steps} steps on {len(pairs)} pairs")
    quiet(trainer)
    trainer.train()
    return trainer
