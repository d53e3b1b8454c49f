"""Traffic figures for the operator console, read from the stored chat requests.

Hourly buckets over a recent window: requests, errors, tokens and latency percentiles. Only the
few columns needed are read, and only for the window asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy import func
from sqlmodel import select

from .db.engine import session_scope
from .db.tables import ChatRequestRecord, Job, utcnow


@dataclass
class HourlyUsage:
    hour: datetime
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation, so the figure is a latency that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


class UsageService:
    def __init__(self, engine: Engine):
        self.engine = engine

    def hourly(self, hours: int = 24, *, now: datetime | None = None) -> list[HourlyUsage]:
        hours = max(1, min(hours, 24 * 14))
        end = (now or utcnow()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=hours)
        buckets = [HourlyUsage(hour=start + timedelta(hours=i)) for i in range(hours)]
        latencies: list[list[float]] = [[] for _ in buckets]
        columns = (ChatRequestRecord.created_at, ChatRequestRecord.latency_ms, ChatRequestRecord.status,
                   ChatRequestRecord.prompt_tokens, ChatRequestRecord.completion_tokens)  # fmt: skip
        with session_scope(self.engine) as session:
            rows = session.exec(select(*columns).where(ChatRequestRecord.created_at >= start))
            for created_at, latency_ms, status, prompt_tokens, completion_tokens in rows:
                index = int((created_at - start).total_seconds() // 3600)
                if not 0 <= index < hours:
                    continue
                bucket = buckets[index]
                bucket.requests += 1
                bucket.failed += status not in ("ok", "cancelled")
                bucket.prompt_tokens += prompt_tokens
                bucket.completion_tokens += completion_tokens
                latencies[index].append(latency_ms)
        for bucket, values in zip(buckets, latencies, strict=True):
            bucket.latency_p50_ms = percentile(values, 0.5)
            bucket.latency_p95_ms = percentile(values, 0.95)
        return buckets

    def jobs_by_status(self) -> dict[str, int]:
        with session_scope(self.engine) as session:
            return dict(session.exec(select(Job.status, func.count()).group_by(Job.status)).all())
