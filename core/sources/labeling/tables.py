"""Labeling tasks: items with generated candidates, the key ids that label them, and leases.

An assignment is one of an item's ``rankings_required`` slots: ``(item_id, slot)`` is unique, so an
item is never over-assigned even when labelers ask at the same moment, and ``(item_id, key_id)``
is unique, so a labeler never holds (or ranks) the same item twice. A lease that expires before
its ranking arrives is taken over by the next labeler who asks (a conditional update).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class LabelingTask(SQLModel, table=True):
    __tablename__ = "labeling_tasks"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    instructions: str = Field(sa_type=Text)
    model: str = Field(max_length=100)
    n: int = 3  # candidates per item
    rankings_required: int = 2  # distinct labelers per item
    sampling: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # temperature, max_tokens, seed
    lease_seconds: int = 900
    status: str = Field(default="generating", max_length=20, index=True)  # generating, ready, failed
    job_id: str | None = Field(default=None, max_length=40)
    excluded_labelers: list[str] = Field(default_factory=list, sa_type=JSON)  # left out of training data
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LabelingItem(SQLModel, table=True):
    __tablename__ = "labeling_items"

    id: str = Field(primary_key=True, max_length=40)
    task_id: str = Field(foreign_key="labeling_tasks.id", index=True, max_length=40)
    position: int = 0
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    source: str | None = Field(default=None, max_length=100)  # the conversation it came from, if any
    request_id: str | None = Field(default=None, foreign_key="chat_requests.id", index=True, max_length=60)


class LabelingLabeler(SQLModel, table=True):
    __tablename__ = "labeling_labelers"

    task_id: str = Field(foreign_key="labeling_tasks.id", primary_key=True, max_length=40)
    key_id: str = Field(primary_key=True, max_length=40)
    added_by: str | None = Field(default=None, max_length=40)
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LabelingAssignment(SQLModel, table=True):
    __tablename__ = "labeling_assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "slot", name="uq_labeling_assignment_slot"),
        UniqueConstraint("item_id", "key_id", name="uq_labeling_assignment_labeler"),
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(foreign_key="labeling_tasks.id", index=True, max_length=40)
    item_id: str = Field(foreign_key="labeling_items.id", index=True, max_length=40)
    slot: int
    key_id: str = Field(max_length=40, index=True)
    status: str = Field(default="leased", max_length=20)  # leased, done
    leased_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    feedback_id: str | None = Field(default=None, max_length=40)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
