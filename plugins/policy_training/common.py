"""What both policy trainers share: the base weights, prompt rendering, sampling with and without
the adapter, the KL estimate, per-step bookkeeping (metrics, stop rules, warnings) and the plot.

The reference model is never a second copy: it is the policy with its LoRA adapter disabled
(``PeftModel.disable_adapter()``), the same trick TRL uses during training.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espalier.core.sources.feedback.pairs import prompt_text
from espalier.core.sources.learning.policy import PolicySettings

TURN = re.compile(r"\n\n(Human|Assistant|System|Tool):")
ROLES = {"Human": "user", "Assistant": "assistant", "System": "system", "Tool": "tool"}
WINDOW = 3  # steps averaged by the stop rule and the warnings


# Weights -----------------------------------------------------------------------------------------
def load_base(platform: Any, model_name: str) -> tuple[Any, Any, Path]:
    """A fresh, trainable float32 copy of ``model_name``'s base weights, and its tokenizer.

    A GGUF source is read from the safetensors copy the transformers provider caches on first
    load (dequantised once for every user), never dequantised again here. The serving copy is not
    touched: training needs its own weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from espalier.plugins.common.gguf import LOAD_LOCK, convert_gguf
    from espalier.plugins.common.model_sources import resolve_source

    spec, _ = platform.models.resolve(model_name, "base")
    source = resolve_source(spec.source)
    folder = convert_gguf(source, platform.models.cache_dir) if source.kind == "gguf" else source.path
    with LOAD_LOCK:  # a model loading for a request at the same time would get meta tensors
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, Path(folder)


# Prompts -----------------------------------------------------------------------------------------
def messages_from_transcript(prompt: str) -> list[dict[str, str]]:
    """A Human/Assistant transcript (the HH layout, and how Espalier stores pairs) as chat messages.

    Text without the markers is one user message. The trailing empty ``Assistant:`` turn is the
    place of the reply and is dropped.
    """
    parts = TURN.split(prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    head = parts[0].strip()
    if head:
        messages.append({"role": "user", "content": head})
    for index in range(1, len(parts) - 1, 2):
        content = parts[index + 1].strip()
        if content:
            messages.append({"role": ROLES[parts[index]], "content": content})
    return messages or [{"role": "user", "content": prompt.strip()}]


def fit_messages(tokenizer: Any, messages: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest turns (then the start of the last one) until the rendered prompt fits."""
    messages = list(messages)
    while len(messages) > 1 and _chat_length(tokenizer, messages) > max_tokens:
        messages = messages[1:]
        while messages and messages[0]["role"] != "user" and len(messages) > 1:
            messages = messages[1:]
    if _chat_length(tokenizer, messages) > max_tokens:
        ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        keep = max(1, max_tokens - (_chat_length(tokenizer, messages) - len(ids)))
        messages[-1] = {**messages[-1], "content": tokenizer.decode(ids[-keep:])}
    return messages


def _chat_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


def fit_text(tokenizer: Any, text: str, max_tokens: int, *, keep: str = "end") -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[-max_tokens:] if keep == "end" else ids[:max_tokens])


def training_prompt(tokenizer: Any, prompt: str, settings: PolicySettings) -> Any:
    """The prompt in TRL's form: a message list (chat) or a plain string (text)."""
    if settings.prompt_format == "chat":
        return fit_messages(tokenizer, messages_from_transcript(prompt), settings.max_prompt_tokens)
    return fit_text(tokenizer, prompt, settings.max_prompt_tokens)


def reward_prompt(prompt: Any) -> str:
    """What the reward model reads as the prompt: the HH transcript layout it was trained on."""
    return prompt_text(prompt) if isinstance(prompt, list) else str(prompt)


def completion_text(completion: Any) -> str:
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def render(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return prompt


# Sampling and KL ---------------------------------------------------------------------------------
@dataclass
class Samples:
    prompts: list[Any]
    texts: list[str]
    kl: list[float] = field(default_factory=list)  # per completion: sum over its tokens of KL(pi || pi_ref)
    tokens: list[int] = field(default_factory=list)


def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    with_kl: bool,
    batch_size: int = 8,
) -> Samples:
    """Sample one completion per prompt from ``model`` (a PeftModel: adapter as it is now) and, when
    ``with_kl``, estimate each completion's KL from the adapter-disabled reference: the sum over
    its tokens of the exact next-token KL (:func:`token_kl`), never negative."""
    import torch

    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = Samples(prompts=list(prompts), texts=[])
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [render(tokenizer, p) for p in prompts[start : start + batch_size]]
            chat = isinstance(prompts[start], list)
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
            with torch.inference_mode():
                generated = model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            completion = generated[:, encoded["input_ids"].shape[1] :]
            mask = torch.ones_like(completion, dtype=torch.bool)
            for row in range(completion.shape[0]):
                for col, token in enumerate(completion[row].tolist()):
                    if token in eos:
                        mask[row, col + 1 :] = False  # the end-of-sequence token counts, what follows is padding
                        break
            out.texts.extend(
                tokenizer.decode(ids[m], skip_special_tokens=True).strip()
                for ids, m in zip(completion, mask, strict=True)
            )
            out.tokens.extend(int(m.sum()) for m in mask)
            if with_kl:
                attention = torch.cat([encoded["attention_mask"], mask.long()], dim=1)
                policy = _completion_log_softmax(model, generated, attention, completion.shape[1])
                with model.disable_adapter():
                    reference = _completion_log_softmax(model, generated, attention, completion.shape[1])
                out.kl.extend((token_kl(policy, reference) * mask).sum(dim=1).tolist())
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out


def _completion_log_softmax(model: Any, ids: Any, attention: Any, length: int) -> Any:
    """The next-token log-distributions at each of the last ``length`` positions (batch, length, vocab)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, -length - 1 : -1, :].float()
        return torch.log_softmax(logits, dim=-1)


def token_kl(policy: Any, reference: Any) -> Any:
    """Exact KL(pi || pi_ref) between the two next-token distributions at each position (nats).

    Summed over a sampled completion's tokens this estimates the sequence KL without the variance
    of the one-token estimate ``log pi(y) - log pi_ref(y)``, and it is never negative (a KL is
    not). Along samples drawn at a temperature other than 1 it is the KL along those paths, not
    exactly the KL of the untempered policy."""
    return (policy.exp() * (policy - reference)).sum(dim=-1).clamp_min(0.0)


def kl_summary(samples: Samples) -> dict[str, float]:
    tokens = sum(samples.tokens) or 1
    return {"kl": statistics.fmean(samples.kl) if samples.kl else 0.0, "kl_per_token": sum(samples.kl) / tokens}


# Scoring -----------------------------------------------------------------------------------------
class Scorers:
    """The reward model (optional) and the toxicity guardrail, over (prompt, completion) texts."""

    def __init__(self, platform: Any, reward_record: Any, toxicity_name: str):
        from espalier.plugins.common.gguf import LOAD_LOCK

        with LOAD_LOCK:
            self.reward = platform.reward_models.scorer(reward_record) if reward_record is not None else None
        self.toxicity = platform.guardrails.get(toxicity_name)

    def rewards(self, prompts: Sequence[Any], texts: Sequence[str]) -> list[float]:
        if self.reward is None:
            return []
        return self.reward.score([reward_prompt(p) for p in prompts], list(texts))

    def toxicities(self, texts: Sequence[str]) -> list[float]:
        return [s.scores["toxicity"] for s in self.toxicity.score(list(texts), direction="output")]

    def objective(self, prompts: Sequence[Any], texts: Sequence[str], toxicity_weight: float) -> list[float]:
        """What RL maximises before its KL term (its reward functions weighted 1 and ``toxicity_weight``):
        the reward model's score minus ``toxicity_weight`` times the completion's toxicity."""
        rewards = self.rewards(prompts, texts) or [0.0] * len(texts)
        toxicity = self.toxicities(texts)
        return [r - toxicity_weight * t for r, t in zip(rewards, toxicity, strict=True)]


def describe(scorers: Scorers, samples: Samples) -> dict[str, float]:
    row: dict[str, float] = {}
    rewards = scorers.rewards(samples.prompts, samples.texts)
    if rewards:
        row["reward"] = statistics.fmean(rewards)
    toxicity = scorers.toxicities(samples.texts)
    row["toxicity"] = statistics.fmean(toxicity)
    row["toxic_share"] = sum(t >= 0.5 for t in toxicity) / len(toxicity)
    row["mean_tokens"] = statistics.fmean(samples.tokens)
    return row


# Per-step bookkeeping ----------------------------------------------------------------------------
class RunLog:
    """Receives each step's numbers: records them, decides whether to stop, and warns of reward
    hacking (reward rising while KL passes its bound, or the sampled completions' toxicity rising)."""

    def __init__(self, job: Any, settings: PolicySettings, say: Callable[[str], None]):
        self.job = job
        self.settings = settings
        self.say = say
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.warnings: list[str] = []
        self.stop_reason = "step budget"
        self.cancelled = False
        self.deadline: float | None = None  # time.perf_counter() when the time budget ends
        self._warned: set[str] = set()

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.history.get(name, [])]

    def record(self, step: int, **values: float | None) -> bool:
        """Store a step's values; True when training should stop (target reached or cancelled)."""
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        for name, value in clean.items():
            self.history.setdefault(name, []).append((step, value))
        self.job.metrics(step, **clean)
        self._check_hacking(step)
        summary = " ".join(f"{k} {clean[k]:.4g}" for k in ("reward", "kl", "loss", "toxicity") if k in clean)
        self.job.progress(
            0.05 + 0.8 * min(step, self.settings.steps) / self.settings.steps,
            f"step {step}/{self.settings.steps} {summary}",
        )
        if step == 1 or step % max(1, self.settings.steps // 10) == 0:
            self.say(f"step {step}: {summary}")
        rewards = self.values("reward")
        target = self.settings.target_reward
        if target is not None and len(rewards) >= min(WINDOW, self.settings.steps):
            recent = statistics.fmean(rewards[-WINDOW:])
            if recent >= target:
                self.stop_reason = f"target reward {target} reached (mean of the last steps {recent:.4g})"
                self.say(f"stopping at step {step}: {self.stop_reason}")
                return True
        return self.check_cancelled()

    def check_cancelled(self) -> bool:
        if not self.cancelled and self.job.cancelled():
            self.cancelled = True
            self.stop_reason = "cancelled"
        return self.cancelled

    def out_of_time(self) -> bool:
        """True once the time budget (``budget_minutes``) is spent: training stops, keeping its steps."""
        import time

        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        if not self.stop_reason.startswith("time budget"):
            self.stop_reason = f"time budget of {self.settings.budget_minutes:g} minutes"
            self.say(f"stopping: {self.stop_reason}")
        return True

    def warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(message)
            self.say(f"WARNING: {message}")

    def _check_hacking(self, step: int) -> None:
        rewards, kls, toxicity = self.values("reward"), self.values("kl"), self.values("toxicity")
        if len(rewards) >= 2 * WINDOW and kls:
            first, last = statistics.fmean(rewards[:WINDOW]), statistics.fmean(rewards[-WINDOW:])
            if last > first and kls[-1] > self.settings.kl_bound:
                self.warn(
                    "kl",
                    f"possible reward hacking at step {step}: reward rose from {first:.4g} to {last:.4g} "
                    f"while the KL from the reference reached {kls[-1]:.4g} per token (bound "
                    f"{self.settings.kl_bound}); raise beta or stop earlier",
                )
        if len(toxicity) >= 2 * WINDOW:
            first, last = statistics.fmean(toxicity[:WINDOW]), statistics.fmean(toxicity[-WINDOW:])
            if last > first + 0.05:
                self.warn(
                    "toxicity",
                    f"possible reward hacking at step {step}: toxicity of sampled completions rose "
                    f"from {first:.3f} to {last:.3f}; add or raise toxicity_weight",
                )


def make_callback(run: RunLog, on_log: Callable[[int, dict[str, float], Any], dict[str, float | None]]) -> Any:
    """A transformers TrainerCallback that feeds :class:`RunLog` and honours cancellation."""
    from transformers import TrainerCallback

    class EspalierCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if run.check_cancelled():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or state.global_step < 1:
                return
            values = on_log(state.global_step, logs, kwargs.get("model"))
            if run.record(state.global_step, **values):
                control.should_training_stop = True

        def on_step_end(self, args, state, control, **kwargs):
            if run.check_cancelled() or run.out_of_time():
                control.should_training_stop = True

    return EspalierCallback()


def quiet(trainer: Any) -> None:
    """No per-step printing to the server's stdout: the job's metrics and log hold the numbers."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# The plot ----------------------------------------------------------------------------------------
def plot_curves(history: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    panels = [name for name in ("reward", "kl", "loss", "toxicity") if history.get(name)]
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.2), squeeze=False)
    for axis, name in zip(axes[0], panels, strict=False):
        steps, values = zip(*history[name], strict=True)
        axis.plot(steps, values, marker="." if len(steps) < 40 else None)
        axis.set_title(name)
        axis.set_xlabel("step")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
