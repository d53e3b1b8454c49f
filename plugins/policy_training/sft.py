"""Supervised fine-tuning of the LoRA adapter, and rejection sampling that feeds it.

* ``sft``: fine-tune on demonstrations: conversations an operator curates (``sft_path``, JSONL
  of ``{"messages": [..., {"role": "assistant", ...}]}`` or ``{"prompt": ..., "completion": ...}``)
  and the corrections users wrote for answers they disliked (pairs of origin ``correction``). The
  course's second stage (after prompt engineering, before RLHF).
* ``rsft``: rejection-sampling fine-tuning, the first alignment stage of Llama 2: sample
  ``samples_per_prompt`` answers of each training prompt on the serving engine (batched, the
  prompt's prefix computed once for its samples), keep the best one of each prompt by the reward
  model minus ``toxicity_weight`` x the toxicity scorer (none when even the best is more toxic than
  ``max_kept_toxicity``), and fine-tune on those. Cheap on a CPU:
  generation is done once, in batches, and the fine-tuning is ordinary next-token loss on the
  kept answers only.

Both train with TRL's SFTTrainer on prompt-completion rows, the loss on the completion only.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.infrastructure.jobs.service import JobCancelled
from espalier.core.sources.learning.demonstrations import Demonstration
from espalier.core.sources.learning.policy import PolicySettings
from espalier.core.sources.models.service import BASE
from espalier.plugins.policy_training.common import (
    RunLog,
    Scorers,
    fit_messages,
    fit_text,
    make_callback,
    messages_from_transcript,
    quiet,
    training_prompt,
)

KEPT_NAME = "kept_samples.jsonl"
CONCURRENT_PROMPTS = 8  # requests in flight on the engine: it batches them


def engine_samples(
    platform: Any,
    model_name: str,
    prompts: list[Any],
    settings: PolicySettings,
    run: RunLog,
    *,
    deadline: float | None = None,
) -> list[list[str]]:
    """``samples_per_prompt`` answers per prompt from the serving engine's base version.

    ``prompts`` are training prompts (message lists for ``chat``, strings for ``text``). Requests
    go to the engine several at once, each asking for ``n`` samples, so the engine batches across
    prompts and shares each prompt's prefix among its samples. Stops early (fewer prompts) at
    ``deadline`` (``time.perf_counter()``), which a budget sets."""
    model, _ = platform.models.load(model_name, BASE)
    k = settings.samples_per_prompt

    def one(index: int) -> list[str] | None:
        if run.check_cancelled() or (deadline is not None and time.perf_counter() > deadline):
            return None
        params = GenerationParams(
            max_tokens=settings.max_completion_tokens,
            temperature=settings.temperature,
            top_p=1.0,
            n=k,
            seed=settings.seed + index,
        )
        prompt = prompts[index]
        if isinstance(prompt, list):
            messages = [ChatMessage(m["role"], m["content"]) for m in prompt]
            generations = model.generate(messages, params, run.check_cancelled)
        else:
            generations = model.generate_text(prompt, params, run.check_cancelled)  # type: ignore[attr-defined]
        return [g.text for g in generations]

    results: list[list[str]] = []
    with ThreadPoolExecutor(max_workers=CONCURRENT_PROMPTS) as pool:
        for start in range(0, len(prompts), CONCURRENT_PROMPTS):
            chunk = list(pool.map(one, range(start, min(start + CONCURRENT_PROMPTS, len(prompts)))))
            if run.cancelled:
                raise JobCancelled()
            # Keep prompts and samples aligned: the answers up to the first prompt left unsampled.
            done = next((i for i, c in enumerate(chunk) if c is None), len(chunk))
            results.extend(c for c in chunk[:done] if c is not None)
            run.job.progress(
                0.01 + 0.3 * len(results) / len(prompts), f"sampled {len(results)}/{len(prompts)} prompts x {k}"
            )
            if any(c is None for c in chunk):
                run.say(f"sampling stopped at the time budget after {len(results)} of {len(prompts)} prompts")
                break
    return results


def selection_scores(
    scorers: Scorers, prompts: list[Any], texts: list[str], toxicity_weight: float
) -> tuple[list[float], list[float], list[float]]:
    """What picks the answer to keep: the reward model's score in units of its spread over these
    samples, minus ``toxicity_weight`` times the toxicity (0-1). Unscaled, a reward model whose
    scores spread over several units would drown the toxicity penalty whatever its weight.
    Returns (scores, rewards, toxicities)."""
    rewards = scorers.rewards(prompts, texts) or [0.0] * len(texts)
    spread = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    scaled = [r / spread for r in rewards] if spread > 0 else [0.0] * len(rewards)
    toxicity = scorers.toxicities(texts)
    return [r - toxicity_weight * t for r, t in zip(scaled, toxicity, strict=True)], rewards, toxicity


def rejection_samples(
    platform: Any,
    model_name: str,
    tokenizer: Any,
    prompts: list[str],
    scorers: Scorers,
    settings: PolicySettings,
    run: RunLog,
    out: Path,
    *,
    deadline: float | None = None,
) -> list[Demonstration]:
    """The best of ``samples_per_prompt`` answers per prompt, by the signal RL optimises; written to
    ``kept_samples.jsonl``. A prompt whose answers all score alike (or are empty) gives none."""
    rendered = [training_prompt(tokenizer, p, settings) for p in prompts]
    groups = engine_samples(platform, model_name, rendered, settings, run, deadline=deadline)
    flat_prompts = [rendered[i] for i, group in enumerate(groups) for _ in group]
    flat_texts = [text for group in groups for text in group]
    scores, rewards, toxicity = (
        selection_scores(scorers, flat_prompts, flat_texts, settings.toxicity_weight) if flat_texts else ([], [], [])
    )
    kept: list[Demonstration] = []
    spread: list[float] = []
    too_toxic = 0
    position = 0
    for index, group in enumerate(groups):
        rows = range(position, position + len(group))
        position += len(group)
        answers = [i for i in rows if flat_texts[i].strip()]
        if len(answers) < 2:
            continue
        best = max(answers, key=lambda i: scores[i])
        high, low = scores[best], min(scores[i] for i in answers)
        if high - low <= 1e-6:
            continue
        if toxicity[best] > settings.max_kept_toxicity:
            too_toxic += 1  # the best of a bad lot still teaches toxicity
            continue
        spread.append(high - statistics.fmean(scores[i] for i in answers))
        kept.append(
            Demonstration(
                prompts[index], flat_texts[best], "sampled", high, reward=rewards[best], toxicity=toxicity[best]
            )
        )
    with (out / KEPT_NAME).open("w") as file:
        file.writelines(json.dumps(asdict(row)) + "\n" for row in kept)
    if len(kept) < settings.min_pairs:
        raise InvalidInput(
            f"only {len(kept)} of {len(groups)} sampled prompts kept an answer better than the rest "
            f"(min_pairs is {settings.min_pairs}): give more prompts or time, raise samples_per_prompt or "
            "temperature, or set toxicity_weight or max_kept_toxicity"
        )
    dropped = f"; {too_toxic} kept none (even the best answer's toxicity > {settings.max_kept_toxicity})"
    run.say(
        f"rejection sampling: kept the best of {settings.samples_per_prompt} for {len(kept)} of {len(groups)} "
        f"prompts; the kept answer scores {statistics.fmean(spread) if spread else 0:.4g} above its group's mean"
        + (dropped if too_toxic else "")
    )
    return kept


def sft_rows(tokenizer: Any, rows: list[Demonstration], settings: PolicySettings) -> list[dict[str, Any]]:
    """Rows in TRL's prompt-completion form, cut to fit (the prompt keeps its end)."""
    out = []
    for row in rows:
        completion = fit_text(tokenizer, row.completion.strip(), settings.max_completion_tokens, keep="start")
        if not completion.strip():
            continue
        if settings.prompt_format == "chat":
            prompt = fit_messages(tokenizer, messages_from_transcript(row.prompt), settings.max_prompt_tokens)
            out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]})
        else:
            out.append(
                {"prompt": fit_text(tokenizer, row.prompt, settings.max_prompt_tokens), "completion": " " + completion}
            )
    return out


def train_sft(
    model: Any,
    tokenizer: Any,
    rows: list[Demonstration],
    settings: PolicySettings,
    lora: Any,
    run: RunLog,
    out: Path,
) -> Any:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = sft_rows(tokenizer, rows, settings)
    if len(dataset) < 1:
        raise InvalidInput("no demonstration has a non-empty answer to learn from")
    config = SFTConfig(
        output_dir=str(out / "trainer"),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        max_length=settings.max_prompt_tokens + settings.max_completion_tokens + 32,
        completion_only_loss=True,
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

    def on_log(step: int, logs: dict[str, float], _model: Any) -> dict[str, float | None]:
        return {"loss": logs.get("loss"), "token_accuracy": logs.get("mean_token_accuracy")}

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(dataset),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[make_callback(run, on_log)],
    )
    run.job.progress(0.35, f"fine-tuning {settings.steps} steps on {len(dataset)} demonstrations")
    quiet(trainer)
    trainer.train()
    return trainer
