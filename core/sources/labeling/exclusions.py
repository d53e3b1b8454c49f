"""Which labelers' feedback a labeling task leaves out of preference pairs (and so of training)."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from espalier.core.sources.labeling.tables import LabelingItem, LabelingTask


def task_exclusions(session: Any, request_ids: set[str]) -> dict[str, set[str]]:
    """request id -> key ids whose feedback on it a labeling task leaves out of training."""
    if not request_ids:
        return {}
    rows = session.exec(
        select(LabelingItem.request_id, LabelingTask.excluded_labelers)
        .join(LabelingTask, LabelingTask.id == LabelingItem.task_id)
        .where(LabelingItem.request_id.in_(request_ids))
    )
    return {request_id: set(excluded or []) for request_id, excluded in rows if excluded}
