"""The jobs table: the record of every job, its log lines and its metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=100, index=True)
    status: str = Field(default="queued", max_length=20, index=True)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    progress: float = 0.0
    message: str = Field(default="", sa_type=Text)
    result: Any | None = Field(default=None, sa_type=JSON)
    error: str | None = Field(default=None, sa_type=Text)
    artifact_dir: str | None = None
    cancel_requested: bool = False
    worker_id: str | None = Field(default=None, max_length=200)
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class JobLog(SQLModel, table=True):
    __tablename__ = "job_logs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40, ondelete="CASCADE")
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    message: str = Field(sa_type=Text)


class JobMetric(SQLModel, table=True):
    """One step's numbers of a job (loss, reward, KL...): the curves the console plots."""

    __tablename__ = "job_metrics"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40, ondelete="CASCADE")
    step: int
    values: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
