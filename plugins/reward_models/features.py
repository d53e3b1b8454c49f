"""Reward models as linear heads on frozen features of the chat model's own backbone.

The InstructGPT reward model is the policy's backbone with a scalar head. Fine-tuning that
backbone on a CPU costs tens of minutes per epoch; freezing it costs one forward pass per text,
after which a head trains in about a second, with any number of epochs and a choice of
regularisation by validation. Measured on the shared HH pairs (docs/operators.md, "Reward
models"), such heads beat the fine-tuned MiniLM cross-encoder and the trivial rules.

Features of an answer after a prompt (the prompt keeps its end, as the cross-encoder reads it):
the backbone's last hidden state at the final token, its mean over the tokens, and the log of the
answer's length in characters. A head is ``w . (x - mu) / sd``. The score is the head trained on
all the training pairs; further heads, each trained on a bootstrap resample of them, measure the
model's uncertainty about an answer (the spread of all heads' scores). Averaging the heads
scored lower on held-out pairs than the head on all pairs (bench/reward.py), so they do not vote.

Artifact (a folder): ``reward_card.json`` (format ``espalier-reward-features/1``, the backbone
folder, settings, metrics), ``heads.npz`` (``mu``, ``sd``, ``weights`` of shape (heads, features))
and ``features.npz`` (the features computed in training, keyed by the text's hash: a retrain
computes only the texts it has not seen, and starts its heads from these weights).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FORMAT = "espalier-reward-features/1"
HEADS_NAME = "heads.npz"
FEATURES_NAME = "features.npz"
PROMPT_TAIL_CHARS = 600
L2_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
EPOCHS = 300


def text_key(prompt: str, completion: str) -> str:
    return hashlib.sha256((prompt[-PROMPT_TAIL_CHARS:] + "\x00" + completion).encode()).hexdigest()[:32]


class Backbone:
    """A frozen causal LM that turns (prompt, answer) into feature vectors, in batches."""

    def __init__(self, folder: str | Path, *, max_length: int = 256, batch_size: int = 16, dtype: str = "auto"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from espalier.plugins.common.dtypes import fast_cpu_dtype

        self.folder = str(folder)
        self.max_length = max_length
        self.batch_size = batch_size
        # bfloat16 only where the CPU has it natively: emulated, it made features 30x slower than float32
        self.dtype = fast_cpu_dtype() if dtype == "auto" else fast_cpu_dtype(dtype)
        dtype = self.dtype
        from espalier.plugins.common.gguf import LOAD_LOCK

        # One load at a time in the process: transformers builds models on the meta device while
        # loading, and a load in another thread at the same moment gets meta tensors.
        with LOAD_LOCK:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.folder, dtype=getattr(torch, dtype), local_files_only=True)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the answer and the latest turn
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.lock = threading.Lock()

    @property
    def size(self) -> int:
        return 2 * int(self.model.config.hidden_size) + 1

    def features(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        tick: Callable[[int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Any:
        """A float32 array (texts, features); ``tick(done)`` after each batch."""
        import math

        import numpy as np
        import torch

        rows = []
        for start in range(0, len(prompts), self.batch_size):
            if cancelled is not None and cancelled():
                from espalier.core.infrastructure.jobs.service import JobCancelled

                raise JobCancelled("cancelled while computing features")
            batch_prompts = prompts[start : start + self.batch_size]
            batch_answers = completions[start : start + self.batch_size]
            texts = [p[-PROMPT_TAIL_CHARS:] + " " + c for p, c in zip(batch_prompts, batch_answers, strict=True)]
            encoded = self.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            )
            with self.lock, torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            length = torch.tensor([[math.log1p(len(c))] for c in batch_answers])
            rows.append(torch.cat([hidden[:, -1], mean, length], dim=1).numpy())
            if tick is not None:
                tick(min(start + self.batch_size, len(prompts)))
        return np.concatenate(rows) if rows else np.zeros((0, self.size), dtype="float32")


def fit_heads(
    chosen: Any,
    rejected: Any,
    *,
    heads: int,
    l2: float,
    seed: int,
    init: Any | None = None,
    weights: Any | None = None,
) -> tuple[Any, Any, Any]:
    """Linear heads by the pairwise loss ``-log sigmoid(r_c - r_r) + l2 |w|^2`` on standardised
    features, one per bootstrap resample of the pairs (the first on all of them). Each pair's
    loss counts by its ``weights`` entry (AI pairs weigh less). Returns ``(mu, sd, heads)``;
    ``init`` (heads, features) warm-starts them."""
    import numpy as np
    import torch

    both = np.concatenate([chosen, rejected])
    mu, sd = both.mean(0), both.std(0) + 1e-6
    c = torch.tensor((chosen - mu) / sd, dtype=torch.float32)
    r = torch.tensor((rejected - mu) / sd, dtype=torch.float32)
    pair_weights = torch.ones(len(c)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    generator = np.random.default_rng(seed)
    fitted = []
    for head in range(heads):
        rows = np.arange(len(c)) if head == 0 else generator.integers(0, len(c), len(c))
        diff, weight = c[rows] - r[rows], pair_weights[rows]
        start = torch.tensor(init[head], dtype=torch.float32) if init is not None else torch.zeros(c.shape[1])
        w = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=0.05)
        for _ in range(EPOCHS):
            optimizer.zero_grad()
            pairwise = -(weight * torch.nn.functional.logsigmoid(diff @ w)).sum() / weight.sum().clamp_min(1e-8)
            loss = pairwise + l2 * (w * w).sum()
            loss.backward()
            optimizer.step()
        fitted.append(w.detach().numpy())
    return mu, sd, np.stack(fitted)


def head_scores(features: Any, mu: Any, sd: Any, weights: Any) -> Any:
    """(texts, heads) scores."""
    return ((features - mu) / sd) @ weights.T


class FeatureHeadScorer:
    """A loaded feature-head reward model: the ensemble's mean score, and its spread."""

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = Path(path)
        self.card = json.loads((self.path / "reward_card.json").read_text())
        folder = self.card["backbone"]["folder"]
        if not Path(folder).is_dir():
            from espalier.core.infrastructure.errors import Unavailable

            raise Unavailable(
                f"reward model {self.path} reads features of the backbone at {folder}, which is gone; "
                "retrain it (the model cache was probably cleared)"
            )
        self.backbone = Backbone(
            folder,
            max_length=int(self.card["max_length"]),
            batch_size=int(self.card["backbone"].get("batch_size", 16)),
            # the training's dtype where this CPU computes it fast, else float32 (features agree to
            # about 1e-2, what the standardised linear heads barely feel)
            dtype=self.card["backbone"].get("dtype", "bfloat16"),
        )
        heads = np.load(self.path / HEADS_NAME)
        self.mu, self.sd, self.weights = heads["mu"], heads["sd"], heads["weights"]

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> Any:
        return head_scores(self.backbone.features(list(prompts), list(completions)), self.mu, self.sd, self.weights)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The score of the head trained on all the pairs."""
        return [float(v) for v in self.scores(prompts, completions)[:, 0]]

    def uncertainty(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The heads' standard deviation per answer: large where the data did not settle the score."""
        return [float(v) for v in self.scores(prompts, completions).std(axis=1)]


def backbone_folder(platform: Any, model_name: str) -> tuple[str, str]:
    """(folder of local weights, source) of a registered chat model: the backbone of its reward model."""
    from espalier.plugins.common.gguf import convert_gguf
    from espalier.plugins.common.model_sources import resolve_source

    spec, _ = platform.models.resolve(model_name, "base")
    source = resolve_source(spec.source)
    folder = convert_gguf(source, platform.models.cache_dir) if source.kind == "gguf" else source.path
    return str(folder), spec.source


def train_feature_reward_model(
    pairs: Sequence[Any],
    out_dir: str | Path,
    settings: Any,
    *,
    backbone: tuple[str, str],
    init_from: str | Path | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    metrics: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Train an ensemble of feature heads (see the module); evaluate, save, return the card.

    ``backbone`` is ``(folder, source)`` of the chat model whose features are read. The
    regularisation is chosen on a validation part of the training pairs (never the held-out
    ones). ``init_from`` (an artifact of this format) lends its feature cache and head weights."""
    import time
    from dataclasses import asdict
    from datetime import UTC, datetime

    import numpy as np

    from espalier.core.sources.feedback.pairs import pair_sha256, snapshot_sha256
    from espalier.plugins.common.training_loop import Callbacks
    from espalier.plugins.reward_models.training import evaluate_scores, origins_of, prepare_pairs

    calls = Callbacks.of(progress, log, cancelled, metrics)
    pairs, train, held = prepare_pairs(pairs, settings)
    started = time.perf_counter()
    folder, source = backbone
    calls.progress(0.01, "loading the backbone")
    model = Backbone(folder, max_length=settings.max_length)
    cache: dict[str, Any] = {}
    previous_heads = None
    if init_from is not None:
        try:
            stored = np.load(Path(init_from) / FEATURES_NAME)
            if stored["matrix"].shape[1] == model.size and _same_backbone(
                init_from, folder, settings.max_length, model.dtype
            ):
                cache = dict(zip(stored["keys"].tolist(), stored["matrix"], strict=True))
                previous_heads = np.load(Path(init_from) / HEADS_NAME)["weights"]
                calls.log(f"warm start from {init_from}: {len(cache)} cached features, its heads")
            else:
                calls.log(f"training from scratch: {init_from} read another backbone, length or dtype")
        except (OSError, KeyError, ValueError) as exc:
            calls.log(f"training from scratch: could not read {init_from} ({exc})")
    texts = {}
    for pair in [*train, *held]:
        for answer in (pair.chosen, pair.rejected):
            key = text_key(pair.prompt, answer)
            if key not in cache:
                texts[key] = (pair.prompt, answer)
    keys = list(texts)
    calls.log(f"computing features of {len(keys)} texts ({len(cache)} cached) with {source}")
    computed = model.features(
        [texts[k][0] for k in keys],
        [texts[k][1] for k in keys],
        tick=lambda done: calls.progress(0.02 + 0.8 * done / max(1, len(keys)), f"features {done}/{len(keys)}"),
        cancelled=calls.cancelled,
    )
    cache.update(zip(keys, computed, strict=True))
    feature_seconds = time.perf_counter() - started

    def matrix(rows: Sequence[Any], side: str) -> Any:
        return np.stack([cache[text_key(p.prompt, getattr(p, side))] for p in rows])

    train_c, train_r = matrix(train, "chosen"), matrix(train, "rejected")
    pair_weights = np.array([p.weight for p in train], dtype="float32")
    # The regularisation: chosen on a seeded fifth of the training pairs.
    order = np.random.default_rng(settings.seed).permutation(len(train))
    cut = max(1, len(train) // 5) if len(train) >= 10 else 0
    inner_val, inner_train = order[:cut], order[cut:]
    l2, inner = L2_GRID[-1], {}
    if cut:
        for step, candidate in enumerate(L2_GRID, start=1):
            mu, sd, w = fit_heads(
                train_c[inner_train],
                train_r[inner_train],
                heads=1,
                l2=candidate,
                seed=settings.seed,
                weights=pair_weights[inner_train],
            )
            s_c = head_scores(train_c[inner_val], mu, sd, w)[:, 0]
            s_r = head_scores(train_r[inner_val], mu, sd, w)[:, 0]
            inner[candidate] = float(np.mean(np.where(s_c > s_r, 1.0, np.where(s_c == s_r, 0.5, 0.0))))
            calls.metrics(step, inner_accuracy=inner[candidate], l2=candidate)
        l2 = max(inner, key=lambda k: (inner[k], k))
    calls.progress(0.85, f"fitting {settings.heads} heads (l2 {l2})")
    init = previous_heads if previous_heads is not None and previous_heads.shape[0] >= settings.heads else None
    mu, sd, weights = fit_heads(
        train_c, train_r, heads=settings.heads, l2=l2, seed=settings.seed, init=init, weights=pair_weights
    )
    train_seconds = time.perf_counter() - started
    if calls.cancelled():
        from espalier.plugins.reward_models.training import TrainingCancelled

        raise TrainingCancelled("training cancelled; nothing saved")

    calls.progress(0.9, "evaluating on held-out pairs")
    chosen = head_scores(matrix(held, "chosen"), mu, sd, weights)
    rejected = head_scores(matrix(held, "rejected"), mu, sd, weights)
    result = evaluate_scores(chosen[:, 0].tolist(), rejected[:, 0].tolist(), held)
    per_head = [float(np.mean(chosen[:, h] > rejected[:, h])) for h in range(weights.shape[0])]
    result["heads_accuracy"] = {"min": round(min(per_head), 4), "max": round(max(per_head), 4)}
    result["ensemble_mean_accuracy"] = round(float(np.mean(chosen.mean(1) > rejected.mean(1))), 4)
    result["mean_uncertainty"] = round(float(np.concatenate([chosen.std(1), rejected.std(1)]).mean()), 4)
    result["train_pairs_per_second"] = round(len(train) / max(train_seconds, 1e-9), 2)
    result["inner_validation"] = {str(k): round(v, 4) for k, v in inner.items()}
    calls.metrics(len(L2_GRID) + 1, eval_accuracy=result["accuracy"], eval_margin=result["mean_margin"])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / HEADS_NAME, mu=mu, sd=sd, weights=weights)
    # Only the texts of the pairs trained on and held out now: deleted or excluded feedback goes.
    stored_keys = sorted({text_key(p.prompt, a) for p in [*train, *held] for a in (p.chosen, p.rejected)})
    np.savez(out / FEATURES_NAME, keys=np.array(stored_keys), matrix=np.stack([cache[k] for k in stored_keys]))
    card = {
        "format": FORMAT,
        "base_model": f"features:{source}",
        "backbone": {"folder": folder, "source": source, "dtype": model.dtype, "batch_size": model.batch_size},
        "warm_start": str(init_from) if previous_heads is not None else None,
        "max_length": settings.max_length,
        "l2": l2,
        "data": {
            "sha256": snapshot_sha256(pairs),
            "pairs": len(pairs),
            "trained_on": len(train),
            "held_out": len(held),
            "by_origin": origins_of(pairs),
            "ai_pair_weight": next((p.weight for p in pairs if p.origin == "ai"), None),
            "features_computed": len(keys),
        },
        "held_out": [pair_sha256(p.prompt, p.chosen, p.rejected) for p in held],
        "settings": asdict(settings),
        "metrics": result,
        "feature_seconds": round(feature_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "reward_card.json").write_text(json.dumps(card, indent=2))
    calls.log(
        f"held-out accuracy {result['accuracy']:.4f} {result['accuracy_interval']} on {len(held)} pairs; "
        f"best rule '{result['best_baseline']}' {result['baselines'][result['best_baseline']]['mean']:.4f}; "
        f"{train_seconds:.0f}s ({result['train_pairs_per_second']} pairs/s)"
    )
    card["held_out_pairs"] = held
    calls.progress(1.0, "saved")
    return card


def _same_backbone(path: str | Path, folder: str, max_length: int, dtype: str) -> bool:
    card = json.loads((Path(path) / "reward_card.json").read_text())
    backbone = card.get("backbone", {})
    return (
        backbone.get("folder") == folder
        and int(card.get("max_length", 0)) == max_length
        and backbone.get("dtype", "bfloat16") == dtype
    )
