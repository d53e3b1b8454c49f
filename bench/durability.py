"""What durable commits cost on SQLite: commits a second of a feedback-sized row with
``synchronous=FULL`` (the default: every commit reaches the disk) against ``NORMAL`` (synced at
checkpoints only), taking turns, on the same disk.

    .venv/bin/python bench/durability.py [--commits 300] [--rounds 4] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from espalier.core.infrastructure.db.engine import create_db_engine

ROW = json.dumps({"kind": "ranking", "candidates": [{"completion_id": f"cmpl-{i}", "rank": i} for i in range(4)]})


def commits_per_second(folder: Path, mode: str, commits: int) -> float:
    path = folder / f"{mode.lower()}.db"
    engine = create_db_engine(f"sqlite:///{path}", sqlite_synchronous=mode)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, payload TEXT)"))
    started = time.perf_counter()
    for _ in range(commits):
        with engine.begin() as connection:  # one acknowledged submission = one commit
            connection.execute(text("INSERT INTO feedback (payload) VALUES (:p)"), {"p": ROW})
    elapsed = time.perf_counter() - started
    engine.dispose()
    return commits / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None, help="a folder on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.dir))
    print(f"load average at start: {os.getloadavg()}; folder {folder}")
    rates: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    for round_ in range(args.rounds):
        for mode in ("FULL", "NORMAL") if round_ % 2 == 0 else ("NORMAL", "FULL"):
            rates[mode].append(commits_per_second(folder, mode, args.commits))
    full, normal = (statistics.median(rates[m]) for m in ("FULL", "NORMAL"))
    print(f"synchronous=FULL   {full:8.0f} commits/s (median of {args.rounds} runs of {args.commits})")
    print(f"synchronous=NORMAL {normal:8.0f} commits/s")
    print(f"FULL / NORMAL: {full / normal:.2f}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
