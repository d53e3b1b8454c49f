"""Traffic figures for the operator console, computed in the database.

Hourly buckets over a recent window: requests, errors, tokens, latency percentiles, guardrail
blocks and feedback. Every figure is an aggregate the database computes (percentiles with window
functions, which SQLite and PostgreSQL both have), so the page costs one query per table
whatever the number of stored requests, and no row travels to Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, case, cast, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.jobs.tables import Job
from espalier.core.interface.guardrails.tables import GuardrailEvent
from espalier.core.sources.conversations.tables import ChatRequestRecord
from espalier.core.sources.feedback.tables import FeedbackRecord

MAX_HOURS = 24 * 14


@dataclass
class HourlyUsage:
    hour: datetime
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    guardrail_blocks: int = 0
    guardrail_flags: int = 0
    feedback: int = 0


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation, so the figure is a latency that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


def hour_of(column: Any, dialect: str) -> Any:
    """The UTC hour a timestamp falls in, as the database computes it (text on SQLite)."""
    if dialect == "sqlite":  # UTC naive 'YYYY-MM-DD HH:MM:SS[.ffffff]' strings: the first 13 characters
        return func.substr(column, 1, 13)  # several times cheaper per row than strftime()
    if dialect == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", column))
    raise NotImplementedError(f"hourly figures are not written for the {dialect} dialect")


def _as_hour(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite's 'YYYY-MM-DD HH'
        value = datetime.strptime(value, "%Y-%m-%d %H")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _nearest_rank(count: Any, percent: int) -> Any:
    # ceil(percent/100 * n) in integer arithmetic, the same on both backends
    return (count * percent + 99) // 100


class UsageService:
    def __init__(self, engine: Engine):
        self.engine = engine

    def hourly(self, hours: int = 24, *, now: datetime | None = None) -> list[HourlyUsage]:
        hours = max(1, min(hours, MAX_HOURS))
        end = (now or utcnow()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=hours)
        buckets = {start + timedelta(hours=i): HourlyUsage(hour=start + timedelta(hours=i)) for i in range(hours)}
        dialect = self.engine.dialect.name
        with session_scope(self.engine) as session:
            for row in session.execute(self._requests_query(dialect, start, end)):
                bucket = buckets.get(_as_hour(row.hour))
                if bucket is None:
                    continue
                bucket.requests, bucket.failed = int(row.requests), int(row.failed or 0)
                bucket.prompt_tokens, bucket.completion_tokens = (
                    int(row.prompt_tokens or 0),
                    int(row.completion_tokens or 0),
                )
                bucket.latency_p50_ms = None if row.p50 is None else float(row.p50)
                bucket.latency_p95_ms = None if row.p95 is None else float(row.p95)
            hour = hour_of(GuardrailEvent.at, dialect).label("hour")
            events = (
                sa_select(hour, GuardrailEvent.action, func.count().label("n"))
                .where(
                    GuardrailEvent.at >= start, GuardrailEvent.at < end, GuardrailEvent.action.in_(("block", "flag"))
                )
                .group_by(hour, GuardrailEvent.action)
            )
            for row in session.execute(events):
                bucket = buckets.get(_as_hour(row.hour))
                if bucket is not None:
                    if row.action == "block":
                        bucket.guardrail_blocks = int(row.n)
                    else:
                        bucket.guardrail_flags = int(row.n)
            hour = hour_of(FeedbackRecord.created_at, dialect).label("hour")
            feedback = (
                sa_select(hour, func.count().label("n"))
                .where(FeedbackRecord.created_at >= start, FeedbackRecord.created_at < end)
                .group_by(hour)
            )
            for row in session.execute(feedback):
                bucket = buckets.get(_as_hour(row.hour))
                if bucket is not None:
                    bucket.feedback = int(row.n)
        return list(buckets.values())

    @staticmethod
    def _requests_query(dialect: str, start: datetime, end: datetime) -> Any:
        """Per hour: counts and sums, and the nearest-rank p50/p95 of latency through row_number()."""
        table = ChatRequestRecord
        rows = (
            sa_select(
                hour_of(table.created_at, dialect).label("hour"),
                table.latency_ms,
                table.status,
                table.prompt_tokens,
                table.completion_tokens,
            )
            .where(table.created_at >= start, table.created_at < end)
            .subquery()
        )
        ranked = sa_select(
            rows,
            func.row_number().over(partition_by=rows.c.hour, order_by=rows.c.latency_ms).label("position"),
            func.count().over(partition_by=rows.c.hour).label("size"),
        ).subquery()
        size = cast(ranked.c.size, Integer)
        return sa_select(
            ranked.c.hour,
            func.count().label("requests"),
            func.sum(case((ranked.c.status.in_(("ok", "cancelled")), 0), else_=1)).label("failed"),
            func.sum(ranked.c.prompt_tokens).label("prompt_tokens"),
            func.sum(ranked.c.completion_tokens).label("completion_tokens"),
            func.max(case((ranked.c.position == _nearest_rank(size, 50), ranked.c.latency_ms))).label("p50"),
            func.max(case((ranked.c.position == _nearest_rank(size, 95), ranked.c.latency_ms))).label("p95"),
        ).group_by(ranked.c.hour)

    def jobs_by_status(self) -> dict[str, int]:
        with session_scope(self.engine) as session:
            return dict(session.exec(select(Job.status, func.count()).group_by(Job.status)).all())
