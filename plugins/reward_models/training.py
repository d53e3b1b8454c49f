"""Train a reward model on preference pairs with the pairwise loss -log(sigmoid(r_chosen - r_rejected)).

A sequence-classification head with one output on the shipped MiniLM encoder. The held-out split
is by a hash of each pair, so a pair held out once stays held out in every retrain and two
versions can be compared on the same pairs. A small loop rather than TRL's RewardTrainer: it
keeps cancellation, progress and the artifact format in our hands and adds no dependency.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.infrastructure.jobs.service import JobCancelled
from espalier.core.sources.feedback.pairs import Pair, pair_sha256, snapshot_sha256
from espalier.core.sources.reward.baselines import compare_with_rules, correctness
from espalier.core.sources.reward.settings import RewardSettings
from espalier.plugins.common.training_loop import Callbacks, Schedule, Step, base_encoder_path, train_steps
from espalier.plugins.reward_models.scoring import CARD_NAME, encode, rewards

MAX_RECORDED_STEPS = 1000  # metric rows per run at most (every k-th step beyond that)


class TrainingCancelled(JobCancelled):
    """Training stopped because the job was cancelled; nothing was saved."""


def split(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Held out by hash: stable across retrains. Both sides get at least one pair."""
    keyed = sorted(
        ((int(pair_sha256(p.prompt, p.chosen, p.rejected)[:8], 16) / 0xFFFFFFFF, i) for i, p in enumerate(pairs))
    )
    held = {i for value, i in keyed if value < fraction}
    if not held:
        held = {keyed[0][1]}
    if len(held) == len(pairs):
        held.discard(keyed[-1][1])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Accuracy (ties count half), and calibration of P(chosen wins) = sigmoid(r_c - r_r)."""
    n = len(chosen)
    probs = [1 / (1 + math.exp(-max(-50.0, min(50.0, c - r)))) for c, r in zip(chosen, rejected, strict=True)]
    accuracy = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)) / n
    brier = sum((1 - p) ** 2 for p in probs) / n
    # ECE on the confidence of the predicted winner against how often that winner is right.
    ece, table = 0.0, []
    for b in range(bins):
        lo, hi = 0.5 + b * 0.5 / bins, 0.5 + (b + 1) * 0.5 / bins
        members = [p for p in probs if lo <= max(p, 1 - p) < hi or (b == bins - 1 and max(p, 1 - p) == 1.0)]
        if members:
            confidence = sum(max(p, 1 - p) for p in members) / len(members)
            right = sum(1 for p in members if p > 0.5) / len(members)
            ece += len(members) / n * abs(confidence - right)
            table.append({"confidence": round(confidence, 4), "accuracy": round(right, 4), "pairs": len(members)})
    return {
        "accuracy": round(accuracy, 4),
        "held_out_pairs": n,
        "brier": round(brier, 4),
        "ece": round(ece, 4),
        "mean_margin": round(sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n, 4),
        "calibration": table,
    }


def evaluate(score: Callable[[list[str], list[str]], list[float]], pairs: Sequence[Pair]) -> dict[str, Any]:
    """Held-out metrics, with the accuracy's bootstrap interval and the trivial rules on the same pairs."""
    prompts = [p.prompt for p in pairs]
    return evaluate_scores(
        score(prompts, [p.chosen for p in pairs]), score(prompts, [p.rejected for p in pairs]), pairs
    )


def evaluate_scores(chosen: Sequence[float], rejected: Sequence[float], pairs: Sequence[Pair]) -> dict[str, Any]:
    """:func:`evaluate` on scores already computed for each pair's two answers."""
    return pairwise_metrics(chosen, rejected) | compare_with_rules(correctness(chosen, rejected), pairs)


def prepare_pairs(pairs: Sequence[Pair], settings: RewardSettings) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Check there is enough to train, sample ``max_pairs``, and split: (pairs, train, held out).

    AI pairs (constitutional AI) only train: the held-out pairs that decide promotion are human
    (or imported) judgements, so a model is never rewarded for agreeing with its own labels."""
    if len(pairs) < settings.min_pairs:
        raise InvalidInput(
            f"only {len(pairs)} preference pairs; training needs at least {settings.min_pairs}. "
            "Collect rankings or thumbs, or import pairs (POST /api/pairs/import)",
            code="too_few_pairs",
        )
    pairs = list(pairs)
    if settings.max_pairs is not None and len(pairs) > settings.max_pairs:
        pairs = random.Random(settings.seed).sample(pairs, settings.max_pairs)
    ai_pairs = [p for p in pairs if p.origin == "ai"]
    human = [p for p in pairs if p.origin != "ai"]
    if len(human) < 2:
        raise InvalidInput(
            f"only {len(human)} human or imported preference pairs; the held-out evaluation needs at "
            "least 2 (AI pairs only train)",
            code="too_few_pairs",
        )
    train, held = split(human, settings.holdout_fraction)
    return pairs, train + ai_pairs, held


def train_reward_model(
    pairs: Sequence[Pair],
    out_dir: str | Path,
    settings: RewardSettings,
    *,
    base_model: str | None = None,
    init_from: str | Path | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    metrics: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate on the held-out pairs, save the artifact; return its card.

    ``init_from`` (a reward model artifact of this format) warm-starts: its weights are where
    training begins, so a retrain refines the current version rather than starting over.

    ``metrics(step, **values)`` receives the curves: each step's pairwise ``loss``, its smoothed
    ``loss_avg``, the batch ``accuracy`` and mean reward ``margin``, the learning rate, and at the
    end the held-out ``eval_accuracy`` (a job passes its own ``job.metrics``).
    """
    calls = Callbacks.of(progress, log, cancelled, metrics)
    pairs, train, held = prepare_pairs(pairs, settings)
    ai_pairs = [p for p in train if p.origin == "ai"]

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = base_model or base_encoder_path()
    start_from = str(init_from) if init_from is not None else base
    torch.manual_seed(settings.seed)
    from espalier.plugins.common.gguf import LOAD_LOCK

    with LOAD_LOCK:  # one transformers load at a time in the process (see LOAD_LOCK)
        tokenizer = AutoTokenizer.from_pretrained(start_from)
        model = AutoModelForSequenceClassification.from_pretrained(start_from, num_labels=1)
    if init_from is not None:
        calls.log(f"warm start from {init_from}")
    schedule = Schedule(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        max_steps=settings.max_steps,
    )
    total = schedule.total_steps(len(train))
    calls.log(f"training on {len(train)} pairs, holding out {len(held)}, {total} steps")
    every = max(1, math.ceil(total / MAX_RECORDED_STEPS))  # a long run keeps a readable curve

    def pairwise_loss(rows: list[int]) -> tuple[Any, Any]:
        batch = [train[i] for i in rows]
        prompts = [p.prompt for p in batch] * 2
        texts = [p.chosen for p in batch] + [p.rejected for p in batch]
        scores = model(**encode(tokenizer, prompts, texts, max_length=settings.max_length)).logits[:, 0]
        margin = scores[: len(batch)] - scores[len(batch) :]
        # Each pair's loss counts by its weight (AI pairs weigh ESPALIER_AI_PAIR_WEIGHT).
        weights = torch.tensor([p.weight for p in batch], dtype=margin.dtype)
        loss = -(weights * torch.nn.functional.logsigmoid(margin)).sum() / weights.sum().clamp_min(1e-8)
        return loss, margin

    def after_step(step: Step) -> None:
        if step.number % every == 0 or step.number == total or step.number == 1:
            margin = step.output
            with torch.no_grad():
                accuracy = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()
            calls.metrics(
                step.number,
                loss=step.loss,
                loss_avg=step.loss_avg,
                accuracy=accuracy,
                margin=margin.mean().item(),
                lr=step.learning_rate,
            )
        calls.progress(0.85 * step.number / total, f"step {step.number}/{total} loss {step.loss_avg:.3f}")

    done = train_steps(
        model,
        len(train),
        schedule,
        pairwise_loss,
        after_step,
        calls,
        cancelled_error=TrainingCancelled,
        cancel_note="; nothing saved",
    )
    step, loss_avg, seconds = done.steps, done.loss_avg, done.seconds
    pairs_seen = min(step * settings.batch_size, len(train) * settings.epochs)
    calls.log(
        f"trained {step} steps in {seconds:.1f}s ({pairs_seen / max(seconds, 1e-9):.1f} pairs/s), loss {loss_avg:.3f}"
    )

    calls.progress(0.9, "evaluating on held-out pairs")
    model.eval()
    metrics = evaluate(lambda p, c: rewards(model, tokenizer, p, c, max_length=settings.max_length), held)
    metrics["train_pairs_per_second"] = round(pairs_seen / max(seconds, 1e-9), 2)
    calls.metrics(step, eval_accuracy=metrics["accuracy"], eval_margin=metrics["mean_margin"])
    if calls.cancelled():
        raise TrainingCancelled("training cancelled during evaluation; nothing saved")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = {
        "format": "espalier-reward/1",
        "base_model": base,
        "warm_start": str(init_from) if init_from is not None else None,
        "max_length": settings.max_length,
        "data": {
            "sha256": snapshot_sha256(pairs),
            "pairs": len(pairs),
            "trained_on": len(train),
            "held_out": len(held),
            "by_origin": origins_of(pairs),
            "ai_pair_weight": ai_pairs[0].weight if ai_pairs else None,
        },
        "held_out": [pair_sha256(p.prompt, p.chosen, p.rejected) for p in held],
        "settings": asdict(settings) | {"kind": "cross-encoder"},
        "metrics": metrics,
        "steps": step,
        "final_loss": round(loss_avg, 4),
        "train_seconds": round(seconds, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / CARD_NAME).write_text(json.dumps(card, indent=2))
    card["held_out_pairs"] = held  # for the caller's comparison; not written
    calls.progress(1.0, "saved")
    return card


def origins_of(pairs: Sequence[Pair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.origin] = counts.get(pair.origin, 0) + 1
    return counts
