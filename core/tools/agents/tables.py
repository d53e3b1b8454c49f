"""Agent runs and their steps (the stored trace of every ReAct, PAL or plugin agent run), and chain
sessions with their turns (the memory of named chains)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class AgentRun(SQLModel, table=True):
    __tablename__ = "agent_runs"

    id: str = Field(primary_key=True, max_length=40)
    agent: str = Field(max_length=64, index=True)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    question: str = Field(sa_type=Text)
    model: str | None = Field(default=None, max_length=64)
    tools: list[str] = Field(default_factory=list, sa_type=JSON)
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(default="running", max_length=20, index=True)  # running, ok, step_limit, time_limit, error
    answer: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    steps: int = 0
    duration_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AgentStep(SQLModel, table=True):
    __tablename__ = "agent_steps"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_agent_steps_run_number"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="agent_runs.id", max_length=40, index=True)
    number: int
    thought: str = Field(default="", sa_type=Text)
    action: str | None = Field(default=None, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    observation: str = Field(default="", sa_type=Text)
    is_error: bool = False
    # the step whose observation the model had last seen when it chose this action (None: the question)
    led_by: int | None = None
    # the injection guardrail's score of this step's observation, when that plugin is on
    injection_score: float | None = None
    model_ms: float = 0.0
    tool_ms: float = 0.0
    raw: str = Field(default="", sa_type=Text)  # the model's text for this step, as generated
    extra: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
