"""Policy update benchmark: RL (RLOO, KL-penalised) and DPO on the default model, before and after.

    .venv/bin/python bench/policy.py [--rl-steps 8] [--dpo-steps 8] [--eval-prompts 16] [--tokens 12]
                                     [--reward-model PATH] [--rm-pairs 400] [--rm-steps 10]

1. A reward model: the built-in trainer (MiniLM + one-output head) on
   ``../shared/data/hh_pairs_train.jsonl`` (small settings; or ``--reward-model`` reuses an artifact).
2. Both policy paths as real jobs (``train:policy-rl`` and ``train:policy-dpo``) on
   SmolLM2-135M-Instruct, prompts from ``../shared/data/rtp_prompts_dev.jsonl`` (the toxic half,
   as in TRL's detoxification example) continued as plain text. RL's reward is the reward model's
   score minus ``--toxicity-weight`` times the guardrail's toxicity; DPO uses the HH pairs.
3. The peer is the base model measured in the same run: every model continues the same held-out
   prompts (half toxic, half not; never trained on) through core/evaluation.py's toxicity
   evaluation, the same sampling and seed; the reward model scores the same continuations.
   KL from the reference comes from each job's own held-out samples (sum over tokens of
   log pi - log pi_ref, averaged over completions sampled from the policy).

TRL's detoxification example cut a 125M model's mean toxicity by 29%. The machine is shared (2
CPU cores, other engineers' jobs): wall times are noisy, and the defaults are sized to finish
there (a few steps: they show the machinery and the direction, not a converged policy). For a
real run: ``--rl-steps 200 --dpo-steps 200 --batch-size 8 --tokens 32 --eval-prompts 100
--rm-steps 200``. Results go to ``bench/results/policy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import random
import statistics
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


def load_rtp() -> list[dict]:
    return [json.loads(line) for line in (SHARED / "rtp_prompts_dev.jsonl").read_text().splitlines() if line.strip()]


def wait(platform, job_id: str) -> object:
    last = -1.0
    while True:
        job = platform.jobs.get(job_id)
        if job.progress - last >= 0.1 or job.status not in ("queued", "running"):
            last = job.progress
            print(f"  {job.progress:4.0%} {job.message}", flush=True)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-model", type=Path, help="reuse a reward model artifact folder instead of training one")
    parser.add_argument("--rm-pairs", type=int, default=400)
    parser.add_argument("--rm-steps", type=int, default=10)
    parser.add_argument("--rl-steps", type=int, default=8)
    parser.add_argument("--dpo-steps", type=int, default=8)
    parser.add_argument("--dpo-pairs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=2, help="prompts (rl) per step; dpo takes twice as many pairs")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=12, help="tokens per sampled completion")
    parser.add_argument("--rl-learning-rate", type=float, default=5e-4)
    parser.add_argument("--dpo-learning-rate", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=None, help="KL coefficient (default: 0.04 rl, 0.1 dpo)")
    parser.add_argument("--toxicity-weight", type=float, default=1.0)
    parser.add_argument("--train-prompts", type=int, default=200)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--methods", default="rl,dpo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / ".pytest_cache" / "espalier-models")
    args = parser.parse_args()
    for name in ("hh_pairs_train.jsonl", "rtp_prompts_dev.jsonl"):
        if not (SHARED / name).is_file():
            print(f"missing {SHARED / name}", file=sys.stderr)
            return 2

    from espalier.core import policy
    from espalier.core.evaluation import evaluate_toxicity
    from espalier.core.platform import Platform
    from espalier.core.reward.settings import RewardSettings
    from espalier.core.settings import Settings
    from espalier.plugins.reward_models.training import train_reward_model

    home = Path(tempfile.mkdtemp(prefix="espalier-bench-policy-"))
    settings = Settings(home=home, model_cache_dir=args.model_cache, job_workers=1)
    platform = Platform(settings, load_entry_points=False).start()
    report: dict = {"machine": {"python": sys.version.split()[0], "cpu_count": os.cpu_count(), "host": host.node(),
                                "load_average_at_start": os.getloadavg()},
                    "settings": vars(args) | {"reward_model": str(args.reward_model) if args.reward_model else None,
                                              "model_cache": str(args.model_cache)}}  # fmt: skip
    try:
        # 1. Pairs and the reward model.
        hh = (SHARED / "hh_pairs_train.jsonl").read_text().splitlines()
        platform.pairs.import_lines(hh, source="hh_pairs_train", limit=max(args.rm_pairs, args.dpo_pairs), skip_invalid=True)
        started = time.perf_counter()
        if args.reward_model:
            rm_path = args.reward_model
            card = json.loads((rm_path / "reward_card.json").read_text())
        else:
            print(f"training the reward model on {args.rm_pairs} HH pairs, {args.rm_steps} steps", flush=True)
            rm_path = home / "reward-model"
            card = train_reward_model(platform.pairs.all()[: args.rm_pairs], rm_path,
                                      RewardSettings(max_steps=args.rm_steps, batch_size=16, max_length=128),
                                      progress=lambda f, m="": print(f"  {f:4.0%} {m}", flush=True) if m.startswith("step") else None)  # fmt: skip
        platform.reward_models.register(path=str(rm_path), base_model=card["base_model"], data_sha256=card["data"]["sha256"],
                                         pairs=card["data"]["pairs"], metrics=card["metrics"],
                                         current_accuracy_same_holdout=None, job_id=None)  # fmt: skip
        report["reward_model"] = {"path": str(rm_path), "held_out_accuracy": card["metrics"]["accuracy"],
                                  "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        print(f"reward model: held-out accuracy {card['metrics']['accuracy']:.3f}", flush=True)

        # 2. Prompts: held out (half toxic, half not) and the training pool (the rest of the toxic half).
        rows = load_rtp()
        rng = random.Random(args.seed)
        toxic = [r["prompt"]["text"] if isinstance(r["prompt"], dict) else r["prompt"] for r in rows if r.get("toxic_prompt")]
        clean = [r["prompt"]["text"] if isinstance(r["prompt"], dict) else r["prompt"] for r in rows if not r.get("toxic_prompt")]
        rng.shuffle(toxic)
        rng.shuffle(clean)
        half = args.eval_prompts // 2
        held_out = toxic[:half] + clean[: args.eval_prompts - half]
        train_pool = toxic[half : half + args.train_prompts]
        prompts_file = home / "train_prompts.txt"
        prompts_file.write_text("\n".join(p.replace("\n", " ") for p in train_pool) + "\n")

        # 3. The runs.
        common = {"model": MODEL, "batch_size": args.batch_size, "max_completion_tokens": args.tokens,
                  "max_prompt_tokens": 64, "prompt_format": "text", "eval_prompts": 6, "seed": args.seed,
                  "prompts_path": str(prompts_file)}  # fmt: skip
        runs = {
            "rl": {**common, "method": "rl", "steps": args.rl_steps, "learning_rate": args.rl_learning_rate,
                   "num_generations": args.num_generations, "toxicity_weight": args.toxicity_weight},
            "dpo": {**common, "batch_size": 2 * args.batch_size, "method": "dpo", "steps": args.dpo_steps, "learning_rate": args.dpo_learning_rate,
                    "min_pairs": 8},
        }  # fmt: skip
        labels: dict[str, str] = {}
        report["runs"] = {}
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            params = {**runs[method], **({"beta": args.beta} if args.beta is not None else {})}
            job, plan = policy.submit(platform, params)
            print(f"{method}: job {job.id}, {plan.summary()}", flush=True)
            started = time.perf_counter()
            job = wait(platform, job.id)
            seconds = time.perf_counter() - started
            if job.status != "succeeded":
                print(f"{method} {job.status}: {job.error}", file=sys.stderr)
                return 1
            labels[method] = job.result["label"]
            evaluation = job.result["evaluation"]
            report["runs"][method] = {"job": job.id, "wall_seconds": round(seconds, 1), "steps": job.result["steps"],
                                      "stop_reason": job.result["stop_reason"], "warnings": job.result["warnings"],
                                      "kl": evaluation.get("kl"), "kl_per_token": evaluation.get("kl_per_token"),
                                      "job_evaluation": {k: evaluation.get(k) for k in ("base", "policy")},
                                      "final_step": job.result["metrics"], "plot": job.result["plot"]}  # fmt: skip

        # 4. The same held-out prompts through every model (served through the provider, adapters applied).
        print(f"evaluating base and {', '.join(labels)} on {len(held_out)} held-out prompts", flush=True)
        started = time.perf_counter()
        names = [f"{MODEL}@base"] + [f"{MODEL}@{label}" for label in labels.values()]
        record = evaluate_toxicity(platform.engine, platform.models, platform.guardrails.get("profanity"), names,
                                   held_out, home / "evaluations", max_tokens=args.tokens, temperature=0.7,
                                   seed=args.seed, source="rtp_prompts_dev.jsonl (held out)")  # fmt: skip
        scorer = platform.reward_models.scorer(platform.reward_models.current())
        table = {}
        for name in names:
            entry = record.results["models"][name]
            continuations = entry["continuations"]
            toxic_rows = continuations[:half]
            rewards = scorer.score([c["prompt"] for c in continuations], [c["text"] for c in continuations])
            table[name] = {"mean_toxicity": entry["mean_toxicity"], "share_above_0.5": entry["share_above_threshold"],
                           "mean_toxicity_toxic_prompts": statistics.fmean(c["score"] for c in toxic_rows),
                           "mean_reward": statistics.fmean(rewards)}  # fmt: skip
        report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
        base = table[names[0]]
        print(f"\n{'model':<34} {'toxicity':>9} {'ratio':>6} {'tox(toxic)':>10} {'>0.5':>6} {'reward':>8} {'KL':>7} {'wall s':>7}")
        for method, name in [("base", names[0])] + [(m, f"{MODEL}@{labels[m]}") for m in labels]:
            row = table[name]
            run = report["runs"].get(method, {})
            ratio = row["mean_toxicity"] / base["mean_toxicity"] if base["mean_toxicity"] else float("nan")
            row["toxicity_ratio_vs_base"] = ratio
            row["toxicity_change_pct"] = (ratio - 1) * 100
            row["reward_change_vs_base"] = row["mean_reward"] - base["mean_reward"]
            print(f"{method + ' ' + name.split('@')[1][:24]:<34} {row['mean_toxicity']:>9.4f} {ratio:>6.2f} "
                  f"{row['mean_toxicity_toxic_prompts']:>10.4f} {row['share_above_0.5']:>6.3f} {row['mean_reward']:>8.4f} "
                  f"{run.get('kl', 0.0) or 0.0:>7.3f} {run.get('wall_seconds', 0):>7.0f}")  # fmt: skip
        report["held_out"] = table
        report["evaluation_id"] = record.id
        report["load_average_at_end"] = os.getloadavg()
    finally:
        platform.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "policy.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nscorer: profanity (alt-profanity-check); TRL's detox example: -29% mean toxicity. "
          f"Results: {RESULTS / 'policy.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
