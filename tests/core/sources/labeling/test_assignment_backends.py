"""Assignment under contention on both backends (SQLite and the real PostgreSQL): labelers asking at
the same moment never over-assign an item, and expired leases are taken over by exactly one."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import select

from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from espalier.core.sources.labeling.tables import LabelingAssignment, LabelingItem
from tests.core.sources.feedback.helpers import stored_request


def race(calls):
    results, errors = [], []
    barrier = threading.Barrier(len(calls))

    def go(call):
        try:
            barrier.wait()
            results.append(call())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def slots(platform, task_id):
    with session_scope(platform.engine) as session:
        rows = list(session.exec(select(LabelingAssignment).where(LabelingAssignment.task_id == task_id)))
    per_item: dict[str, set[str]] = {}
    for row in rows:
        per_item.setdefault(row.item_id, set()).add(row.key_id)
    return rows, per_item


def test_no_over_assignment_and_one_takeover_per_expired_lease(tmp_path, database_url):
    platform = Platform(Settings(home=tmp_path / "home", database_url=database_url), load_entry_points=False)
    platform.start(run_jobs=False)
    try:
        operator = Principal("op", "op", "operator")
        labelers = [platform.keys.create(name=f"l{i}", role="user").record.id for i in range(8)]
        task = platform.labeling.create(
            operator, name="race", prompts=["a", "b", "c"], n=2, rankings_required=2, labelers=labelers
        )
        with session_scope(platform.engine) as session:  # candidates stored directly: no model needed here
            items = list(session.exec(select(LabelingItem).where(LabelingItem.task_id == task.id)))
        for item in items:
            request_id, _ = stored_request(platform, "op", item.messages[0]["content"], ["x", "y"])
            with session_scope(platform.engine) as session:
                session.execute(update(LabelingItem).where(LabelingItem.id == item.id).values(request_id=request_id))
        got = race([lambda k=k: platform.labeling.next_item(task.id, Principal(k, k, "user")) for k in labelers])
        rows, per_item = slots(platform, task.id)
        assert len(rows) == 6 and all(len(keys) == 2 for keys in per_item.values()) and got.count(None) == 2
        # every lease lapses; the two labelers without work ask three times each at once for the freed slots
        with session_scope(platform.engine) as session:
            session.execute(update(LabelingAssignment).values(expires_at=utcnow() - timedelta(seconds=1)))
        idle = [k for k in labelers if all(k not in keys for keys in per_item.values())]
        retry = race([lambda k=k: platform.labeling.next_item(task.id, Principal(k, k, "user")) for k in idle * 3])
        rows, per_item = slots(platform, task.id)
        assert len(rows) == 6 and all(len(keys) == 2 for keys in per_item.values())
        assert all(item is not None for item in retry)
        # each of a labeler's concurrent asks may take a different lapsed slot, never two of one item
        assert 2 <= sum(1 for keys in per_item.values() for k in keys if k in idle) <= 6
    finally:
        platform.close()
