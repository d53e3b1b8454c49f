"""The model registry: what can be served, by which provider, at which version; and the loaded
models, shared by every request in the process.

Plugins ship models through ``register_models`` (read-only built-ins); operators add more with
``espalier models add`` or ``POST /api/models``. Every model has versions: ``base`` (the weights
as registered) and later trained ones (base plus a LoRA adapter). One version serves at a time.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import ChatModel, ModelProvider, ModelSpec
from espalier.core.infrastructure.db.base import new_id
from espalier.core.infrastructure.db.engine import READ_ONLY, session_scope
from espalier.core.infrastructure.errors import Conflict, Forbidden, InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.registry import NAME_PATTERN, Registry
from espalier.core.sources.learning.tables import EvaluationRecord
from espalier.core.sources.models.tables import ModelRecord, ModelVersion, ServingChange

log = logging.getLogger("espalier.models")

BASE = "base"
VERSION_SEPARATOR = "@"


def split_model_id(model_id: str) -> tuple[str, str | None]:
    """``name@label`` -> (name, label); a bare name -> (name, None): the serving version."""
    name, separator, label = model_id.partition(VERSION_SEPARATOR)
    if separator and not label:
        raise InvalidInput(
            f"model id {model_id!r} ends in '@': give name@version or the bare name", code="model_not_found"
        )
    return name, label or None


@dataclass
class ModelInfo:
    name: str
    provider: str
    source: str
    dtype: str
    context_window: int | None
    builtin: bool
    plugin: str | None
    serving_version: str
    versions: list[dict[str, Any]] = field(default_factory=list)
    loaded: bool = False
    description: str = ""
    created_at: Any = None


_SERVING = (
    select(ModelRecord, ModelVersion)
    .join(ModelVersion, (ModelVersion.model == ModelRecord.name) & (ModelVersion.id == ModelRecord.serving_version))
    .where(ModelRecord.name == bindparam("name"))
)
_VERSION = (
    select(ModelRecord, ModelVersion)
    .join(ModelVersion, ModelVersion.model == ModelRecord.name)
    .where(
        ModelRecord.name == bindparam("name"),
        (ModelVersion.label == bindparam("version")) | (ModelVersion.id == bindparam("version")),
    )
    .limit(1)
)


class ModelService:
    def __init__(
        self,
        engine: Engine,
        providers: Registry[ModelProvider],
        builtins: Registry[ModelSpec],
        cache_dir: str,
        audit: AuditLog,
        max_loaded_versions: int = 3,
    ):
        self.engine = engine
        self._reads = engine.execution_options(**{READ_ONLY: True})  # deferred BEGIN on SQLite
        self.providers = providers
        self.builtins = builtins
        self.cache_dir = cache_dir
        self.audit = audit
        # (model, version id) -> loaded model, least recently used first
        self._loaded: OrderedDict[tuple[str, str], ChatModel] = OrderedDict()
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        self.max_loaded_versions = max_loaded_versions
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    # Registry ---------------------------------------------------------------------------------
    def sync_builtins(self) -> None:
        """Make sure every plugin-shipped model has its row and base version."""
        with session_scope(self.engine) as session:
            for entry in self.builtins:
                spec = entry.item
                if entry.plugin and spec.provider not in self.providers:
                    log.warning("built-in model %s needs provider %s, which is not loaded", spec.name, spec.provider)
                record = session.get(ModelRecord, spec.name)
                if record is None:
                    record = ModelRecord(
                        name=spec.name,
                        provider=spec.provider,
                        source=spec.source,
                        dtype=spec.dtype,
                        context_window=spec.context_window,
                        options={**spec.options, "builtin": True},
                    )
                    session.add(record)
                    session.flush()
                    version = ModelVersion(id=new_id("ver"), model=spec.name, label=BASE)
                    session.add(version)
                    record.serving_version = version.id
                    session.add(record)

    def add(self, spec: ModelSpec, *, by: Principal | None = None, description: str = "") -> ModelInfo:
        if not NAME_PATTERN.match(spec.name):
            raise InvalidInput(f"invalid model name {spec.name!r}: use 1-64 letters, digits, '.', '_', ':' or '-'")
        provider = self.providers.get(spec.provider)  # NotFound lists the providers
        if spec.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InvalidInput(f"unknown dtype '{spec.dtype}': use auto, float32, bfloat16 or float16")
        if spec.context_window is not None and spec.context_window < 16:
            raise InvalidInput("context_window must be at least 16 tokens")
        validate = getattr(provider, "validate", None)
        if callable(validate):
            try:
                validate(spec)  # providers raise InvalidInput with what is wrong
            except OSError as exc:  # a path the system refuses to look at (too long, a loop, no access)
                raise InvalidInput(
                    f"model source {spec.source[:80]!r}{'...' if len(spec.source) > 80 else ''} cannot be "
                    f"read: {exc.strerror or exc}"
                ) from None
        with session_scope(self.engine) as session:
            if session.get(ModelRecord, spec.name) is not None:
                raise Conflict(f"a model named '{spec.name}' already exists; remove it first or pick another name")
            record = ModelRecord(
                name=spec.name,
                provider=spec.provider,
                source=spec.source,
                dtype=spec.dtype,
                context_window=spec.context_window,
                options=dict(spec.options),
                description=description,
            )
            session.add(record)
            session.flush()
            version = ModelVersion(id=new_id("ver"), model=spec.name, label=BASE, adapter=spec.adapter)
            session.add(version)
            record.serving_version = version.id
            session.add(record)
        self.audit.record(by, "model.add", spec.name, provider=spec.provider, source=spec.source)
        return self.info(spec.name)

    def remove(self, name: str, *, by: Principal | None = None) -> None:
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            if record is None:
                raise NotFound(f"no model named '{name}'")
            if record.options.get("builtin"):
                raise Conflict(f"'{name}' ships with a plugin and cannot be removed; disable the plugin instead")
            for change in session.exec(select(ServingChange).where(ServingChange.model == name)):
                session.delete(change)
            for version in session.exec(select(ModelVersion).where(ModelVersion.model == name)):
                session.delete(version)
            session.delete(record)
        self.unload(name)
        self.audit.record(by, "model.remove", name)

    def add_version(
        self,
        name: str,
        *,
        label: str,
        adapter: str | None,
        metrics: dict[str, Any] | None = None,
        status: str = "candidate",
        by: Principal | None = None,
    ) -> ModelVersion:
        """Register a trained version of ``name`` (base weights plus the LoRA ``adapter`` folder).

        It does not serve until promoted; training jobs add their result with status
        ``candidate``. Labels are unique per model.
        """
        if not NAME_PATTERN.match(label):
            raise InvalidInput(f"invalid version label {label!r}: use 1-64 letters, digits, '.', '_', ':' or '-'")
        with session_scope(self.engine) as session:
            if session.get(ModelRecord, name) is None:
                raise NotFound(f"no model named '{name}' (see GET /v1/models)", code="model_not_found")
            taken = session.exec(
                select(ModelVersion).where(ModelVersion.model == name, ModelVersion.label == label)
            ).first()
            if taken is not None:
                raise Conflict(f"model '{name}' already has a version labelled '{label}'")
            version = ModelVersion(
                id=new_id("ver"), model=name, label=label, adapter=adapter, status=status, metrics=dict(metrics or {})
            )
            session.add(version)
            session.flush()
            session.refresh(version)
            session.expunge(version)
        self.audit.record(by, "model.version.add", name, version=version.id, label=label)
        return version

    def list(self) -> list[ModelInfo]:
        with session_scope(self.engine) as session:
            names = [record.name for record in session.exec(select(ModelRecord).order_by(ModelRecord.name))]
        return [self.info(name) for name in names]

    def info(self, name: str) -> ModelInfo:
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            if record is None:
                raise NotFound(f"no model named '{name}' (see GET /v1/models)")
            versions = list(
                session.exec(select(ModelVersion).where(ModelVersion.model == name).order_by(ModelVersion.created_at))
            )
        serving = next((v for v in versions if v.id == record.serving_version), None)
        builtin = bool(record.options.get("builtin"))
        return ModelInfo(
            name=record.name,
            provider=record.provider,
            source=record.source,
            dtype=record.dtype,
            context_window=record.context_window,
            builtin=builtin,
            plugin=self.builtins.entry(name).plugin if builtin and name in self.builtins else None,
            serving_version=serving.label if serving else BASE,
            versions=[
                {
                    "id": v.id,
                    "label": v.label,
                    "adapter": v.adapter,
                    "status": v.status,
                    "serving": v.id == record.serving_version,
                    "created_at": v.created_at,
                    "metrics": v.metrics,
                    "loaded": (name, v.id) in self._loaded,
                    **self._serving_stats(name, v.id),
                }
                for v in versions
            ],
            loaded=any(key[0] == name for key in self._loaded),
            description=record.description,
            created_at=record.created_at,
        )

    # Serving ----------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> tuple[ModelSpec, ModelVersion]:
        """The spec to load for ``name`` at ``version`` (a label or id; the serving one if None).

        ``name`` may carry the version itself: ``name@label``."""
        name, named = split_model_id(name)
        if named is not None:
            if version is not None and version != named:
                raise InvalidInput(
                    f"the model id names version '{named}' and the request version '{version}': give one"
                )
            version = named
        # Every request resolves its model here, so the statements are built once (see below);
        # the serving version is read each time, so a promotion counts from the next request.
        with Session(self._reads, expire_on_commit=False) as session:
            if version is None:
                found = session.exec(_SERVING, params={"name": name}).first()
            else:
                found = session.exec(_VERSION, params={"name": name, "version": version}).first()
            if found is None and session.get(ModelRecord, name) is None:
                raise NotFound(f"no model named '{name}' (see GET /v1/models)", code="model_not_found")
        if found is None:
            raise NotFound(f"model '{name}' has no version '{version}'", code="model_not_found")
        record, chosen = found
        spec = ModelSpec(
            name=record.name,
            provider=record.provider,
            source=record.source,
            dtype=record.dtype,
            context_window=record.context_window,
            adapter=chosen.adapter,
            options=record.options,
        )
        return spec, chosen

    def load(self, name: str, version: str | None = None) -> tuple[ChatModel, ModelVersion]:
        """The loaded model (loading it on first use; blocking, so call it off the event loop)."""
        spec, chosen = self.resolve(name, version)
        name = spec.name
        key = (name, chosen.id)
        with self._guard:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model, chosen
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._loaded.get(key)
            if model is None:
                provider = self.providers.get(spec.provider)
                log.info("loading model %s version %s with %s", name, chosen.label, spec.provider)
                model = provider.load(replace(spec), cache_dir=self.cache_dir)
                with self._guard:
                    self._loaded[key] = model
                    self._specs[key] = spec
                self._evict(name)
        return model, chosen

    def _serving_stats(self, name: str, version_id: str) -> dict[str, Any]:
        """``{"serving_stats": ...}`` for a loaded version whose model reports them, else nothing."""
        model = self._loaded.get((name, version_id))
        stats = getattr(model, "serving_stats", None)
        return {"serving_stats": stats()} if callable(stats) else {}

    def loaded_versions(self, name: str) -> list[str]:
        """Version ids of ``name`` in memory, least recently used first."""
        with self._guard:
            return [version for model, version in self._loaded if model == name]

    def _evict(self, name: str) -> None:
        """Keep at most ``max_loaded_versions`` versions of ``name`` in memory, never the serving one.

        A request that already holds an evicted model finishes on it (it keeps its reference);
        the weights are freed when the last such request ends.
        """
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            serving = record.serving_version if record else None
        with self._guard:
            keys = [key for key in self._loaded if key[0] == name]
            victims = [key for key in keys if key[1] != serving][: max(0, len(keys) - self.max_loaded_versions)]
            released = [(key, self._specs.pop(key, None)) for key in victims]
            for key in victims:
                del self._loaded[key]
                self._locks.pop(key, None)
        for key, spec in released:
            log.info("unloaded model %s version %s (least recently used)", *key)
            self._release(spec)

    def _release(self, spec: ModelSpec | None) -> None:
        if spec is None or spec.provider not in self.providers:
            return
        release = getattr(self.providers.get(spec.provider), "release", None)
        if callable(release):
            release(spec)

    def unload(self, name: str) -> None:
        with self._guard:
            keys = [key for key in self._loaded if key[0] == name]
            released = [self._specs.pop(key, None) for key in keys]
            for key in keys:
                del self._loaded[key]
        for spec in released:
            self._release(spec)

    # Promotion and rollback ------------------------------------------------------------------
    def latest_evaluation(self, name: str, version_id: str) -> EvaluationRecord | None:
        with session_scope(self.engine) as session:
            return session.exec(
                select(EvaluationRecord)
                .where(EvaluationRecord.subject == name, EvaluationRecord.candidate == version_id)
                .order_by(EvaluationRecord.created_at.desc())
            ).first()

    def promote(
        self,
        name: str,
        version: str,
        *,
        evaluation: str | None = None,
        force: bool = False,
        reason: str = "",
        by: Principal | None = None,
    ) -> ModelInfo:
        """Make ``version`` (a label or id) serve ``name`` from the next request on.

        The version needs a passed gate: its latest policy evaluation (or ``evaluation``, which
        must be about this version) must have passed. ``force`` skips that for admins (a local CLI
        call has no principal and counts as one) and needs a ``reason``; it is audited.
        Requests already running finish on the version they started with.
        """
        _, chosen = self.resolve(name, version)
        if force:
            if by is not None and not by.has_role("admin"):
                raise Forbidden("only an admin may force a promotion past the evaluation gate")
            if not reason.strip():
                raise InvalidInput("a forced promotion needs a reason (it is audited)", code="reason_required")
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            if record.serving_version == chosen.id:
                raise Conflict(f"version '{chosen.label}' already serves '{name}'", code="already_serving")
        if evaluation is not None:
            with session_scope(self.engine) as session:
                report = session.get(EvaluationRecord, evaluation)
            if report is None or report.subject != name or report.candidate != chosen.id:
                raise NotFound(f"no evaluation '{evaluation}' of {name}@{chosen.label}", code="evaluation_not_found")
        else:
            report = self.latest_evaluation(name, chosen.id)
        if not force:
            if report is None:
                raise Conflict(
                    f"{name}@{chosen.label} has no evaluation: run one first (POST /api/models/{name}/evaluations "
                    f"or espalier models evaluate {name} --candidate {chosen.label})",
                    code="evaluation_missing",
                )
            if not report.passed:
                failed = "; ".join(report.results.get("gate", {}).get("failures", [])) or "see the report"
                raise Conflict(
                    f"{name}@{chosen.label} failed its evaluation gate ({report.id}): {failed}. "
                    "Train a better candidate, or an admin may force it with a reason.",
                    code="evaluation_failed",
                    details={"evaluation": report.id},
                )
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            self._ensure_initial(session, record)
            previous = record.serving_version
            session.add(
                ServingChange(
                    model=name,
                    version_id=chosen.id,
                    label=chosen.label,
                    action="promote",
                    evaluation_id=report.id if report else None,
                    forced=force,
                    reason=reason,
                    actor_key_id=by.key_id if by else None,
                )
            )
            record.serving_version = chosen.id
            session.add(record)
            version_row = session.get(ModelVersion, chosen.id)
            if version_row.status in ("candidate", "rolled_back"):
                version_row.status = "promoted"
                session.add(version_row)
        self.audit.record(
            by,
            "model.promote.forced" if force else "model.promote",
            name,
            version=chosen.label,
            version_id=chosen.id,
            previous=previous,
            evaluation=report.id if report else None,
            reason=reason or None,
        )
        return self.info(name)

    def rollback(self, name: str, *, reason: str = "", by: Principal | None = None) -> ModelInfo:
        """Serve the version that served before the current one (repeat to walk further back)."""
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            if record is None:
                raise NotFound(f"no model named '{name}' (see GET /v1/models)", code="model_not_found")
            stack = list(
                session.exec(
                    select(ServingChange)
                    .where(ServingChange.model == name, ServingChange.active == True)  # noqa: E712
                    .order_by(ServingChange.id.desc())
                )
            )
            if len(stack) < 2:
                raise Conflict(f"'{name}' has no earlier serving version to roll back to", code="nothing_to_roll_back")
            top, previous = stack[0], stack[1]
            if session.get(ModelVersion, previous.version_id) is None:
                raise Conflict(f"the previous version of '{name}' ({previous.label}) no longer exists")
            top.active = False
            session.add(top)
            session.add(
                ServingChange(
                    model=name,
                    version_id=previous.version_id,
                    label=previous.label,
                    action="rollback",
                    active=False,
                    reason=reason,
                    actor_key_id=by.key_id if by else None,
                )
            )
            record.serving_version = previous.version_id
            session.add(record)
            # The status says what serves: the version rolled back from no longer reads "promoted".
            left_row = session.get(ModelVersion, top.version_id)
            if left_row is not None and left_row.status == "promoted":
                left_row.status = "rolled_back"
                session.add(left_row)
            restored_row = session.get(ModelVersion, previous.version_id)
            if restored_row is not None and restored_row.status == "rolled_back":
                restored_row.status = "promoted"
                session.add(restored_row)
            left, restored = top.label, previous.label
        self.audit.record(by, "model.rollback", name, version=restored, from_version=left, reason=reason or None)
        return self.info(name)

    def history(self, name: str, *, limit: int = 100) -> list[ServingChange]:
        with session_scope(self.engine) as session:
            if session.get(ModelRecord, name) is None:
                raise NotFound(f"no model named '{name}'", code="model_not_found")
            return list(
                session.exec(
                    select(ServingChange)
                    .where(ServingChange.model == name)
                    .order_by(ServingChange.id.desc())
                    .limit(limit)
                )
            )

    @staticmethod
    def _ensure_initial(session: Any, record: ModelRecord) -> None:
        """The first promotion records what served before it, so a rollback can return there."""
        known = session.exec(select(ServingChange).where(ServingChange.model == record.name)).first()
        if known is None and record.serving_version:
            version = session.get(ModelVersion, record.serving_version)
            session.add(ServingChange(model=record.name, version_id=version.id, label=version.label, action="initial"))
            session.flush()
