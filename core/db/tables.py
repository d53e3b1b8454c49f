"""Database tables. API schemas are separate classes: never bind a request body to these."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite would otherwise hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(index=True, max_length=200)
    role: str = Field(max_length=20)
    secret_hash: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str | None = Field(default=None, max_length=40)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    actor_key_id: str | None = Field(default=None, max_length=40, index=True)
    actor_name: str | None = Field(default=None, max_length=200)
    action: str = Field(max_length=100, index=True)
    target: str | None = Field(default=None, max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


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


# Models ----------------------------------------------------------------------------------------
class ModelRecord(SQLModel, table=True):
    """A registered model. Its serving version is one of its :class:`ModelVersion` rows."""

    __tablename__ = "models"

    name: str = Field(primary_key=True, max_length=100)
    provider: str = Field(max_length=100)
    source: str = Field(sa_type=Text)
    dtype: str = Field(default="auto", max_length=20)
    context_window: int | None = None
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    description: str = Field(default="", sa_type=Text)
    serving_version: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ModelVersion(SQLModel, table=True):
    """The base weights (``adapter`` empty) or base plus a LoRA adapter (a trained version)."""

    __tablename__ = "model_versions"

    id: str = Field(primary_key=True, max_length=40)
    model: str = Field(foreign_key="models.name", index=True, max_length=100, ondelete="CASCADE")
    label: str = Field(max_length=100)
    adapter: str | None = Field(default=None, sa_type=Text)
    status: str = Field(default="ready", max_length=20)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ServingChange(SQLModel, table=True):
    """One change of a model's serving version (promotion or rollback). The rows still ``active``
    form a stack: promotion pushes, rollback pops, so repeated rollbacks walk back in order."""

    __tablename__ = "serving_history"

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(foreign_key="models.name", index=True, max_length=100, ondelete="CASCADE")
    version_id: str = Field(max_length=40)
    label: str = Field(max_length=100)
    action: str = Field(max_length=20)  # initial, promote, rollback
    active: bool = True
    evaluation_id: str | None = Field(default=None, max_length=40)
    forced: bool = False
    reason: str = Field(default="", sa_type=Text)
    actor_key_id: str | None = Field(default=None, max_length=40)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


# Conversations and what was shown ------------------------------------------------------------------
class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=80)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ChatRequestRecord(SQLModel, table=True):
    """One API call: the messages sent to the model, how it sampled, what it cost."""

    __tablename__ = "chat_requests"

    id: str = Field(primary_key=True, max_length=60)
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=80)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    kind: str = Field(default="chat", max_length=20)
    model: str = Field(max_length=100, index=True)
    model_version: str | None = Field(default=None, max_length=40)
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    template: str | None = Field(default=None, max_length=200)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    status: str = Field(default="ok", max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class CompletionRecord(SQLModel, table=True):
    """One candidate shown to the consumer (``n`` > 1 gives several per request)."""

    __tablename__ = "completions"

    id: str = Field(primary_key=True, max_length=60)
    request_id: str = Field(foreign_key="chat_requests.id", index=True, max_length=60, ondelete="CASCADE")
    index: int = 0
    text: str = Field(default="", sa_type=Text)
    finish_reason: str = Field(default="stop", max_length=20)
    completion_tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PromptTemplate(SQLModel, table=True):
    """A named, versioned prompt: optional system text, worked examples, and a user template."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_prompt_templates_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, index=True)
    version: int = 1
    description: str = Field(default="", sa_type=Text)
    system: str | None = Field(default=None, sa_type=Text)
    examples: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    user: str = Field(default="{{ input }}", sa_type=Text)
    variables: list[str] = Field(default_factory=list, sa_type=JSON)
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


from espalier.core.db.rag_tables import ChunkRecord, CollectionRecord, DocumentRecord  # noqa: E402,F401  (retrieval)
from espalier.core.db import feedback_tables as _feedback_tables  # noqa: E402,F401  (registers the feedback tables)
from espalier.core.db import console_tables  # noqa: E402,F401  (registers the console tables; last, as it imports this module)
from espalier.core.db.agent_tables import AgentRun, AgentStep, ChainSession, ChainTurn  # noqa: E402,F401  (agents, chains, traces)
from espalier.core.db.guardrail_tables import EvaluationRecord, GuardrailEvent, GuardrailFlag  # noqa: E402,F401
from espalier.core.db import labeling_tables as _labeling_tables  # noqa: E402,F401  (labeling tasks, items, labelers, leases)
