"""The automatic reward retrain never runs twice at once across processes: two Platform instances on
one database (SQLite and PostgreSQL) race to submit it, and the database lets exactly one through."""

from __future__ import annotations

import threading

import pytest

from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from espalier.plugins.reward_models.trainer import JOB_KIND, maybe_retrain


@pytest.fixture
def two_platforms(tmp_path, database_url):
    platforms = []
    for name in ("a", "b"):
        settings = Settings(home=tmp_path / name, database_url=database_url, reward_retrain_after_pairs=3)
        platforms.append(Platform(settings, load_entry_points=False))
    platforms[0].start(run_jobs=False)  # migrates; no workers, so submitted jobs stay queued
    platforms[1].start(run_jobs=False, migrate=False)
    yield platforms
    for platform in platforms:
        platform.close()


def race(platforms, action, rounds: int):
    results, errors = [], []
    barrier = threading.Barrier(len(platforms) * rounds)

    def go(platform):
        try:
            barrier.wait()
            results.append(action(platform))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(p,)) for p in platforms for _ in range(rounds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_two_platforms_on_one_database_submit_one_retrain(two_platforms):
    a, b = two_platforms
    lines = [f'{{"prompt": "q{i}", "chosen": "good answer {i}", "rejected": "bad {i}"}}' for i in range(8)]
    a.pairs.import_lines(lines, source="test")
    submitted = race(two_platforms, maybe_retrain, rounds=3)
    assert len([job for job in submitted if job]) == 1
    queued = b.jobs.list(kind=JOB_KIND)
    assert len(queued) == 1 and queued[0].params["auto"] is True and queued[0].params["pairs_at_submit"] == 8
    # once it has finished, the next retrain may be submitted again (by either process)
    a.jobs.cancel(queued[0].id)
    again = race(two_platforms, lambda p: p.jobs.submit_exclusive(JOB_KIND, {"auto": True}), rounds=2)
    assert len([job for job in again if job is not None]) == 1
