"""The model registry: what can be served, by which provider, at which version; and the loaded
models, shared by every request in the process.

Plugins ship models through ``register_models`` (read-only built-ins); operators add more with
``espalier models add`` or ``POST /api/models``. Every model has versions: ``base`` (the weights
as registered) and later trained ones (base plus a LoRA adapter). One version serves at a time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from .contracts import ChatModel, ModelProvider, ModelSpec
from .db.engine import session_scope
from .db.tables import ModelRecord, ModelVersion, new_id
from .errors import Conflict, InvalidInput, NotFound
from .registry import NAME_PATTERN, Registry
from .security import AuditLog, Principal

log = logging.getLogger("espalier.models")

BASE = "base"


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


class ModelService:
    def __init__(
        self,
        engine: Engine,
        providers: Registry[ModelProvider],
        builtins: Registry[ModelSpec],
        cache_dir: str,
        audit: AuditLog,
    ):
        self.engine = engine
        self.providers = providers
        self.builtins = builtins
        self.cache_dir = cache_dir
        self.audit = audit
        self._loaded: dict[tuple[str, str], ChatModel] = {}
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
                    record = ModelRecord(name=spec.name, provider=spec.provider, source=spec.source,
                                         dtype=spec.dtype, context_window=spec.context_window,
                                         options={**spec.options, "builtin": True})  # fmt: skip
                    session.add(record)
                    session.flush()
                    version = ModelVersion(id=new_id("ver"), model=spec.name, label=BASE)
                    session.add(version)
                    record.serving_version = version.id
                    session.add(record)

    def add(self, spec: ModelSpec, *, by: Principal | None = None, description: str = "") -> ModelInfo:
        if not NAME_PATTERN.match(spec.name):
            raise InvalidInput(
                f"invalid model name {spec.name!r}: use 1-64 letters, digits, '.', '_', ':' or '-'"
            )
        provider = self.providers.get(spec.provider)  # NotFound lists the providers
        if spec.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InvalidInput(f"unknown dtype '{spec.dtype}': use auto, float32, bfloat16 or float16")
        if spec.context_window is not None and spec.context_window < 16:
            raise InvalidInput("context_window must be at least 16 tokens")
        validate = getattr(provider, "validate", None)
        if callable(validate):
            validate(spec)  # providers raise InvalidInput with what is wrong
        with session_scope(self.engine) as session:
            if session.get(ModelRecord, spec.name) is not None:
                raise Conflict(f"a model named '{spec.name}' already exists; remove it first or pick another name")
            record = ModelRecord(name=spec.name, provider=spec.provider, source=spec.source, dtype=spec.dtype,
                                 context_window=spec.context_window, options=dict(spec.options),
                                 description=description)  # fmt: skip
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
            version = ModelVersion(id=new_id("ver"), model=name, label=label, adapter=adapter,
                                   status=status, metrics=dict(metrics or {}))  # fmt: skip
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
            versions = list(session.exec(
                select(ModelVersion).where(ModelVersion.model == name).order_by(ModelVersion.created_at)
            ))  # fmt: skip
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
                {"id": v.id, "label": v.label, "adapter": v.adapter, "status": v.status,
                 "serving": v.id == record.serving_version, "created_at": v.created_at, "metrics": v.metrics}
                for v in versions
            ],  # fmt: skip
            loaded=any(key[0] == name for key in self._loaded),
            description=record.description,
            created_at=record.created_at,
        )

    # Serving ----------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> tuple[ModelSpec, ModelVersion]:
        """The spec to load for ``name`` at ``version`` (a label or id; the serving one if None)."""
        with session_scope(self.engine) as session:
            record = session.get(ModelRecord, name)
            if record is None:
                raise NotFound(f"no model named '{name}' (see GET /v1/models)", code="model_not_found")
            query = select(ModelVersion).where(ModelVersion.model == name)
            if version is None:
                query = query.where(ModelVersion.id == record.serving_version)
            else:
                query = query.where((ModelVersion.label == version) | (ModelVersion.id == version))
            chosen = session.exec(query).first()
            if chosen is None:
                raise NotFound(f"model '{name}' has no version '{version}'", code="model_not_found")
        spec = ModelSpec(
            name=record.name, provider=record.provider, source=record.source, dtype=record.dtype,
            context_window=record.context_window, adapter=chosen.adapter, options=record.options,
        )  # fmt: skip
        return spec, chosen

    def load(self, name: str, version: str | None = None) -> tuple[ChatModel, ModelVersion]:
        """The loaded model (loading it on first use; blocking, so call it off the event loop)."""
        spec, chosen = self.resolve(name, version)
        key = (name, chosen.id)
        model = self._loaded.get(key)
        if model is not None:
            return model, chosen
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._loaded.get(key)
            if model is None:
                provider = self.providers.get(spec.provider)
                log.info("loading model %s version %s with %s", name, chosen.label, spec.provider)
                model = provider.load(replace(spec), cache_dir=self.cache_dir)
                self._loaded[key] = model
        return model, chosen

    def unload(self, name: str) -> None:
        with self._guard:
            for key in [key for key in self._loaded if key[0] == name]:
                del self._loaded[key]
