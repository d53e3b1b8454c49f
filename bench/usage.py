"""The overview's hourly figures: computed in the database (``UsageService.hourly``: one
aggregate query per table, percentiles with row_number()) against its peer, the previous way of
reading every request of the window into Python and sorting there. Same rows, same run, same
machine; both must give the same numbers.

    .venv/bin/python bench/usage.py [--rows 20000 100000] [--repeat 5] [--postgres URL]

Prints milliseconds per call (median) and the Python/SQL ratio for each row count.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlmodel import select

from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.settings import Settings
from espalier.core.interface.usage import HourlyUsage, percentile
from espalier.core.platform import Platform
from espalier.core.sources.conversations.tables import ChatRequestRecord


def python_hourly(engine, hours: int, now) -> list[HourlyUsage]:
    """The peer: every row of the window into Python, percentiles by sorting there."""
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    buckets = [HourlyUsage(hour=start + timedelta(hours=i)) for i in range(hours)]
    latencies: list[list[float]] = [[] for _ in buckets]
    columns = (
        ChatRequestRecord.created_at,
        ChatRequestRecord.latency_ms,
        ChatRequestRecord.status,
        ChatRequestRecord.prompt_tokens,
        ChatRequestRecord.completion_tokens,
    )
    with session_scope(engine) as session:
        for created_at, latency_ms, status, prompt_tokens, completion_tokens in session.exec(
            select(*columns).where(ChatRequestRecord.created_at >= start, ChatRequestRecord.created_at < end)
        ):
            index = int((created_at - start).total_seconds() // 3600)
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


def seed(engine, rows: int, now) -> None:
    rng = random.Random(0)
    naive = engine.dialect.name == "sqlite"
    stamp = (lambda t: t.replace(tzinfo=None)) if naive else (lambda t: t)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO conversations (id, created_at, updated_at) VALUES ('conv_bench', :t, :t)"),
            {"t": stamp(now)},
        )
        batch = []
        for i in range(rows):
            batch.append(
                {
                    "id": f"req_{i}",
                    "p": rng.randint(5, 500),
                    "c": rng.randint(1, 300),
                    "l": round(rng.lognormvariate(6, 0.6), 3),
                    "s": "ok" if rng.random() > 0.02 else "failed",
                    "t": stamp(now - timedelta(seconds=rng.uniform(0, 86_000))),
                }
            )
            if len(batch) == 5000 or i == rows - 1:
                connection.execute(
                    text(
                        "INSERT INTO chat_requests (id, conversation_id, kind, model, messages, params, prompt_tokens, "
                        "completion_tokens, latency_ms, status, created_at) "
                        "VALUES (:id, 'conv_bench', 'chat', 'm', '[]', '{}', :p, :c, :l, :s, :t)"
                    ),
                    batch,
                )
                batch = []


def timed(call, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(database_url: str, home: Path, rows: int, repeat: int) -> dict[str, float]:
    platform = Platform(Settings(home=home, database_url=database_url), load_entry_points=False)
    platform.start(run_jobs=False)
    try:
        now = utcnow()
        seed(platform.engine, rows, now)
        sql = platform.usage.hourly(24, now=now)
        peer = python_hourly(platform.engine, 24, now)
        for a, b in zip(sql, peer, strict=True):  # the same figures, or the comparison means nothing
            assert (a.requests, a.failed, a.prompt_tokens, a.completion_tokens, a.latency_p50_ms, a.latency_p95_ms) == (
                b.requests,
                b.failed,
                b.prompt_tokens,
                b.completion_tokens,
                b.latency_p50_ms,
                b.latency_p95_ms,
            ), a.hour
        sql_ms = timed(lambda: platform.usage.hourly(24, now=now), repeat)
        python_ms = timed(lambda: python_hourly(platform.engine, 24, now), repeat)
    finally:
        platform.close()
    return {"rows": rows, "sql_ms": sql_ms, "python_ms": python_ms, "ratio": python_ms / sql_ms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL URL whose database may be written (tables are created)")
    args = parser.parse_args()
    print(f"hourly figures over 24 h, median of {args.repeat} calls; peer: rows read into Python")
    print(f"{'backend':<10} {'rows':>8} {'in SQL':>10} {'in Python':>10} {'Python/SQL':>10}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as home:
            targets = [("sqlite", f"sqlite:///{home}/usage.db")] + (
                [("postgres", args.postgres)] if args.postgres else []
            )
            for backend, url in targets:
                result = measure(url, Path(home) / backend, rows, args.repeat)
                print(
                    f"{backend:<10} {rows:>8} {result['sql_ms']:>8.1f}ms {result['python_ms']:>8.1f}ms "
                    f"{result['ratio']:>10.2f}"
                )
                if backend == "postgres":
                    engine = create_engine(url)
                    with engine.begin() as connection:
                        connection.execute(text("DELETE FROM chat_requests WHERE conversation_id = 'conv_bench'"))
                        connection.execute(text("DELETE FROM conversations WHERE id = 'conv_bench'"))
                    engine.dispose()


if __name__ == "__main__":
    main()
