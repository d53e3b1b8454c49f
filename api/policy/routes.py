"""Policy updates: start a LoRA fine-tune of a chat model by RL against the reward model or DPO."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.params import JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.jobs.routes import JobOut, job_out
from espalier.api.paths import inside_home
from espalier.api.schema_types import Count, Int64
from espalier.core.sources.learning import policy

Prompt = Annotated[str, msgspec.Meta(max_length=policy.MAX_PROMPT_CHARS)]


class PolicyTrainIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The body of ``POST /api/policy/train``; unset fields take the defaults in docs/operators.md."""

    method: Literal["rl", "dpo", "rsft", "sft"] = "rl"
    model: str | None = None
    reward_model: str | None = None
    steps: Count | None = None
    learning_rate: float | None = None
    lora_rank: Count | None = None
    lora_alpha: Count | None = None
    beta: float | None = None
    batch_size: Count | None = None
    num_generations: Count | None = None
    max_completion_tokens: Count | None = None
    max_prompt_tokens: Count | None = None
    temperature: float | None = None
    prompt_format: Literal["chat", "text"] | None = None
    prompts: Annotated[list[Prompt], msgspec.Meta(max_length=policy.MAX_PROMPTS)] | None = None
    prompts_path: str | None = None
    prompts_from_conversations: Count | None = None
    max_prompts: Count | None = None
    eval_prompts: Count | None = None
    toxicity_weight: float | None = None
    toxicity_scorer: str | None = None
    target_reward: float | None = None
    kl_bound: float | None = None
    min_pairs: Count | None = None
    include_imported: bool | None = None
    pairs: str | None = None  # checked by PolicySettings, whose message names both choices
    samples_per_prompt: Count | None = None
    max_kept_toxicity: float | None = None
    label: str | None = None
    budget_minutes: float | None = None
    sft_path: str | None = None
    include_corrections: bool | None = None
    seed: Int64 | None = None


class PolicyTrainOut(msgspec.Struct):
    job: JobOut
    plan: dict[str, Any]


@post(
    "/api/policy/train",
    opt=access("operator"),
    tags=["policy"],
    sync_to_thread=True,
    status_code=202,
    summary="Check the settings, then queue a policy update (train:policy-rl or train:policy-dpo)",
)
def train(request: Request, data: JSONBody[PolicyTrainIn], principal: CurrentPrincipal) -> PolicyTrainOut:
    platform = request.app.state.platform
    params = {name: value for name, value in msgspec.structs.asdict(data).items() if value is not None}
    if data.prompts_path is not None:
        params["prompts_path"] = str(inside_home(platform.settings.home, data.prompts_path))
    if data.sft_path is not None:  # a server path: only inside ESPALIER_HOME, as prompts_path
        params["sft_path"] = str(inside_home(platform.settings.home, data.sft_path, "sft_path"))
    job, plan = policy.submit(platform, params, by=principal)
    return PolicyTrainOut(job=job_out(job), plan=plan.summary())


ROUTES = [train]
