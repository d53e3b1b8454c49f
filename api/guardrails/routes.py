"""Guardrail decisions and evaluation records, for operators (consumers check text at /v1/moderations)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery, Parameter

from espalier.api.guards import access


@get(
    "/api/guardrails/events",
    opt=access("operator"),
    tags=["guardrails"],
    sync_to_thread=True,
    summary="Guardrail decisions, newest first (the judged text included, for review)",
)
def list_events(
    request: Request,
    request_id: FromQuery[str | None] = None,
    action: Annotated[str | None, Parameter(pattern="^(allow|flag|redact|block)$")] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    events = request.app.state.platform.guardrail_service.events(request_id=request_id, action=action, limit=limit)
    return {"events": [event.model_dump() for event in events]}


@get(
    "/api/guardrails/policies",
    opt=access("operator"),
    tags=["guardrails"],
    sync_to_thread=True,
    summary="The guardrail policies in force and the registered scorers",
)
def list_policies(request: Request) -> dict[str, Any]:
    platform = request.app.state.platform
    return {
        "policies": [
            {
                "name": p.name,
                "direction": p.direction,
                "routes": list(p.routes),
                "scorer": p.scorer,
                "thresholds": dict(p.thresholds),
                "action": p.action,
            }
            for p in platform.guardrail_service.policies
        ],
        "scorers": [
            {
                "name": e.name,
                "plugin": e.plugin,
                "categories": list(e.item.categories),
                "version": getattr(e.item, "version", ""),
            }
            for e in platform.guardrails
        ],
    }


@get(
    "/api/evaluations",
    opt=access("operator"),
    tags=["evaluations"],
    sync_to_thread=True,
    summary="Evaluation records (e.g. toxicity), newest first, without the per-prompt details",
)
def list_evaluations(
    request: Request, kind: FromQuery[str | None] = None, limit: Annotated[int, Parameter(ge=1, le=500)] = 50
) -> dict[str, Any]:
    records = request.app.state.platform.evaluations.list(kind=kind, limit=limit)
    summaries = []
    for record in records:
        models = {
            name: {k: v for k, v in entry.items() if k != "continuations"}
            for name, entry in record.results.get("models", {}).items()
        }
        summaries.append(
            {
                "id": record.id,
                "kind": record.kind,
                "created_at": record.created_at,
                "models": record.models,
                "settings": record.settings,
                "results": {"models": models},
            }
        )
    return {"evaluations": summaries}


@get(
    "/api/evaluations/{evaluation_id:str}",
    opt=access("operator"),
    tags=["evaluations"],
    sync_to_thread=True,
    summary="One evaluation record with every continuation and its score",
)
def get_evaluation(request: Request, evaluation_id: FromPath[str]) -> dict[str, Any]:
    record = request.app.state.platform.evaluations.get(evaluation_id)
    return record.model_dump(exclude={"artifacts"}) | {"plots": sorted(record.artifacts)}


ROUTES = [list_events, list_policies, list_evaluations, get_evaluation]
