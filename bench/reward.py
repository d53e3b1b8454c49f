"""Reward model benchmark: the choices of reward model, on held-out Anthropic HH pairs, beside the
trivial rules on the same pairs.

    .venv/bin/python bench/reward.py [--kinds features,cross-encoder] [--ce-epochs 1] [--ce-max-length 128]
                                     [--max-length 256] [--heads 5] [--curve 0.1,0.25,0.5,1]

Every model trains on ``../shared/data/hh_pairs_train.jsonl`` with 20% held out by pair hash
(the split the ``train:reward`` job uses) and is judged on the same held-out pairs:

* ``features``: the default, a linear head on the frozen features of the chat model's backbone
  (SmolLM2-135M-Instruct: last and mean hidden state, and log length), the regularisation chosen
  on a fifth of the training pairs, with ``--heads`` - 1 bootstrap heads for the uncertainty;
* ``features, mean of heads``: the same heads averaged (what an ensemble vote would give);
* ``cross-encoder``: the MiniLM cross-encoder fine-tuned end to end (the former default);
* the trivial rules: the longer answer wins, the shorter answer wins, the answer with more
  refusal words wins (ties count half).

Each row prints the held-out accuracy with its 95% bootstrap interval, the paired interval of its
margin over the best rule, training pairs/s and minutes. ``--curve`` refits the feature heads on
growing shares of the training pairs (same features, same held-out pairs): what more data buys.
The machine is shared (2 CPU cores): the load average is printed at the start and the end.
Results go to ``bench/results/reward.json``; docs/operators.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from espalier.core.infrastructure.statistics import bootstrap_mean  # noqa: E402
from espalier.core.sources.feedback.pairs import Pair, parse_pair_lines  # noqa: E402
from espalier.core.sources.reward.baselines import compare_with_rules, correctness  # noqa: E402
from espalier.core.sources.reward.settings import settings_from  # noqa: E402
from espalier.plugins.reward_models.features import (  # noqa: E402
    FEATURES_NAME,
    fit_heads,
    head_scores,
    text_key,
    train_feature_reward_model,
)
from espalier.plugins.reward_models.training import split, train_reward_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data" / "hh_pairs_train.jsonl"
RESULTS = REPO_ROOT / "bench" / "results"


def _progress_printer():
    last = [-1.0]

    def report(fraction: float, message: str = "") -> None:
        if fraction - last[0] >= 0.1 or fraction >= 1.0:
            last[0] = fraction
            print(f"  {fraction:4.0%} {message}", flush=True)

    return report


def backbone(cache: Path) -> tuple[str, str]:
    from espalier.plugins.common.gguf import convert_gguf
    from espalier.plugins.common.model_sources import resolve_source

    return str(convert_gguf(resolve_source("builtin:smollm2-135m-instruct"), cache)), "builtin:smollm2-135m-instruct"


def row(name: str, metrics: dict, seconds: float, pairs_per_second: float) -> dict:
    return {
        "model": name,
        "accuracy": metrics["accuracy_interval"],
        "margin_over_best_rule": metrics["margin_over_best_baseline"],
        "best_rule": metrics["best_baseline"],
        "pairs_per_second": pairs_per_second,
        "minutes": round(seconds / 60, 2),
    }


def curve(card_dir: Path, train: list[Pair], held: list[Pair], shares: list[float], settings) -> list[dict]:
    """Refit the heads on growing shares of the training pairs; the features are the trained model's."""
    import numpy as np

    stored = np.load(card_dir / FEATURES_NAME)
    cache = dict(zip(stored["keys"].tolist(), stored["matrix"], strict=True))

    def matrix(rows, side):
        return np.stack([cache[text_key(p.prompt, getattr(p, side))] for p in rows])

    l2 = json.loads((card_dir / "reward_card.json").read_text())["l2"]
    order = np.random.default_rng(0).permutation(len(train))
    points = []
    for share in shares:
        subset = [train[i] for i in order[: max(4, int(share * len(train)))]]
        mu, sd, weights = fit_heads(matrix(subset, "chosen"), matrix(subset, "rejected"), heads=1, l2=l2, seed=0)
        chosen = head_scores(matrix(held, "chosen"), mu, sd, weights)[:, 0]
        rejected = head_scores(matrix(held, "rejected"), mu, sd, weights)[:, 0]
        accuracy = bootstrap_mean(correctness(chosen.tolist(), rejected.tolist()))
        points.append({"train_pairs": len(subset), "accuracy": accuracy.as_dict()})
        print(f"  curve: {len(subset):5d} pairs -> {accuracy}", flush=True)
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="features,cross-encoder")
    parser.add_argument("--max-length", type=int, default=256, help="features: tokens read per text")
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--ce-epochs", type=int, default=1)
    parser.add_argument("--ce-max-length", type=int, default=128)
    parser.add_argument("--ce-batch-size", type=int, default=16)
    parser.add_argument("--ce-max-steps", type=int, default=None)
    parser.add_argument("--curve", default="0.1,0.25,0.5,1")
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / ".pytest_cache" / "espalier-models")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"missing {DATA}: the shared data folder is needed", file=sys.stderr)
        return 1
    skipped: list[str] = []
    pairs = [Pair(p, c, r, "import") for p, c, r in parse_pair_lines(DATA.read_text().splitlines(), skipped=skipped)]
    train, held = split(pairs, 0.2)
    load_start = os.getloadavg()[0]
    print(f"{len(pairs)} pairs: {len(train)} train, {len(held)} held out; load average {load_start:.1f}", flush=True)
    rules = compare_with_rules([0.5] * len(held), held)["baselines"]
    for name, accuracy in rules.items():
        print(f"  rule '{name}': {accuracy['mean']:.4f} [{accuracy['low']:.4f}, {accuracy['high']:.4f}]")
    rows, points = [], []
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        if "features" in kinds:
            settings = settings_from({"kind": "features", "heads": args.heads, "max_length": args.max_length})
            started = time.perf_counter()
            card = train_feature_reward_model(
                pairs,
                Path(scratch) / "features",
                settings,
                backbone=backbone(args.model_cache),
                log=lambda m: print("  " + m, flush=True),
                progress=_progress_printer(),
            )
            seconds = time.perf_counter() - started
            rows.append(row("features", card["metrics"], seconds, round(len(train) / seconds, 2)))
            ensemble = mean_of_heads(Path(scratch) / "features", held)
            rows.append(row("features, mean of heads", ensemble, seconds, round(len(train) / seconds, 2)))
            shares = [float(s) for s in args.curve.split(",") if s.strip()]
            points = curve(Path(scratch) / "features", train, held, shares, settings)
        if "cross-encoder" in kinds:
            params = {
                "kind": "cross-encoder",
                "epochs": args.ce_epochs,
                "max_length": args.ce_max_length,
                "batch_size": args.ce_batch_size,
                **({"max_steps": args.ce_max_steps} if args.ce_max_steps else {}),
            }
            started = time.perf_counter()
            card = train_reward_model(
                pairs,
                Path(scratch) / "cross",
                settings_from(params),
                log=lambda m: print("  " + m, flush=True),
                progress=_progress_printer(),
            )
            seconds = time.perf_counter() - started
            rows.append(row("cross-encoder", card["metrics"], seconds, card["metrics"]["train_pairs_per_second"]))
    for name, accuracy in rules.items():
        rows.append({"model": f"rule: {name}", "accuracy": accuracy})
    print()
    print("| model | held-out accuracy (95% interval) | margin over best rule | pairs/s | minutes |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        a = r["accuracy"]
        margin = r.get("margin_over_best_rule")
        margin_text = f"{margin['mean']:+.4f} [{margin['low']:+.4f}, {margin['high']:+.4f}]" if margin else ""
        print(
            f"| {r['model']} | {a['mean']:.4f} [{a['low']:.4f}, {a['high']:.4f}] | {margin_text} | "
            f"{r.get('pairs_per_second', '')} | {r.get('minutes', '')} |"
        )
    load_end = os.getloadavg()[0]
    print(f"load average {load_start:.1f} at the start, {load_end:.1f} at the end; {os.cpu_count()} CPUs")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "data": DATA.name,
        "pairs": len(pairs),
        "train": len(train),
        "held_out": len(held),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "curve": points,
        "machine": {"cpus": os.cpu_count(), "load": [load_start, load_end], "python": host.python_version()},
    }
    (RESULTS / "reward.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'reward.json'}")
    return 0


def mean_of_heads(card_dir: Path, held: list[Pair]) -> dict:
    """The trained model's heads averaged: what a vote of the bootstrap heads would score."""
    import numpy as np

    stored = np.load(card_dir / FEATURES_NAME)
    cache = dict(zip(stored["keys"].tolist(), stored["matrix"], strict=True))
    heads = np.load(card_dir / "heads.npz")

    def scores(side):
        matrix = np.stack([cache[text_key(p.prompt, getattr(p, side))] for p in held])
        return head_scores(matrix, heads["mu"], heads["sd"], heads["weights"]).mean(1).tolist()

    return compare_with_rules(correctness(scores("chosen"), scores("rejected")), held)


if __name__ == "__main__":
    raise SystemExit(main())
