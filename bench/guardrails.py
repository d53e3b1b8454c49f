"""Guardrail benchmark: precision, recall, ROC AUC and per-message latency of each scorer.

    .venv/bin/python bench/guardrails.py [--train-size 2000] [--epochs 1] [--max-length 64] [--retrain]

Toxicity: alt-profanity-check (``profanity``), a MiniLM classifier trained here in detoxify's
format (``trained``: a sample of the tweets plus half of the TOXIGEN sentences) and a length-only
baseline, on three sets none of them trained on:

* ``davidson``: 20% of ``toxicity_train.jsonl`` held out (stratified, seed 0). alt-profanity-check
  was trained on these tweets (other rows of the same corpus), so its score there is inflated;
* ``toxigen``: the other half of ``toxigen_train.jsonl`` (implicit hate, stratified, seed 0);
* ``rtp``: RealToxicityPrompts prompts, Perspective toxicity > 0.5 as positive.

Injection: rules only, the trained classifier, rules + classifier, and length, on a quarter of
``injection_train.jsonl`` held out by clusters of near-duplicates (word 5-gram Jaccard >= 0.5),
as the data's own test split was made, so no near-copy of a held-out prompt is trained on; and
again on the held-out prompts of 100-1,000 characters, where length alone separates poorly.

Trained models are cached in ``bench/results/guardrail-models/`` keyed by data and settings;
``--retrain`` ignores the cache. Results are also written to ``bench/results/guardrails.json``.
Precision and recall use a 0.5 threshold; the length baseline scores ``len / (len + median
training length)``, 0.5 at the median. Latency is the median of single-message ``score`` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from espalier.plugins.common.text_classifiers.data import LabelledTexts, stratified_sample, stratified_split  # noqa: E402
from espalier.plugins.common.text_classifiers.metrics import binary_report  # noqa: E402
from espalier.plugins.injection import InjectionScorer, train_injection_model  # noqa: E402
from espalier.plugins.toxicity import DetoxifyScorer, ProfanityScorer, load_labelled, train_toxicity_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS = REPO_ROOT / "bench" / "results"


class LengthBaseline:
    name = "length"
    categories = ("any",)

    def __init__(self, texts: list[str]):
        self.median = statistics.median(len(t) for t in texts)

    def scores(self, texts: list[str]) -> list[float]:
        return [len(t) / (len(t) + self.median) for t in texts]


def near_duplicate_groups(texts: list[str], threshold: float = 0.5) -> list[int]:
    """Group id per text; texts whose word 5-gram Jaccard is >= threshold share a group."""
    shingles = []
    for text in texts:
        words = text.lower().split()
        shingles.append({tuple(words[i : i + 5]) for i in range(max(1, len(words) - 4))})
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = shingles[i], shingles[j]
            if min(len(a), len(b)) < threshold * max(len(a), len(b)):
                continue  # Jaccard <= min/max, so it cannot reach the threshold
            if len(a & b) / len(a | b) >= threshold:
                parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


def group_split(data: LabelledTexts, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    groups: dict[int, list[int]] = {}
    for i, group in enumerate(near_duplicate_groups(data.texts)):
        groups.setdefault(group, []).append(i)
    labels = data.binary()
    target = {cls: fraction * labels.count(cls) for cls in (0, 1)}
    held_count = {0: 0, 1: 0}
    order = sorted(groups.values())
    random.Random(seed).shuffle(order)
    kept, held = [], []
    for members in order:
        majority = round(sum(labels[i] for i in members) / len(members))
        if held_count[majority] + len(members) <= target[majority] + 1:
            held.extend(members)
            for i in members:
                held_count[labels[i]] += 1
        else:
            kept.extend(members)
    return sorted(kept), sorted(held)


def cached_train(kind: str, train_fn, train: LabelledTexts, held: LabelledTexts, settings: dict, retrain: bool):
    key_source = json.dumps(
        {"kind": kind, "data": train.sha256, "train": train.texts, "held": held.texts, **settings}, sort_keys=True
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    out = RESULTS / "guardrail-models" / f"{kind}-{key}"
    card_path = out / "model_card.json"
    if card_path.is_file() and (out / "checkpoint.ckpt").is_file() and not retrain:
        card = json.loads(card_path.read_text())
        print(f"[{kind}] reusing cached model {out} (trained in {card['train_seconds']}s)", flush=True)
        return out, card, False
    print(f"[{kind}] training on {len(train)} examples {settings} ...", flush=True)
    last = [-1]

    def progress(fraction: float, message: str = "") -> None:
        if int(fraction * 10) != last[0]:
            last[0] = int(fraction * 10)
            print(f"  {fraction:4.0%} {message}", flush=True)

    started = time.perf_counter()
    card = train_fn(train, out, eval_data=held, progress=progress, **settings)
    card["wall_seconds"] = round(time.perf_counter() - started, 1)
    card_path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    print(
        f"[{kind}] trained in {card['train_seconds']}s ({card['wall_seconds']}s with loading and evaluation)",
        flush=True,
    )
    return out, card, True


def p50_latency_ms(score_fns: dict, texts: list[str], samples: int) -> dict[str, float]:
    """Median single-message latency per scorer. Scorers take turns on each message, so a burst of
    load from another process on a shared machine hits them all alike."""
    for score_one in score_fns.values():
        score_one(texts[0])  # warm-up (lazy model load)
    timings: dict[str, list[float]] = {name: [] for name in score_fns}
    for text in texts[:samples]:
        for name, score_one in score_fns.items():
            started = time.perf_counter()
            score_one(text)
            timings[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def evaluate(
    rows: list[dict], dataset: str, scorer: str, labels: list[int], scores: list[float], latency_ms: float | None
):
    report = binary_report(labels, scores)
    rows.append({"set": dataset, "scorer": scorer, **report, "p50_ms": latency_ms})


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = (
        f"{'set':<10} {'scorer':<20} {'n':>5} {'pos':>5} {'precision':>9} {'recall':>7} {'ROC AUC':>8} {'p50 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        latency = f"{r['p50_ms']:8.2f}" if r["p50_ms"] is not None else f"{'-':>8}"
        print(
            f"{r['set']:<10} {r['scorer']:<20} {r['n']:>5} {r['positives']:>5} "
            f"{r['precision']:9.3f} {r['recall']:7.3f} {r['roc_auc']:8.3f} {latency}"
        )


def bench_toxicity(args) -> tuple[list[dict], dict]:
    data = load_labelled(DATA_DIR / "toxicity_train.jsonl")
    train_idx, held_idx = stratified_split(data, 0.2, seed=0)
    held = data.subset(held_idx)
    toxigen = load_labelled(DATA_DIR / "toxigen_train.jsonl")
    toxigen_train_idx, toxigen_held_idx = stratified_split(toxigen, 0.5, seed=0)
    # The tweets teach profanity and slurs; half of the implicit-hate sentences, repeated so that
    # a few hundred rows are not drowned by thousands of tweets, teach hate without swear words.
    parts = [data.subset(stratified_sample(data, train_idx, args.train_size, seed=0))]
    parts += [toxigen.subset(toxigen_train_idx)] * args.toxigen_repeat
    train = LabelledTexts.concat(*parts)
    settings = {"epochs": args.epochs, "max_length": args.max_length, "max_examples": None, "seed": 0}
    out, card, _ = cached_train("toxicity", train_toxicity_model, train, held, settings, args.retrain)

    rtp = [json.loads(line) for line in (DATA_DIR / "rtp_prompts_dev.jsonl").read_text().splitlines()]
    toxigen_held = toxigen.subset(toxigen_held_idx)
    sets = {
        "davidson": (held.texts, held.binary()),
        "toxigen": (toxigen_held.texts, toxigen_held.binary()),
        "rtp": ([r["prompt"] for r in rtp], [int(r["toxic_prompt"]) for r in rtp]),
    }
    profanity, trained = ProfanityScorer(), DetoxifyScorer(out / "checkpoint.ckpt")
    length = LengthBaseline(train.texts)
    rows: list[dict] = []
    scorers = {"profanity": profanity, "trained (detoxify)": trained}
    for name, (texts, labels) in sets.items():
        latency = p50_latency_ms(
            {label: (lambda t, s=scorer: s.score([t], direction="input")) for label, scorer in scorers.items()},
            texts,
            args.latency_samples,
        )
        for label, scorer in scorers.items():
            scores = [s.scores["toxicity"] for s in scorer.score(texts, direction="input")]
            evaluate(rows, name, label, labels, scores, latency[label])
        evaluate(rows, name, "length baseline", labels, length.scores(texts), None)
    info = {"model": str(out), "card": card, "train_rows": len(train), "toxigen_train_rows": len(toxigen_train_idx)}
    return rows, info


def bench_injection(args) -> tuple[list[dict], dict]:
    data = load_labelled(DATA_DIR / "injection_train.jsonl", category="injection")
    train_idx, held_idx = group_split(data, 0.25, seed=0)
    train, held = data.subset(train_idx), data.subset(held_idx)
    settings = {
        "epochs": args.injection_epochs,
        "max_length": args.injection_max_length,
        "max_examples": None,
        "seed": 0,
    }
    out, card, _ = cached_train("injection", train_injection_model, train, held, settings, args.retrain)

    checkpoint = out / "checkpoint.ckpt"
    scorers = {
        "rules only": InjectionScorer(),
        "classifier only": InjectionScorer(checkpoint, use_rules=False),
        "rules + classifier": InjectionScorer(checkpoint),
    }
    labels = held.binary()
    # Where both classes overlap in length, length alone says little; a scorer that only learnt
    # "long means jailbreak" would fall to chance here.
    band = [i for i, t in enumerate(held.texts) if 100 <= len(t) <= 1000]
    all_scores: dict[str, list[float]] = {}
    rows: list[dict] = []
    latency = p50_latency_ms(
        {name: (lambda t, s=scorer: s.score([t], direction="input")) for name, scorer in scorers.items()},
        held.texts,
        args.latency_samples,
    )
    for name, scorer in scorers.items():
        scores = all_scores[name] = [s.scores["injection"] for s in scorer.score(held.texts, direction="input")]
        evaluate(rows, "injection", name, labels, scores, latency[name])
    all_scores["length baseline"] = LengthBaseline(train.texts).scores(held.texts)
    evaluate(rows, "injection", "length baseline", labels, all_scores["length baseline"], None)
    for name, scores in all_scores.items():
        evaluate(rows, "inj 100-1k", name, [labels[i] for i in band], [scores[i] for i in band], None)
    return rows, {"model": str(out), "card": card, "train_rows": len(train), "held_rows": len(held)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-size", type=int, default=1500, help="tweets to train on (stratified sample of the 80%% not held out)"
    )
    parser.add_argument(
        "--toxigen-repeat", type=int, default=3, help="times the TOXIGEN training half is repeated (0: tweets only)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--injection-epochs", type=int, default=2)
    parser.add_argument("--injection-max-length", type=int, default=128)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--retrain", action="store_true", help="train again even when a cached model matches")
    parser.add_argument("--only", choices=["toxicity", "injection"], help="run one half")
    args = parser.parse_args(argv)
    if not DATA_DIR.is_dir():
        print(f"{DATA_DIR} not found: the benchmark reads the shared data beside the repository", file=sys.stderr)
        return 2
    import torch

    print(
        f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}, "
        f"load average at start: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict = {}
    if args.only in (None, "toxicity"):
        rows, info = bench_toxicity(args)
        results["toxicity"] = {"rows": rows, **info}
    if args.only in (None, "injection"):
        rows, info = bench_injection(args)
        results["injection"] = {"rows": rows, **info}
    if "toxicity" in results:
        card = results["toxicity"]["card"]
        print_table(
            f"Toxicity (trained: {card['data']['trained_on']} rows = {args.train_size} tweets + "
            f"{results['toxicity']['toxigen_train_rows']} TOXIGEN sentences x{args.toxigen_repeat}, "
            f"{card['settings']['epochs']} epoch(s), "
            f"max_length {card['settings']['max_length']}, training {card['train_seconds']}s)",
            results["toxicity"]["rows"],
        )
        print("  note: alt-profanity-check was trained on the Davidson tweets; its 'davidson' row is inflated.")
    if "injection" in results:
        card = results["injection"]["card"]
        print_table(
            f"Injection (trained: {card['data']['trained_on']} prompts, held out {results['injection']['held_rows']} "
            f"by near-duplicate clusters, {card['settings']['epochs']} epoch(s), "
            f"max_length {card['settings']['max_length']}, "
            f"training {card['train_seconds']}s)",
            results["injection"]["rows"],
        )
        print("  note: injection rows are ~8x longer than benign ones; read every score against the length baseline.")
        print("  'inj 100-1k': the held-out prompts of 100 to 1,000 characters, where the classes overlap in length.")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (latencies on a busy shared machine vary several-fold)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guardrails.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
