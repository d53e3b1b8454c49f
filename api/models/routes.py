"""Operators manage the model registry and prompt templates here; consumers list templates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.schema_types import Count, Int64
from espalier.core.infrastructure.contracts import ModelSpec, TemplateSpec
from espalier.core.infrastructure.errors import NotFound
from espalier.core.sources.learning import gate as policy_evaluation

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ModelCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    provider: str = "transformers"
    dtype: str = "auto"
    context_window: Count | None = None
    adapter: str | None = None
    options: dict[str, Any] = {}
    description: str = ""


Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


class Gate(msgspec.Struct, forbid_unknown_fields=True):
    reward_tolerance: Annotated[float, msgspec.Meta(ge=0)] | None = None
    toxicity_tolerance: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_kl: Annotated[float, msgspec.Meta(gt=0)] | None = None
    task_tolerance: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    min_prompts: Annotated[int, msgspec.Meta(ge=1, le=2000)] | None = None
    require_improvement: bool | None = None


class TaskCheck(msgspec.Struct, forbid_unknown_fields=True):
    question: Prompt
    answer: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class EvaluationCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Evaluate ``candidate`` against the serving version. No ``prompts``: the shipped set. Files are
    read by the CLI (``espalier models evaluate --prompts FILE``), never named to the server."""

    candidate: Label
    prompts: Annotated[list[Prompt], msgspec.Meta(max_length=500)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=2000)] | None = None
    tasks: Annotated[list[TaskCheck], msgspec.Meta(max_length=200)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 32
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    seed: Int64 = 0
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5
    scorer: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    gate: Gate | None = None
    #: Prompt formats both versions answer in (chat template, plain text); default: chat plus the
    #: format the candidate was trained on.
    formats: Annotated[list[Literal["chat", "text"]], msgspec.Meta(min_length=1, max_length=2)] | None = None


class Promotion(msgspec.Struct, forbid_unknown_fields=True):
    version: Label
    evaluation: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    force: bool = False
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Rollback(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


def change_out(change: Any) -> dict[str, Any]:
    return {
        "id": change.id,
        "version": change.label,
        "version_id": change.version_id,
        "action": change.action,
        "active": change.active,
        "evaluation": change.evaluation_id,
        "forced": change.forced,
        "reason": change.reason,
        "actor_key_id": change.actor_key_id,
        "at": change.at,
    }


class Example(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    answer: str
    reasoning: str | None = None


class TemplateCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    user: Annotated[str, msgspec.Meta(min_length=1)] = "{{ input }}"
    system: str | None = None
    examples: list[Example] = []
    description: str = ""


def template_out(record: Any) -> dict[str, Any]:
    return {
        "name": record.name,
        "version": record.version,
        "description": record.description,
        "system": record.system,
        "examples": record.examples,
        "user": record.user,
        "variables": record.variables,
        "created_at": record.created_at,
        "reference": f"{record.name}@{record.version}",
    }


class ModelsController(Controller):
    path = "/api/models"
    tags = ["models"]
    opt = access("operator")

    @get(sync_to_thread=True, summary="Registered models with their versions")
    def list_models(self, request: Request) -> dict[str, Any]:
        platform = request.app.state.platform
        return {
            "models": [asdict(info) for info in platform.models.list()],
            "providers": platform.model_providers.names(),
        }

    @get("/{name:str}", sync_to_thread=True, summary="One model")
    def get_model(self, request: Request, name: FromPath[str]) -> dict[str, Any]:
        return asdict(request.app.state.platform.models.info(name))

    @post(sync_to_thread=True, summary="Register a model (a GGUF file, a Hugging Face folder, a remote URL)")
    def add_model(self, request: Request, data: JSONBody[ModelCreate], principal: CurrentPrincipal) -> dict[str, Any]:
        spec = ModelSpec(
            name=data.name,
            provider=data.provider,
            source=data.source,
            dtype=data.dtype,
            context_window=data.context_window,
            adapter=data.adapter,
            options=data.options,
        )
        return asdict(request.app.state.platform.models.add(spec, by=principal, description=data.description))

    @post(
        "/{name:str}/evaluations",
        status_code=202,
        sync_to_thread=True,
        summary="Evaluate a candidate version against the serving one (job eval:policy)",
    )
    def evaluate(
        self, request: Request, name: FromPath[str], data: JSONBody[EvaluationCreate], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        platform = request.app.state.platform
        platform.models.resolve(name, data.candidate)  # 404 before queueing
        params = {key: value for key, value in msgspec.structs.asdict(data).items() if value is not None}
        if data.tasks is not None:
            params["tasks"] = [msgspec.structs.asdict(task) for task in data.tasks]
        if data.gate is not None:
            params["gate"] = {k: v for k, v in msgspec.structs.asdict(data.gate).items() if v is not None}
        params = policy_evaluation.prepare({**params, "model": name})  # an empty prompt set fails here, 400
        policy_evaluation.judge_for(platform, params)  # never the scorer the candidate was trained against
        job = platform.jobs.submit(policy_evaluation.JOB_KIND, params, created_by=principal.key_id)
        platform.audit.record(principal, "model.evaluate", name, candidate=data.candidate, job=job.id)
        return {"job_id": job.id, "model": name, "candidate": data.candidate, "prompts": len(params["prompts"])}

    @get("/{name:str}/evaluations", sync_to_thread=True, summary="Policy evaluations of this model, newest first")
    def list_evaluations(self, request: Request, name: FromPath[str]) -> dict[str, Any]:
        platform = request.app.state.platform
        platform.models.info(name)
        records = [r for r in platform.evaluations.list(kind=policy_evaluation.KIND, limit=200) if r.subject == name]
        return {"evaluations": [policy_evaluation.summary(r) for r in records]}

    @get("/{name:str}/evaluations/{evaluation_id:str}", sync_to_thread=True, summary="One evaluation with every answer")
    def get_evaluation(self, request: Request, name: FromPath[str], evaluation_id: FromPath[str]) -> dict[str, Any]:
        record = request.app.state.platform.evaluations.get(evaluation_id)
        if record.subject != name:
            raise NotFound(f"no evaluation '{evaluation_id}' of '{name}'")
        return {**policy_evaluation.summary(record), "results": record.results}

    @post(
        "/{name:str}/promote",
        status_code=200,
        sync_to_thread=True,
        summary="Serve a version from the next request on (needs a passed evaluation; admins may force)",
    )
    def promote(
        self, request: Request, name: FromPath[str], data: JSONBody[Promotion], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        info = request.app.state.platform.models.promote(
            name, data.version, evaluation=data.evaluation, force=data.force, reason=data.reason, by=principal
        )
        return asdict(info)

    @post(
        "/{name:str}/rollback",
        status_code=200,
        sync_to_thread=True,
        summary="Serve the version that served before the current one",
    )
    def rollback(
        self, request: Request, name: FromPath[str], principal: CurrentPrincipal, data: JSONBody[Rollback | None] = None
    ) -> dict[str, Any]:
        info = request.app.state.platform.models.rollback(name, reason=data.reason if data else "", by=principal)
        return asdict(info)

    @get("/{name:str}/history", sync_to_thread=True, summary="Promotions and rollbacks of this model, newest first")
    def history(self, request: Request, name: FromPath[str]) -> dict[str, Any]:
        return {"history": [change_out(c) for c in request.app.state.platform.models.history(name)]}

    @delete("/{name:str}", status_code=200, sync_to_thread=True, summary="Remove a model")
    def remove_model(self, request: Request, name: FromPath[str], principal: CurrentPrincipal) -> dict[str, str]:
        request.app.state.platform.models.remove(name, by=principal)
        return {"removed": name}


@get(
    "/api/templates",
    opt=access("user"),
    tags=["templates"],
    sync_to_thread=True,
    summary="Prompt templates, every version",
)
def list_templates(request: Request) -> dict[str, Any]:
    return {"templates": [template_out(t) for t in request.app.state.platform.templates.list()]}


@get(
    "/api/templates/{reference:str}",
    opt=access("user"),
    tags=["templates"],
    sync_to_thread=True,
    summary="A template by name (latest) or name@version",
)
def get_template(request: Request, reference: FromPath[str]) -> dict[str, Any]:
    return template_out(request.app.state.platform.templates.get(reference))


@post(
    "/api/templates",
    opt=access("operator"),
    tags=["templates"],
    sync_to_thread=True,
    summary="Save a template (a new version when the name exists)",
)
def save_template(request: Request, data: JSONBody[TemplateCreate], principal: CurrentPrincipal) -> dict[str, Any]:
    spec = TemplateSpec(
        name=data.name,
        user=data.user,
        system=data.system,
        description=data.description,
        examples=[{k: v for k, v in msgspec.structs.asdict(e).items() if v is not None} for e in data.examples],
    )
    return template_out(request.app.state.platform.templates.save(spec, by=principal))


ROUTES = [ModelsController, list_templates, get_template, save_template]
