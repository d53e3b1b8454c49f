"""Hybrid search: the vector and keyword rankings of a query fused into one."""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(*rankings: Sequence[str], k: int = 60) -> list[tuple[str, float]]:
    """Fuses ranked id lists: each id scores the sum of 1 / (k + rank) over the lists it is in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: pair[1], reverse=True)
