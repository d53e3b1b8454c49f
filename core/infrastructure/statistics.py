"""Bootstrap intervals: how a learning claim is stated (n, the estimate, a 95% interval).

Pure Python and seeded, so a report is reproducible and core needs no numerical library. A
*paired* interval resamples items (prompts, pairs), keeping each item's two measurements
together: two versions answering the same prompts are compared prompt by prompt, which is far
tighter than comparing two independent means.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` items with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON-ready: an unbounded side (one item: no interval) is ``None``."""
        values = asdict(self)
        return {
            k: (None if math.isinf(v) else round(v, digits)) if isinstance(v, float) else v for k, v in values.items()
        }

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n})"


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval (resampling the items)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to bootstrap")
    data = [float(v) for v in values]
    mean = math.fsum(data) / n
    if n == 1:  # one item says nothing about the spread: an interval that excludes nothing
        return Interval(mean, -math.inf, math.inf, 1, confidence)
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choices(data, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[max(0, round(tail * resamples))]
    high = means[min(resamples - 1, round((1 - tail) * resamples) - 1)]
    return Interval(mean, min(low, mean), max(high, mean), n, confidence)


def paired_difference(
    candidate: Sequence[float], baseline: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of ``candidate[i] - baseline[i]`` with its paired bootstrap interval."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired samples differ in length ({len(candidate)} vs {len(baseline)})")
    return bootstrap_mean([c - b for c, b in zip(candidate, baseline, strict=True)], resamples=resamples, seed=seed)
