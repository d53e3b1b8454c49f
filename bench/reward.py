"""Reward model benchmark: held-out pairwise accuracy on Anthropic HH pairs, against its peers.

    .venv/bin/python bench/reward.py [--max-pairs 1800] [--epochs 1] [--max-length 128] [--batch-size 16]

Trains the built-in reward model (MiniLM + one-output head, loss -log(sigmoid(r_c - r_r))) on
``../shared/data/hh_pairs_train.jsonl`` with 20% held out by pair hash (the same split the
``train:reward`` job uses), and compares on the held-out pairs:

* ``reward-model``: the trained model;
* ``length``: the longer answer wins (a tie counts half);
* ``chance``: 50%.

Also reports training pairs/s and the calibration of P(chosen) = sigmoid(r_c - r_r). The machine
is shared and has 2 CPU cores: timings are noisy, and the default settings are kept small.
Results go to ``bench/results/reward.json``.
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

from espalier.core.sources.feedback.pairs import Pair, parse_pair_lines  # noqa: E402
from espalier.core.sources.reward.settings import RewardSettings  # noqa: E402
from espalier.plugins.reward_models.training import pairwise_metrics, split, train_reward_model  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pairs", type=int, default=1800)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"missing {DATA}: the shared data folder is needed", file=sys.stderr)
        return 1
    skipped: list[str] = []
    pairs = [Pair(p, c, r, "import") for p, c, r in parse_pair_lines(DATA.read_text().splitlines(), skipped=skipped)]
    pairs = pairs[: args.max_pairs]
    settings = RewardSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        holdout_fraction=0.2,
    )
    settings.check()
    train, held = split(pairs, settings.holdout_fraction)
    print(
        f"{len(pairs)} pairs ({len(skipped)} invalid lines skipped): {len(train)} train, {len(held)} held out; "
        f"epochs={args.epochs} max_length={args.max_length} batch={args.batch_size}; load {os.getloadavg()[0]:.1f}"
    )

    lengths = [(len(p.chosen), len(p.rejected)) for p in held]
    length_metrics = pairwise_metrics([float(c > r) for c, r in lengths], [float(r > c) for c, r in lengths])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        card = train_reward_model(
            pairs, out, settings, log=lambda m: print("  " + m, flush=True), progress=_progress_printer()
        )
    wall = time.perf_counter() - started
    model = card["metrics"]
    rows = [("reward-model", model["accuracy"]), ("length", length_metrics["accuracy"]), ("chance", 0.5)]
    print()
    print(f"{'method':<14}{'held-out acc':>14}{'vs length':>12}{'vs chance':>12}")
    for name, accuracy in rows:
        print(f"{name:<14}{accuracy:>14.4f}{accuracy / length_metrics['accuracy']:>12.3f}{accuracy / 0.5:>12.3f}")
    print()
    print(
        f"training: {model['train_pairs_per_second']:.1f} pairs/s ({card['train_seconds']:.0f} s for "
        f"{card['steps']} steps); whole run {wall:.0f} s"
    )
    print(f"calibration: ECE {model['ece']:.4f}, Brier {model['brier']:.4f}, mean margin {model['mean_margin']:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "data": str(DATA.name),
        "pairs": len(pairs),
        "train": len(train),
        "held_out": len(held),
        "settings": vars(args),
        "reward_model": model,
        "length_baseline": length_metrics["accuracy"],
        "chance": 0.5,
        "train_seconds": card["train_seconds"],
        "wall_seconds": round(wall, 1),
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": host.python_version()},
    }
    (RESULTS / "reward.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'reward.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
