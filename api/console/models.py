"""Models: the registry, each model's versions, which one serves, the policy evaluations with
their charts, and promotion and rollback (confirmed in the browser, CSRF-checked, audited)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from espalier.api.console.render import NavItem, page, read_form
from espalier.api.console.session import console
from espalier.core.sources.learning import gate as policy_evaluation

NAV = NavItem("Models", "/console/models")


class PromoteForm(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class RollbackForm(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


def _context(platform: Any) -> dict[str, Any]:
    models = [asdict(m) for m in platform.models.list()]
    evaluations = [
        policy_evaluation.summary(r) for r in platform.evaluations.list(kind=policy_evaluation.KIND, limit=50)
    ]
    for model in models:
        model["history"] = platform.models.history(model["name"], limit=10)
        model["evaluations"] = [e for e in evaluations if e["model"] == model["name"]][:5]
        by_version = {}
        for evaluation in reversed(model["evaluations"]):  # newest last, so the newest wins
            by_version[evaluation["candidate"]] = evaluation
        for version in model["versions"]:
            version["evaluation"] = by_version.get(version["id"])
    charts = {
        e["id"]: {
            "labels": [f"{e['current']['version']} (serving)", f"{e['candidate_results']['version']} (candidate)"],
            "reward": [e["current"]["mean_reward"], e["candidate_results"]["mean_reward"]],
            "toxicity": [e["current"]["mean_toxicity"], e["candidate_results"]["mean_toxicity"]],
        }
        for e in evaluations
    }
    return {"models": models, "providers": platform.model_providers.names(), "charts": charts}


@get("/console/models", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def models_page(request: Request) -> Template:
    return page(request, "models.html", active=NAV.path, **_context(request.app.state.platform))


@post("/console/models/{name:str}/promote", opt=console("operator"), include_in_schema=False, status_code=200)
async def promote(request: Request, name: FromPath[str]) -> Template:
    form = await read_form(request, PromoteForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    await anyio.to_thread.run_sync(lambda: platform.models.promote(name, form.version, by=principal))
    context = await anyio.to_thread.run_sync(lambda: _context(platform))
    return page(request, "_models.html", active=NAV.path, notice=f"{name} now serves {form.version}", **context)


@post("/console/models/{name:str}/rollback", opt=console("operator"), include_in_schema=False, status_code=200)
async def rollback(request: Request, name: FromPath[str]) -> Template:
    form = await read_form(request, RollbackForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    info = await anyio.to_thread.run_sync(lambda: platform.models.rollback(name, reason=form.reason, by=principal))
    context = await anyio.to_thread.run_sync(lambda: _context(platform))
    return page(
        request, "_models.html", active=NAV.path, notice=f"{name} rolled back to {info.serving_version}", **context
    )


ROUTES = [models_page, promote, rollback]
