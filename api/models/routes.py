"""Operators manage the model registry and prompt templates here; consumers list templates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.core.contracts import ModelSpec
from espalier.core.templates import TemplateSpec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ModelCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    provider: str = "transformers"
    dtype: str = "auto"
    context_window: int | None = None
    adapter: str | None = None
    options: dict[str, Any] = {}
    description: str = ""


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
        "name": record.name, "version": record.version, "description": record.description,
        "system": record.system, "examples": record.examples, "user": record.user,
        "variables": record.variables, "created_at": record.created_at,
        "reference": f"{record.name}@{record.version}",
    }  # fmt: skip


class ModelsController(Controller):
    path = "/api/models"
    tags = ["models"]
    opt = access("operator")

    @get(sync_to_thread=True, summary="Registered models with their versions")
    def list_models(self, request: Request) -> dict[str, Any]:
        platform = request.app.state.platform
        return {"models": [asdict(info) for info in platform.models.list()],
                "providers": platform.model_providers.names()}  # fmt: skip

    @get("/{name:str}", sync_to_thread=True, summary="One model")
    def get_model(self, request: Request, name: str) -> dict[str, Any]:
        return asdict(request.app.state.platform.models.info(name))

    @post(sync_to_thread=True, summary="Register a model (a GGUF file, a Hugging Face folder, a remote URL)")
    def add_model(self, request: Request, data: JSONBody[ModelCreate], principal: CurrentPrincipal) -> dict[str, Any]:
        spec = ModelSpec(name=data.name, provider=data.provider, source=data.source, dtype=data.dtype,
                         context_window=data.context_window, adapter=data.adapter, options=data.options)  # fmt: skip
        return asdict(request.app.state.platform.models.add(spec, by=principal, description=data.description))

    @delete("/{name:str}", status_code=200, sync_to_thread=True, summary="Remove a model")
    def remove_model(self, request: Request, name: str, principal: CurrentPrincipal) -> dict[str, str]:
        request.app.state.platform.models.remove(name, by=principal)
        return {"removed": name}


@get("/api/templates", opt=access("user"), tags=["templates"], sync_to_thread=True, summary="Prompt templates, every version")
def list_templates(request: Request) -> dict[str, Any]:
    return {"templates": [template_out(t) for t in request.app.state.platform.templates.list()]}


@get("/api/templates/{reference:str}", opt=access("user"), tags=["templates"], sync_to_thread=True,
     summary="A template by name (latest) or name@version")  # fmt: skip
def get_template(request: Request, reference: str) -> dict[str, Any]:
    return template_out(request.app.state.platform.templates.get(reference))


@post("/api/templates", opt=access("operator"), tags=["templates"], sync_to_thread=True,
      summary="Save a template (a new version when the name exists)")  # fmt: skip
def save_template(request: Request, data: JSONBody[TemplateCreate], principal: CurrentPrincipal) -> dict[str, Any]:
    spec = TemplateSpec(
        name=data.name, user=data.user, system=data.system, description=data.description,
        examples=[{k: v for k, v in msgspec.structs.asdict(e).items() if v is not None} for e in data.examples],
    )  # fmt: skip
    return template_out(request.app.state.platform.templates.save(spec, by=principal))


ROUTES = [ModelsController, list_templates, get_template, save_template]
