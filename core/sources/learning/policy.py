"""Policy updates: the settings of a run and the checks made before it is queued.

Two methods fine-tune a registered chat model with a LoRA adapter:

* ``rl``: reinforcement learning against the reward model with a KL penalty to the frozen
  reference (the base model with the adapter switched off);
* ``dpo``: direct preference optimisation, on the preference pairs Espalier holds
  (``pairs="store"``) or on pairs built from the policy's own samples ranked by the reward
  signal RL optimises (``pairs="sampled"``: ``samples_per_prompt`` completions per training
  prompt, reward model score minus ``toxicity_weight`` x toxicity, best against worst).

The trainers live in the ``policy_training`` plugin (job kinds ``train:policy-rl`` and
``train:policy-dpo``); the API, the CLI and the trainers themselves call :func:`preflight`, so
bad input fails before a job is queued with a message that says what to do.

Which reward models may drive which policy: a reward model records the ``base_model`` it was
trained from. A reward model on its own encoder (the built-in one is MiniLM) reads text and can
score any policy. A reward model trained from a *chat model's* backbone (its ``base_model`` is
a registered chat model's name or source) belongs to that model and may only drive it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound
from espalier.core.infrastructure.registry import NAME_PATTERN

if TYPE_CHECKING:
    from espalier.core.platform import Platform

METHODS = ("rl", "dpo", "rsft", "sft")
JOB_KINDS = {method: f"train:policy-{method}" for method in METHODS}
#: Methods that sample answers of training prompts (and so need prompts).
SAMPLING = ("rl", "rsft")
PROMPT_FORMATS = ("chat", "text")
PAIR_SOURCES = ("store", "sampled")
MAX_PROMPTS = 5000
MAX_PROMPT_CHARS = 4000


#: What differs from the dataclass defaults per method, for settings a request leaves out. rl is the
#: default method: on the loop benchmark it made the independent judge's toxicity fall by 58% with a
#: paired interval excluding zero (docs/operators.md, "Policy updates").
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # rl's reward model score and toxicity count in units of their running spread (rl.RunningScale),
    # so the weight 2 makes a unit of the toxicity's spread twice a unit of the reward's; 150 steps at
    # 1e-3 with beta 0.1 fill about 20 of a 25-minute budget here while holding the KL.
    "rl": {
        "learning_rate": 1e-3,
        "steps": 150,
        "beta": 0.1,
        "batch_size": 2,
        "num_generations": 4,
        "max_completion_tokens": 12,
        "max_prompt_tokens": 64,
        "toxicity_weight": 2.0,
    },
    # rsft samples at 0.7 (fluent answers to learn from: training on temperature-1 samples flattens the
    # model) and weighs toxicity at 2 reward standard deviations per unit.
    "rsft": {"learning_rate": 5e-4, "steps": 60, "batch_size": 8, "toxicity_weight": 2.0, "temperature": 0.7},
    "sft": {"learning_rate": 5e-4, "steps": 60, "batch_size": 8},
}


@dataclass
class PolicySettings:
    method: str = "rl"
    model: str | None = None  # a registered chat model; None: the platform's default model
    reward_model: str | None = None  # a version number or id; None: the current one
    steps: int = 20  # the step budget
    learning_rate: float = 1e-4
    lora_rank: int = 8
    lora_alpha: int | None = None  # None: twice the rank
    beta: float | None = None  # KL coefficient; None: 0.1 (rl sets it in METHOD_DEFAULTS too)
    batch_size: int = 4  # prompts (rl) or pairs (dpo) per step
    num_generations: int = 4  # rl: completions sampled per prompt (the group)
    max_completion_tokens: int = 32
    max_prompt_tokens: int = 128
    temperature: float = 1.0
    prompt_format: str = "chat"  # chat: the chat template, as /v1/chat/completions serves; text: plain continuation
    prompts: list[str] = field(default_factory=list)
    prompts_path: str | None = None  # JSONL ({"prompt": ...} or RealToxicityPrompts rows) or text, one a line
    prompts_from_conversations: int = 0  # up to this many user prompts from logged chat requests
    max_prompts: int = 500
    eval_prompts: int = 8  # prompts held out to measure reward, toxicity and KL before and after
    toxicity_weight: float = 0.0  # rl, rsft, sampled dpo: reward -= weight * toxicity of the completion
    toxicity_scorer: str | None = None  # None: the default toxicity guardrail (detoxify when served)
    target_reward: float | None = None  # stop when the mean reward of recent steps reaches it
    kl_bound: float = 2.0  # reward rising while KL passes this is reported as possible reward hacking
    min_pairs: int = 8  # dpo
    include_imported: bool = True  # dpo on stored pairs: imported pairs as well as those from feedback
    pairs: str = "store"  # dpo: "store" (the pairs Espalier holds) or "sampled" (built from the policy's samples)
    samples_per_prompt: int = 4  # rsft, dpo with sampled pairs: completions sampled per training prompt
    max_kept_toxicity: float = 0.5  # rsft: a prompt whose best answer is still this toxic keeps none
    label: str | None = None  # the version label; default: <method>-<job id>
    budget_minutes: float | None = None  # stop sampling and training in time to finish within this
    sft_path: str | None = None  # sft: curated demonstrations (JSONL of messages, or prompt/completion)
    include_corrections: bool = True  # sft: users' corrections of answers they disliked train too
    seed: int = 0

    def held_out(self, prompts: int) -> int:
        """How many of ``prompts`` are held out to measure the result: ``eval_prompts``, or one
        when there are not more prompts than that (the trainer and the preflight share this)."""
        return self.eval_prompts if prompts > self.eval_prompts else min(1, prompts)

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if not 1 <= self.steps <= 100_000:
            raise InvalidInput(f"steps must be 1-100000 (got {self.steps})")
        if not 0 < self.learning_rate < 1:
            raise InvalidInput(f"learning_rate must be in (0, 1) (got {self.learning_rate})")
        if not 1 <= self.lora_rank <= 256:
            raise InvalidInput(f"lora_rank must be 1-256 (got {self.lora_rank})")
        if self.lora_alpha is not None and not 1 <= self.lora_alpha <= 1024:
            raise InvalidInput(f"lora_alpha must be 1-1024 (got {self.lora_alpha})")
        if self.beta is not None and not 0 < self.beta <= 10:
            raise InvalidInput(
                f"beta (the KL coefficient) must be in (0, 10]; 0 would drop the KL penalty (got {self.beta})"
            )
        if not 1 <= self.batch_size <= 256:
            raise InvalidInput(f"batch_size must be 1-256 (got {self.batch_size})")
        if not 2 <= self.num_generations <= 64:
            raise InvalidInput(
                f"num_generations must be 2-64: the group needs two completions to compare (got {self.num_generations})"
            )
        if not 1 <= self.max_completion_tokens <= 1024:
            raise InvalidInput(f"max_completion_tokens must be 1-1024 (got {self.max_completion_tokens})")
        if not 8 <= self.max_prompt_tokens <= 4096:
            raise InvalidInput(f"max_prompt_tokens must be 8-4096 (got {self.max_prompt_tokens})")
        if not 0 < self.max_kept_toxicity <= 1:
            raise InvalidInput(f"max_kept_toxicity must be in (0, 1] (got {self.max_kept_toxicity})")
        if not 0 < self.temperature <= 5:
            raise InvalidInput(f"temperature must be in (0, 5]: RL needs sampling (got {self.temperature})")
        if self.prompt_format not in PROMPT_FORMATS:
            raise InvalidInput(f"prompt_format must be chat or text (got {self.prompt_format!r})")
        if not isinstance(self.prompts, list) or not all(isinstance(p, str) for p in self.prompts):
            raise InvalidInput("prompts must be a list of strings")
        if len(self.prompts) > MAX_PROMPTS:
            raise InvalidInput(f"at most {MAX_PROMPTS} prompts in the request; give a file for more")
        if any(len(p) > MAX_PROMPT_CHARS for p in self.prompts):
            raise InvalidInput(f"each prompt may have at most {MAX_PROMPT_CHARS} characters")
        if not 0 <= self.prompts_from_conversations <= MAX_PROMPTS:
            raise InvalidInput(f"prompts_from_conversations must be 0-{MAX_PROMPTS}")
        if not 1 <= self.max_prompts <= MAX_PROMPTS:
            raise InvalidInput(f"max_prompts must be 1-{MAX_PROMPTS} (got {self.max_prompts})")
        if not 0 <= self.eval_prompts <= 500:
            raise InvalidInput(f"eval_prompts must be 0-500 (got {self.eval_prompts})")
        if not 0 <= self.toxicity_weight <= 100:
            raise InvalidInput(f"toxicity_weight must be 0-100 (got {self.toxicity_weight})")
        if not self.kl_bound > 0:
            raise InvalidInput(f"kl_bound must be above 0 (got {self.kl_bound})")
        if self.min_pairs < 2:
            raise InvalidInput(f"min_pairs must be at least 2 (got {self.min_pairs})")
        if self.pairs not in PAIR_SOURCES:
            raise InvalidInput(
                f"pairs must be 'store' (the preference pairs Espalier holds) or 'sampled' (pairs built "
                f"from the policy's own samples ranked by the reward model) (got {self.pairs!r})"
            )
        if self.budget_minutes is not None and not 1 <= self.budget_minutes <= 24 * 60:
            raise InvalidInput(f"budget_minutes must be 1-1440 (got {self.budget_minutes})")
        if self.sft_path is not None and self.method != "sft":
            raise InvalidInput("sft_path applies to method sft only")
        if self.pairs == "sampled" and self.method != "dpo":
            raise InvalidInput("pairs='sampled' applies to method dpo only (rl samples by itself)")
        if not 2 <= self.samples_per_prompt <= 16:
            raise InvalidInput(
                f"samples_per_prompt must be 2-16: best and worst need two samples to compare "
                f"(got {self.samples_per_prompt})"
            )
        if self.label is not None and not NAME_PATTERN.match(self.label):
            raise InvalidInput(f"invalid label {self.label!r}: use 1-64 letters, digits, '.', '_', ':' or '-'")


def settings_from(params: dict[str, Any]) -> PolicySettings:
    known = set(PolicySettings.__dataclass_fields__)
    unknown = set(params) - known
    if unknown:
        raise InvalidInput(f"unknown policy training settings {sorted(unknown)}; known: {sorted(known)}")
    method = params.get("method", PolicySettings.method)
    params = {**METHOD_DEFAULTS.get(method, {}), **params} if isinstance(method, str) else params
    try:
        settings = PolicySettings(**params)
    except TypeError as exc:
        raise InvalidInput(f"bad policy training settings: {exc}") from None
    for name in (
        "steps",
        "lora_rank",
        "batch_size",
        "num_generations",
        "max_completion_tokens",
        "max_prompt_tokens",
        "prompts_from_conversations",
        "max_prompts",
        "eval_prompts",
        "min_pairs",
        "samples_per_prompt",
        "seed",
    ):
        if not isinstance(getattr(settings, name), int) or isinstance(getattr(settings, name), bool):
            raise InvalidInput(f"{name} must be a whole number (got {getattr(settings, name)!r})")
    for name in (
        "learning_rate",
        "temperature",
        "toxicity_weight",
        "kl_bound",
        "beta",
        "target_reward",
        "budget_minutes",
    ):
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise InvalidInput(f"{name} must be a number (got {value!r})")
    settings.check()
    return settings


@dataclass
class PolicyPlan:
    """What a checked run will use: the model, the reward model, and its prompts or pairs."""

    settings: PolicySettings
    model: str
    reward_model: Any  # RewardModelRecord or None (dpo without one)
    prompts: list[str]
    pairs: list[Any]  # stored pairs (dpo on stored pairs); sampled pairs are built by the job

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.settings.method,
            "model": self.model,
            "pair_source": self.settings.pairs,
            "reward_model": self.reward_model.id if self.reward_model is not None else None,
            "reward_model_version": self.reward_model.version if self.reward_model is not None else None,
            "prompts": len(self.prompts),
            "pairs": len(self.pairs),
        }


def load_prompt_file(path: str, *, limit: int) -> list[str]:
    """Prompts from a JSONL file (``{"prompt": "..."}`` or ``{"prompt": {"text": ...}}``) or text."""
    from espalier.core.sources.learning.evaluation import load_prompts

    file = Path(path).expanduser()
    if file.is_dir():
        raise InvalidInput(f"prompts_path {path} is a folder; give a JSONL or text file")
    return load_prompts(file, limit=limit)


def conversation_prompts(engine: Any, limit: int) -> list[str]:
    """The latest user message of logged chat requests, newest first, without repeats."""
    from sqlmodel import select

    from espalier.core.infrastructure.db.engine import session_scope
    from espalier.core.sources.conversations.tables import ChatRequestRecord

    found: list[str] = []
    with session_scope(engine) as session:
        query = select(ChatRequestRecord.messages).where(ChatRequestRecord.kind == "chat")
        for messages in session.exec(query.order_by(ChatRequestRecord.created_at.desc()).limit(limit * 4)):
            users = [m.get("content") for m in messages or [] if m.get("role") == "user"]
            text = users[-1] if users else None
            if isinstance(text, str) and text.strip() and text not in found:
                found.append(text[:MAX_PROMPT_CHARS])
            if len(found) >= limit:
                break
    return found


def gather_prompts(platform: Platform, settings: PolicySettings) -> list[str]:
    prompts = [p for p in settings.prompts if p.strip()]
    if settings.prompts_path:
        prompts += load_prompt_file(settings.prompts_path, limit=settings.max_prompts)
    if settings.prompts_from_conversations:
        prompts += conversation_prompts(platform.engine, settings.prompts_from_conversations)
    unique = list(dict.fromkeys(prompts))
    return unique[: settings.max_prompts]


def reward_model_for(platform: Any, settings: PolicySettings, model: str) -> Any:
    """The reward model the run uses, checked against the policy (see the module's rule)."""
    if settings.reward_model:
        record = platform.reward_models.get(str(settings.reward_model))  # NotFound lists where to look
    else:
        record = platform.reward_models.current()
        if record is None:
            instead = "use pairs 'store' (DPO on the pairs held)" if settings.method == "dpo" else "choose method dpo"
            raise Conflict(
                "no reward model is trained yet: train one first (POST /api/reward/train or "
                f"`espalier reward train`) or {instead}",
                code="no_reward_model",
            )
    owner = chat_model_owning(platform, record.base_model)
    if owner is not None and owner != model:
        raise Conflict(
            f"reward model v{record.version} was trained from the backbone of chat model '{owner}' and "
            f"can only drive that model, not '{model}'; train a reward model for '{model}' or on "
            "the built-in encoder",
            code="reward_model_base_mismatch",
        )
    return record


def chat_model_owning(platform: Platform, base_model: str) -> str | None:
    """The registered chat model whose weights ``base_model`` names (by name or source), if any."""
    if not base_model:
        return None
    wanted = _norm(base_model)
    for info in platform.models.list():
        spec, _ = platform.models.resolve(info.name, "base")
        if wanted in (_norm(info.name), _norm(spec.source), _norm(spec.source.removeprefix("builtin:"))):
            return info.name
    return None


def _norm(value: str) -> str:
    path = Path(value).expanduser()
    try:
        return str(path.resolve()) if path.exists() else value.strip().rstrip("/")
    except OSError:
        return value.strip()


def toxicity_scorer_for(platform: Platform, settings: PolicySettings) -> str:
    """The guardrail scorer the toxicity penalty uses: the one named, else the one the platform
    trusts most (a trained detoxify checkpoint when there is one, else the word-based profanity
    classifier). Preflight records it in the job's settings as the one used."""
    if settings.toxicity_scorer is not None:
        return settings.toxicity_scorer
    return platform.guardrails.choose(None, "the policy setting toxicity_scorer").name


def preflight(platform: Platform, settings: PolicySettings) -> PolicyPlan:
    """Every check that can be made before training; raises with what to do."""
    model = settings.model or platform.settings.default_model
    try:
        spec, _ = platform.models.resolve(model, "base")
    except NotFound:
        raise NotFound(f"no model named '{model}' to train (see GET /v1/models)", code="model_not_found") from None
    trainable = [e.name for e in platform.model_providers if getattr(e.item, "trainable", False)]
    if spec.provider not in trainable:
        raise InvalidInput(
            f"model '{model}' is served by provider '{spec.provider}'; policy training needs local "
            f"weights (a provider with trainable models: {', '.join(trainable) or 'none is loaded'})"
        )
    settings.toxicity_scorer = toxicity_scorer_for(platform, settings)
    if settings.toxicity_scorer not in platform.guardrails:
        raise InvalidInput(
            f"no guardrail scorer '{settings.toxicity_scorer}' to measure toxicity; "
            f"registered: {', '.join(platform.guardrails.names())}"
        )
    if settings.label is not None:
        taken = [v for v in platform.models.info(model).versions if v["label"] == settings.label]
        if taken:
            raise Conflict(f"model '{model}' already has a version labelled '{settings.label}'; choose another label")
    prompts: list[str] = []
    pairs: list[Any] = []
    reward = None
    if settings.method == "rsft":
        if settings.reward_model or settings.toxicity_weight == 0:
            reward = reward_model_for(platform, settings, model)  # keeps the best sample: required
        else:  # the toxicity penalty alone may choose; the reward model, when there is one, too
            reward = platform.reward_models.current()
            if reward is not None and chat_model_owning(platform, reward.base_model) not in (None, model):
                reward = None
        prompts = gather_prompts(platform, settings)
        held = settings.held_out(len(prompts))
        if len(prompts) - held < settings.min_pairs:
            raise InvalidInput(
                f"rejection sampling keeps at most one answer per training prompt: {len(prompts)} prompts "
                f"({held} held out) cannot give min_pairs={settings.min_pairs}; give more prompts",
                code="too_few_prompts",
            )
    elif settings.method == "sft":
        reward = platform.reward_models.current()  # optional: only for measuring before and after
        if reward is not None and chat_model_owning(platform, reward.base_model) not in (None, model):
            reward = None
        from espalier.core.sources.learning.demonstrations import demonstrations

        rows = demonstrations(platform.pairs, settings.sft_path, include_corrections=settings.include_corrections)
        if len(rows) < settings.min_pairs:
            raise InvalidInput(
                f"only {len(rows)} demonstrations (curated file and users' corrections); supervised "
                f"fine-tuning needs at least min_pairs={settings.min_pairs}: give sft_path, or collect corrections",
                code="too_few_demonstrations",
            )
        prompts = gather_prompts(platform, settings)  # optional: measured before and after
    elif settings.method == "rl":
        reward = reward_model_for(platform, settings, model)
        prompts = gather_prompts(platform, settings)
        if not prompts:
            raise InvalidInput(
                "the prompt set is empty: give prompts, prompts_path or prompts_from_conversations "
                "(RL samples completions of these prompts)",
                code="empty_prompt_set",
            )
        if settings.eval_prompts and len(prompts) < 2:
            raise InvalidInput(
                "RL needs at least 2 prompts: one is held out to measure the result (or set eval_prompts to 0)",
                code="too_few_prompts",
            )
    elif settings.pairs == "sampled":
        reward = reward_model_for(platform, settings, model)  # ranks the samples: required
        prompts = gather_prompts(platform, settings)
        if not prompts:
            raise InvalidInput(
                "the prompt set is empty: DPO on sampled pairs samples completions of prompts; give "
                "prompts, prompts_path or prompts_from_conversations",
                code="empty_prompt_set",
            )
        held = settings.held_out(len(prompts))
        if len(prompts) - held < settings.min_pairs:
            raise InvalidInput(
                f"DPO on sampled pairs makes at most one pair per training prompt: {len(prompts)} prompts "
                f"({held} held out) cannot give min_pairs={settings.min_pairs}; give more prompts",
                code="too_few_prompts",
            )
    else:
        if settings.reward_model:
            reward = reward_model_for(platform, settings, model)
        else:
            reward = platform.reward_models.current()  # optional: only for measuring reward before and after
            if reward is not None and chat_model_owning(platform, reward.base_model) not in (None, model):
                reward = None
        pairs = platform.pairs.all(include_imported=settings.include_imported)
        if len(pairs) < settings.min_pairs:
            raise InvalidInput(
                f"only {len(pairs)} preference pairs; DPO needs at least {settings.min_pairs}. "
                "Collect rankings or thumbs, or import pairs (POST /api/pairs/import)",
                code="too_few_pairs",
            )
        prompts = gather_prompts(platform, settings)
    return PolicyPlan(settings=settings, model=model, reward_model=reward, prompts=prompts, pairs=pairs)


def submit(platform: Any, params: dict[str, Any], *, by: Any = None) -> tuple[Any, PolicyPlan]:
    """Check ``params`` and queue the training job; returns (job, plan)."""
    settings = settings_from(dict(params))
    plan = preflight(platform, settings)
    kind = JOB_KINDS[settings.method]
    if kind not in platform.job_kinds:
        raise Conflict(f"no trainer for {kind}: the policy_training plugin is not loaded")
    job_params = {**settings.as_dict(), "model": plan.model, "beta": settings.effective_beta}  # recorded as used
    if len(json.dumps(job_params)) > 60_000:
        raise InvalidInput("the inline prompts are too large for a job; give them as a file (prompts_path)")
    job = platform.jobs.submit(kind, job_params, created_by=getattr(by, "key_id", None))
    platform.audit.record(by, "policy.train", job.id, **plan.summary())
    return job, plan
