"""Reward models: score (prompt, completion) pairs, list versions, start a training run."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.sources.reward.settings import settings_from


class ScoreItem(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)]
    completion: Annotated[str, msgspec.Meta(max_length=100_000)]


class ScoreIn(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[ScoreItem], msgspec.Meta(min_length=1, max_length=64)]
    version: str | None = None


class TrainIn(msgspec.Struct, forbid_unknown_fields=True):
    params: dict[str, Any] = {}


class RewardModelOut(msgspec.Struct):
    id: str
    version: int
    status: str
    is_current: bool
    base_model: str
    data_sha256: str
    pairs: int
    metrics: dict[str, Any]
    decision: str
    job_id: str | None
    created_at: datetime


def model_out(record: Any) -> RewardModelOut:
    return RewardModelOut(**{name: getattr(record, name) for name in RewardModelOut.__struct_fields__})


@post(
    "/api/reward/score",
    opt=access("user"),
    tags=["reward"],
    sync_to_thread=True,
    status_code=200,
    summary="Score (prompt, completion) items with the current reward model (higher is preferred)",
)
def score(request: Request, data: JSONBody[ScoreIn]) -> dict[str, Any]:
    record, scores = request.app.state.platform.reward_models.score(
        [(item.prompt, item.completion) for item in data.items], version=data.version
    )
    return {"reward_model": record.id, "version": record.version, "scores": scores}


@get(
    "/api/reward/models",
    opt=access("operator"),
    tags=["reward"],
    sync_to_thread=True,
    summary="Reward model versions, newest first, with data hash, metrics and the promotion decision",
)
def list_models(request: Request) -> dict[str, Any]:
    platform = request.app.state.platform
    current = platform.reward_models.current()
    return {
        "current": current.version if current else None,
        "models": [model_out(r) for r in platform.reward_models.list()],
    }


@post(
    "/api/reward/train",
    opt=access("operator"),
    tags=["reward"],
    sync_to_thread=True,
    status_code=202,
    summary="Start a reward model training job (train:reward) on the pairs held now",
)
def train(request: Request, data: JSONBody[TrainIn], principal: CurrentPrincipal) -> dict[str, Any]:
    platform = request.app.state.platform
    params = dict(data.params)
    checked = {k: v for k, v in params.items() if k not in ("include_imported", "exclude_labelers", "ai_pair_weight")}
    settings = settings_from(checked)  # bad settings fail here, not in the job
    ai_weight = params.get("ai_pair_weight", platform.settings.ai_pair_weight)
    if not isinstance(ai_weight, int | float) or not 0 <= ai_weight <= 1:
        raise InvalidInput("ai_pair_weight must be a number between 0 and 1")
    pairs = platform.pairs.all(
        include_imported=bool(params.get("include_imported", True)),
        exclude_labelers=params.get("exclude_labelers") or [],
        ai_weight=ai_weight,
    )
    if len(pairs) < settings.min_pairs:
        raise InvalidInput(
            f"only {len(pairs)} preference pairs; training needs at least {settings.min_pairs}. "
            "Collect rankings or thumbs, or import pairs (POST /api/pairs/import)",
            code="too_few_pairs",
        )
    job = platform.jobs.submit("train:reward", params, created_by=principal.key_id)
    platform.audit.record(principal, "reward.train", job.id, pairs=len(pairs))
    return {"job_id": job.id, "pairs": len(pairs)}


ROUTES = [score, list_models, train]
