"""Agreement between labelers who ranked the same requests: Kendall's tau-b (which handles ties) and
Krippendorff's alpha (ordinal, the `krippendorff` package).

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

from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.sources.feedback.tables import FeedbackRecord


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
    """Agreement over every ranking stored (all requests, all keys)."""
    return agreement_for(engine, outlier_gap=outlier_gap)


def agreement_for(
    engine: Engine,
    *,
    request_ids: Sequence[str] | None = None,
    feedback_ids: Sequence[str] | None = None,
    outlier_gap: float = 0.3,
) -> dict[str, Any]:
    """Agreement over the rankings of some requests (a labeling task's items), or of all of them."""
    with session_scope(engine) as session:
        query = select(FeedbackRecord).where(FeedbackRecord.kind == "ranking")
        if request_ids is not None:
            query = query.where(FeedbackRecord.request_id.in_(list(request_ids)))
        if feedback_ids is not None:
            query = query.where(FeedbackRecord.id.in_(list(feedback_ids)))
        rows = list(session.exec(query.order_by(FeedbackRecord.created_at, FeedbackRecord.id)))
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
            per_item.append(
                {"request_id": request_id, "labelers": len(by_labeler), "mean_tau": round(sum(taus) / len(taus), 4)}
            )
    overall = [item["mean_tau"] for item in per_item]
    labelers = {k: {"items_shared": len(v), "mean_tau": round(sum(v) / len(v), 4)} for k, v in per_labeler.items()}
    for key, stats in labelers.items():
        others = [s["mean_tau"] for other, s in labelers.items() if other != key]
        stats["below_consensus"] = bool(others) and stats["mean_tau"] < sum(others) / len(others) - outlier_gap
        stats["alpha_without"] = _round(krippendorff_alpha(latest, leave_out=key))
    return {
        "mean_tau": round(sum(overall) / len(overall), 4) if overall else None,
        "alpha": _round(krippendorff_alpha(latest)),
        "items": per_item,
        "labelers": labelers,
        "outlier_gap": outlier_gap,
    }


def krippendorff_alpha(latest: dict[str, dict[str, list[float]]], *, leave_out: str | None = None) -> float | None:
    """Ordinal Krippendorff's alpha; a unit is one candidate of one request, a value its effective rank.

    ``leave_out`` gives alpha without one labeler: when it rises well above the overall alpha,
    that labeler pulls agreement down. None when there is too little to measure (fewer than two
    labelers on any unit, or a single value everywhere).
    """
    import krippendorff
    import numpy as np

    labelers = sorted({k for by_labeler in latest.values() for k in by_labeler} - {leave_out})
    units = [
        (request_id, index)
        for request_id, by_labeler in sorted(latest.items())
        for index in range(max(len(r) for r in by_labeler.values()))
    ]
    if len(labelers) < 2 or not units:
        return None
    data = np.full((len(labelers), len(units)), np.nan)
    for row, labeler in enumerate(labelers):
        for column, (request_id, index) in enumerate(units):
            ranks = latest[request_id].get(labeler)
            if ranks is not None and index < len(ranks):
                data[row, column] = ranks[index]
    if (np.sum(~np.isnan(data), axis=0) >= 2).sum() == 0 or len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    try:
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(value) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
