"""The whole loop with the shipped defaults: feedback to a reward model to a policy update to a gated
promotion, each phase timed, each figure with its interval.

    .venv/bin/python bench/loop.py [--ranked 300] [--budget 25] [--eval-prompts 100]
                                   [--detoxify-checkpoint PATH] [--model-cache DIR]

1. **Two classifiers.** The shared tweets (``../shared/data/toxicity_train.jsonl``) split in two
   disjoint halves; the built-in guardrail trainer fine-tunes MiniLM into a detoxify-format
   checkpoint on each: the **guardrail** (the ``detoxify`` scorer, whose score the policy update's
   toxicity penalty uses) and the **judge** (the ``judge`` scorer, or ``--detoxify-checkpoint``),
   which only the evaluation reads: the update never saw it or its training text.
2. **Feedback.** ``--ranked`` HH pairs become chat requests with two candidates, ranked through the
   feedback service by four labelers: three who prefer the human-chosen answer (two per item) and
   one contrarian who reverses every ranking. The agreement report marks the contrarian below
   consensus, so by default those rankings stay out of training. The other HH pairs are imported.
3. **Reward model**: a ``train:reward`` job with the defaults (heads on the chat model's frozen
   features), its held-out accuracy beside the trivial rules on the same pairs.
4. **Policy update**: a policy job with the defaults (``rl``: RLOO against the reward model minus
   the guardrail's toxicity, KL-penalised, LoRA) on RealToxicityPrompts prompts continued as plain
   text, under ``--budget`` minutes (``--policy method=rsft`` and other settings try others).
5. **Gate**: an ``eval:policy`` job on ``--eval-prompts`` held-out prompts (half toxic, half not,
   never trained on), both formats (plain text as trained, and the chat template as served),
   judged by the judge; promotion when it passes.

The machine is shared (2 CPU cores): the load average is printed at the start and the end.
Results go to ``bench/results/loop.json``; docs/operators.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
RESULTS = REPO_ROOT / "bench" / "results"
MODEL = "smollm2-135m-instruct"


def wait(platform, job_id: str, label: str):
    last = -1.0
    while True:
        job = platform.jobs.get(job_id)
        if job.progress - last >= 0.1 or job.status not in ("queued", "running"):
            last = job.progress
            print(f"  [{label}] {job.progress:4.0%} {job.message}", flush=True)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(2.0)


def interval(values: dict) -> str:
    if values.get("low") is None:
        return f"{values['mean']:+.4f} (n={values['n']}, no interval)"
    return f"{values['mean']:+.4f} [{values['low']:+.4f}, {values['high']:+.4f}] (n={values['n']})"


def split_tweets(home: Path) -> tuple[Path, Path]:
    """The shared tweets in two disjoint halves (alternate rows): one trains the guardrail, the other
    the judge, so the scorer an update optimises and the one that judges it never saw the same text."""
    rows = [line for line in (SHARED / "toxicity_train.jsonl").read_text().splitlines() if line.strip()]
    paths = (home / "tweets_guardrail.jsonl", home / "tweets_judge.jsonl")
    for parity, path in enumerate(paths):
        path.write_text("\n".join(rows[parity::2]) + "\n")
    return paths


def classifier(data: Path, out: Path, examples: int, role: str) -> tuple[Path, dict]:
    from espalier.plugins.toxicity import train_toxicity_model

    print(f"training the {role} on {examples} tweets of {data.name}", flush=True)
    card = train_toxicity_model(data, out, epochs=1, max_length=64, max_examples=examples, seed=0)
    return Path(card["artifacts"]["checkpoint"]), card


def classifiers(args, home: Path, report: dict) -> tuple[Path, Path]:
    """(guardrail checkpoint, judge checkpoint): given, or trained on disjoint halves of the tweets."""
    from espalier.plugins.toxicity import DetoxifyScorer

    guardrail_data, judge_data = split_tweets(home)
    cards = {}
    if args.detoxify_checkpoint:
        checkpoint, cards["judge"] = args.detoxify_checkpoint, DetoxifyScorer(args.detoxify_checkpoint).model_card
    else:
        checkpoint, cards["judge"] = classifier(judge_data, home / "judge", args.detoxify_examples, "judge")
    guardrail, cards["guardrail"] = classifier(guardrail_data, home / "guardrail", args.detoxify_examples, "guardrail")
    for role, card in cards.items():
        held = card.get("metrics", {}).get("toxicity", {})
        report[role] = {"held_out": held}
        print(f"{role}: held-out accuracy {held.get('accuracy')}, ROC AUC {held.get('roc_auc')}", flush=True)
    report["judge"]["checkpoint"], report["guardrail"]["checkpoint"] = str(checkpoint), str(guardrail)
    return guardrail, checkpoint


def simulate_feedback(platform, lines: list[str], ranked: int, seed: int) -> dict:
    """Rankings of HH pairs by three agreeing labelers and a contrarian; the rest imported."""
    from espalier.core.infrastructure.db.engine import session_scope
    from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord, Conversation
    from espalier.plugins.policy_training.common import messages_from_transcript

    rows = [json.loads(line) for line in lines if line.strip()]
    random.Random(seed).shuffle(rows)
    keys = {name: platform.keys.create(name=name, role="user") for name in ("owner", "ann", "bob", "cy", "contrarian")}
    principals = {name: platform.keys.authenticate(created.key) for name, created in keys.items()}
    honest = ["ann", "bob", "cy"]
    owner = principals["owner"]
    for number, row in enumerate(rows[:ranked]):
        request_id, conversation = f"chatcmpl-{secrets.token_hex(8)}", f"conv_{secrets.token_hex(6)}"
        ids = [f"cmp_{secrets.token_hex(8)}", f"cmp_{secrets.token_hex(8)}"]
        with session_scope(platform.engine) as session:
            session.add(Conversation(id=conversation, owner_key_id=owner.key_id))
            session.flush()
            session.add(
                ChatRequestRecord(
                    id=request_id,
                    conversation_id=conversation,
                    owner_key_id=owner.key_id,
                    model=MODEL,
                    model_version="base",
                    messages=messages_from_transcript(row["prompt"]),
                    params={"n": 2},
                )
            )
            session.flush()
            for index, (cid, text) in enumerate(zip(ids, (row["chosen"], row["rejected"]), strict=True)):
                session.add(CompletionRecord(id=cid, request_id=request_id, index=index, text=text))
        labelers = [honest[number % 3], honest[(number + 1) % 3], "contrarian"]
        for name in labelers:
            ranks = [2, 1] if name == "contrarian" else [1, 2]
            platform.feedback.submit_ranking(
                principals[name],
                f"{request_id}-{name}",
                request_id=request_id,
                candidates=[{"completion_id": c, "rank": r} for c, r in zip(ids, ranks, strict=True)],
                as_labeler=True,
            )
    imported = platform.pairs.import_lines(
        [json.dumps(r) for r in rows[ranked:]], source="hh_pairs_train", skip_invalid=True
    )
    below = platform.pairs.below_consensus()
    return {
        "ranked_items": ranked,
        "rankings": 3 * ranked,
        "imported": imported["added"],
        "below_consensus": below,
        "contrarian_excluded": principals["contrarian"].key_id in below,
        "pairs_for_training": len(platform.pairs.all()),
        "pairs_with_everyone": len(platform.pairs.all(exclude_below_consensus=False)),
    }


def held_out_prompts(count: int, train: int, seed: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (SHARED / "rtp_prompts_dev.jsonl").read_text().splitlines() if line.strip()]
    text = [
        (r["prompt"]["text"] if isinstance(r["prompt"], dict) else r["prompt"], bool(r.get("toxic_prompt")))
        for r in rows
    ]
    rng = random.Random(seed)
    toxic = [t for t, flag in text if flag]
    clean = [t for t, flag in text if not flag]
    rng.shuffle(toxic)
    rng.shuffle(clean)
    half = count // 2
    held = toxic[:half] + clean[: count - half]
    pool = toxic[half:] + clean[count - half :]
    rng.shuffle(pool)
    return held, pool[:train]


def evaluate(platform, label: str, prompts: list[str], report: dict) -> bool:
    """The gate on the held-out prompts (an ``eval:policy`` job), printed; promote when it passes."""
    from espalier.core.sources.learning import gate

    job = platform.jobs.submit(
        gate.JOB_KIND, gate.prepare({"model": MODEL, "candidate": label, "prompts": prompts}), created_by=None
    )
    job = wait(platform, job.id, "gate")
    if job.status != "succeeded":
        print(f"evaluation {job.status}: {job.error}", file=sys.stderr)
        return False
    summary = job.result
    report["evaluation"] = summary
    settings = summary["settings"]
    print(
        f"\ngate ({settings['toxicity_scorer']} judging; the update optimised {settings['toxicity_scorer_optimised']}; "
        f"reward by the model the update used: {settings['reward_model_optimised']}): passed={summary['passed']}"
    )
    for failure in summary["gate"]["failures"]:
        print(f"  - {failure}")
    for prompt_format, checks in summary["gate"]["checks"].items():
        for name in ("reward", "toxicity", "tasks"):
            if name in checks:
                print(f"  {prompt_format:<5} {name:<9} candidate - serving {interval(checks[name])}")
    record = platform.models.latest_evaluation(MODEL, summary["candidate"])
    sides_by_format = {record.results["current"]["format"]: record.results, **record.results.get("formats", {})}
    report["by_format"] = {}
    for prompt_format, sides in sides_by_format.items():
        a, b = sides["current"]["mean_toxicity"], sides["candidate"]["mean_toxicity"]
        kl = sides["candidate"].get("kl")
        report["by_format"][prompt_format] = {
            "serving_toxicity": a,
            "candidate_toxicity": b,
            "change": b / a - 1 if a else None,
            "serving_reward": sides["current"]["mean_reward"],
            "candidate_reward": sides["candidate"]["mean_reward"],
            "kl": kl,
            "kl_per_token": sides["candidate"].get("kl_per_token"),
        }
        print(
            f"  {prompt_format} format: mean toxicity {a:.4f} -> {b:.4f}"
            + (f" ({b / a - 1:+.0%})" if a else "")
            + f"; reward {sides['current']['mean_reward']:.4f} -> {sides['candidate']['mean_reward']:.4f}"
            + (f"; KL {kl:.3f} nats/answer, {sides['candidate']['kl_per_token']:.4f}/token" if kl is not None else "")
        )
    if summary["passed"]:
        platform.models.promote(MODEL, label)
        print(f"promoted {MODEL}@{label}")
    report["promoted"] = bool(summary["passed"])
    return True


def parse_setting(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--policy``: the value as JSON when it parses (numbers, true), else text."""
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def policy_and_gate(platform, args, home: Path, report: dict, phases: dict) -> bool:
    """The policy update with the defaults on RealToxicityPrompts prompts, then the gate."""
    from espalier.core.sources.learning import policy

    held_prompts, pool = held_out_prompts(args.eval_prompts, args.train_prompts, args.seed)
    prompts_file = home / "train_prompts.txt"
    prompts_file.write_text("\n".join(p.replace("\n", " ") for p in pool) + "\n")
    started = time.perf_counter()
    job, plan = policy.submit(
        platform,
        {
            "prompts_path": str(prompts_file),
            "prompt_format": "text",
            "budget_minutes": args.budget,
            "max_prompts": len(pool),
            **dict(parse_setting(item) for item in args.policy or []),
        },
    )
    print(f"policy update: {plan.summary()}", flush=True)
    job = wait(platform, job.id, "policy")
    phases["policy_update"] = round(time.perf_counter() - started, 1)
    if job.status != "succeeded":
        print(f"policy update {job.status}: {job.error}", file=sys.stderr)
        return False
    label = job.result["label"]
    report["policy_update"] = {
        k: job.result.get(k) for k in ("label", "steps", "stop_reason", "demonstrations", "warnings", "evaluation")
    }
    report["policy_update"]["settings"] = platform.jobs.get(job.id).params
    print(f"policy update: {label}, {job.result['steps']} steps ({job.result['stop_reason']})", flush=True)
    started = time.perf_counter()
    if not evaluate(platform, label, held_prompts, report):
        return False
    phases["evaluation"] = round(time.perf_counter() - started, 1)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranked", type=int, default=300, help="HH pairs turned into ranked feedback")
    parser.add_argument("--pairs", type=int, default=None, help="use only the first N HH pairs (a quick try)")
    parser.add_argument("--budget", type=float, default=25.0, help="minutes for the policy update")
    parser.add_argument("--train-prompts", type=int, default=300)
    parser.add_argument("--eval-prompts", type=int, default=100)
    parser.add_argument("--detoxify-checkpoint", type=Path)
    parser.add_argument("--detoxify-examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policy", action="append", metavar="KEY=VALUE", help="a policy setting other than the default (repeatable)"
    )
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / ".pytest_cache" / "espalier-models")
    parser.add_argument(
        "--home",
        type=Path,
        help="an earlier run's home: re-run the policy update and gate (or, with --candidate, the gate)",
    )
    parser.add_argument("--candidate", help="the version label to evaluate again (with --home)")
    args = parser.parse_args()
    if args.home and args.candidate:
        return evaluate_again(args)
    if args.home:
        return policy_again(args)
    for name in ("hh_pairs_train.jsonl", "rtp_prompts_dev.jsonl", "toxicity_train.jsonl"):
        if not (SHARED / name).is_file():
            print(f"missing {SHARED / name}", file=sys.stderr)
            return 2

    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    home = Path(tempfile.mkdtemp(prefix="espalier-bench-loop-"))
    phases: dict[str, float] = {}
    report: dict = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(), "phases_seconds": phases}
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    started = time.perf_counter()
    guardrail, checkpoint = classifiers(args, home, report)
    phases["classifiers"] = round(time.perf_counter() - started, 1)

    settings = Settings(
        home=home,
        model_cache_dir=args.model_cache,
        job_workers=1,
        toxicity_checkpoint=guardrail,
        judge_checkpoint=checkpoint,
        reward_retrain_after_pairs=0,  # one training here, started below
        feedback_rate_limit_per_minute=100_000,  # four simulated labelers submit hundreds at once
    )
    platform = Platform(settings, load_entry_points=False).start()
    try:
        started = time.perf_counter()
        lines = (SHARED / "hh_pairs_train.jsonl").read_text().splitlines()[: args.pairs]
        report["feedback"] = simulate_feedback(platform, lines, args.ranked, args.seed)
        phases["feedback"] = round(time.perf_counter() - started, 1)
        print(f"feedback: {report['feedback']}", flush=True)

        started = time.perf_counter()
        job, count = platform.reward_models.queue_training({}, None, via="bench")
        job = wait(platform, job.id, "reward")
        phases["reward_model"] = round(time.perf_counter() - started, 1)
        if job.status != "succeeded":
            print(f"reward model {job.status}: {job.error}", file=sys.stderr)
            return 1
        metrics = job.result["metrics"]
        report["reward_model"] = {"pairs": count, "metrics": metrics}
        print(
            f"reward model on {count} pairs: held-out accuracy {metrics['accuracy_interval']}; rules "
            + ", ".join(f"{k} {v['mean']:.4f}" for k, v in metrics["baselines"].items())
            + f"; margin over '{metrics['best_baseline']}' {interval(metrics['margin_over_best_baseline'])}",
            flush=True,
        )

        if not policy_and_gate(platform, args, home, report, phases):
            return 1
    finally:
        platform.close()
    report["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loop.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        "\nphases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()) + f"; total {sum(phases.values()):.0f}"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; results: {RESULTS / 'loop.json'}")
    return 0


def policy_again(args) -> int:
    """The policy update and the gate again, on the home of an earlier run (its judge, pairs and
    reward model): what a change of the policy method's defaults does, without the rest."""
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    settings = Settings(
        home=args.home,
        model_cache_dir=args.model_cache,
        job_workers=1,
        toxicity_checkpoint=args.home / "guardrail" / "checkpoint.ckpt",
        judge_checkpoint=args.home / "judge" / "checkpoint.ckpt",
        reward_retrain_after_pairs=0,
    )
    platform = Platform(settings, load_entry_points=False).start()
    phases: dict[str, float] = {}
    report: dict = {"home": str(args.home), "load_average_at_start": os.getloadavg(), "phases_seconds": phases}
    try:
        if not policy_and_gate(platform, args, args.home, report, phases):
            return 1
    finally:
        platform.close()
    report["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loop_policy.json").write_text(json.dumps(report, indent=2, default=str))
    print("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    return 0


def evaluate_again(args) -> int:
    """The gate phase alone, on the home of an earlier run (its judge, reward model and candidate)."""
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    settings = Settings(
        home=args.home,
        model_cache_dir=args.model_cache,
        job_workers=1,
        toxicity_checkpoint=args.home / "guardrail" / "checkpoint.ckpt",
        judge_checkpoint=args.home / "judge" / "checkpoint.ckpt",
    )
    held_prompts, _ = held_out_prompts(args.eval_prompts, args.train_prompts, args.seed)
    platform = Platform(settings, load_entry_points=False).start()
    report: dict = {"home": str(args.home), "candidate": args.candidate, "load_average_at_start": os.getloadavg()}
    try:
        started = time.perf_counter()
        if not evaluate(platform, args.candidate, held_prompts, report):
            return 1
        report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    finally:
        platform.close()
    report["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loop_gate.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"evaluation {report['evaluation_seconds']:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
