"""Agreement between labelers who ranked the same requests (Kendall's tau-b, which handles ties).

A flagged candidate counts as ranked below every unflagged one, as it does for pairs. Per request,
every two labelers give one tau; a labeler's score is the mean tau against the others on the
items they share. Labelers whose mean is far below the rest (``outlier_gap``) are listed so an
operator can leave them out of training (``exclude_labelers``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from ..db.engine import session_scope
from ..db.feedback_tables import FeedbackRecord


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """tau-b of two rankings of the same items; None when either ranks everything equal."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return None if denominator == 0 else (concordant - discordant) / denominator


def effective_ranks(candidates: Sequence[dict[str, Any]]) -> list[float]:
    n = len(candidates)
    return [c["rank"] + (n if c.get("unacceptable") else 0) for c in candidates]


def agreement(engine: Engine, *, outlier_gap: float = 0.3) -> dict[str, Any]:
    with session_scope(engine) as session:
        rows = list(session.exec(select(FeedbackRecord).where(FeedbackRecord.kind == "ranking")
                                 .order_by(FeedbackRecord.created_at, FeedbackRecord.id)))  # fmt: skip
    latest: dict[str, dict[str, list[float]]] = {}  # request -> labeler -> ranks (latest wins)
    for row in rows:
        latest.setdefault(row.request_id, {})[row.key_id] = effective_ranks(row.payload["candidates"])
    per_item, per_labeler = [], {}
    for request_id, by_labeler in latest.items():
        taus = []
        for (first, ranks_a), (second, ranks_b) in combinations(sorted(by_labeler.items()), 2):
            tau = kendall_tau_b(ranks_a, ranks_b)
            if tau is None:
                continue
            taus.append(tau)
            for labeler in (first, second):
                per_labeler.setdefault(labeler, []).append(tau)
        if taus:
            per_item.append({"request_id": request_id, "labelers": len(by_labeler), "mean_tau": round(sum(taus) / len(taus), 4)})
    overall = [item["mean_tau"] for item in per_item]
    labelers = {k: {"items_shared": len(v), "mean_tau": round(sum(v) / len(v), 4)} for k, v in per_labeler.items()}
    for key, stats in labelers.items():
        others = [s["mean_tau"] for other, s in labelers.items() if other != key]
        stats["below_consensus"] = bool(others) and stats["mean_tau"] < sum(others) / len(others) - outlier_gap
    return {"mean_tau": round(sum(overall) / len(overall), 4) if overall else None, "items": per_item,
            "labelers": labelers, "outlier_gap": outlier_gap}  # fmt: skip
