"""Reward models: score (prompt, completion) pairs, list versions, start a training run."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody

from espalier.api.guards import CurrentPrincipal, access


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
    job, pairs = request.app.state.platform.reward_models.queue_training(data.params, principal)
    return {"job_id": job.id, "pairs": pairs}


ROUTES = [score, list_models, train]
