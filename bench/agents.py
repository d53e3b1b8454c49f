"""Agents on real data: GSM8K accuracy of a direct answer vs chain-of-thought (the built-in
``cot-math`` template) vs PAL (program in the wasm sandbox), and the sandbox's overhead per run
against running the same program in-process (the peer; never do that with model-written code).

    OMP_NUM_THREADS=1 .venv/bin/python bench/agents.py [--limit 10] [--model smollm2-135m-instruct] [--sandbox-runs 30]

(On a shared, loaded machine one torch thread was about 20x faster than the default here.)

Items are the first ``--limit`` of ../shared/data/gsm8k_train_sample.jsonl (a fixed subset). The
default 135M model is far too small for maths: expect low numbers; the point is the comparison
on one model, and a larger registered model (``--model``) can be measured the same way.
Writes JSON to bench/results/agents.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "gsm8k_train_sample.jsonl"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gold(answer: str) -> float:
    return float(answer.split("####")[-1].strip().replace(",", ""))


def last_number(text: str | None) -> float | None:
    if not text:
        return None
    stated = re.search(r"answer is\s*\$?(-?\d[\d,]*(?:\.\d+)?)", text, re.I)
    found = stated.group(1) if stated else (_NUMBER.findall(text) or [None])[-1]
    try:
        return float(found.replace(",", "")) if found else None
    except ValueError:
        return None


def correct(predicted: float | None, expected: float) -> bool:
    return predicted is not None and abs(predicted - expected) < 1e-6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sandbox-runs", type=int, default=30)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".pytest_cache" / "espalier-models")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agents.json")
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"missing {DATA}")

    from espalier.core.chat import ChatRequest
    from espalier.core.contracts import ChatMessage, GenerationParams
    from espalier.core.platform import Platform
    from espalier.core.settings import Settings
    from espalier.plugins.sandbox import Sandbox

    home = Path(tempfile.mkdtemp(prefix="espalier-bench-agents-"))
    os.environ["ESPALIER_HOME"] = str(home)
    platform = Platform(Settings(home=home, model_cache_dir=args.model_cache, agent_timeout_s=600),
                        load_entry_points=False).start(run_jobs=False)  # fmt: skip
    items = [json.loads(line) for line in DATA.read_text().splitlines()][: args.limit]

    # Sandbox overhead: one small program, wasm sandbox vs in-process exec (the unsafe peer).
    program = "total = sum(i * i for i in range(1000))\nanswer = total"
    box = Sandbox()
    box.run("answer = 0")  # compile / load the module once, outside the timings
    sandboxed, in_process = [], []
    for _ in range(args.sandbox_runs):
        started = time.perf_counter()
        result = box.run(program)
        sandboxed.append((time.perf_counter() - started) * 1000)
        assert result.ok and result.value == 332833500, result
        started = time.perf_counter()
        scope: dict = {}
        exec(compile(program, "<peer>", "exec"), scope)  # noqa: S102 - the peer being measured, trusted code
        in_process.append((time.perf_counter() - started) * 1000)
    print(f"sandbox p50 {percentile(sandboxed, 0.5):.1f} ms, in-process p50 {percentile(in_process, 0.5):.3f} ms", flush=True)


    def greedy(max_tokens: int) -> GenerationParams:
        return GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=0)

    rows = {"direct": [], "cot": [], "pal": []}
    seconds = {"direct": 0.0, "cot": 0.0, "pal": 0.0}
    for number, item in enumerate(items):
        expected = gold(item["answer"])
        started = time.perf_counter()
        direct = platform.chat.complete(ChatRequest(model=args.model, params=greedy(24), messages=[
            ChatMessage("system", "Answer with the final number only."), ChatMessage("user", item["question"])]), None)  # fmt: skip
        seconds["direct"] += time.perf_counter() - started
        rows["direct"].append(correct(last_number(direct.generations[0].text), expected))
        started = time.perf_counter()
        cot = platform.chat.complete(ChatRequest(model=args.model, params=greedy(160), template="cot-math",
                                                 messages=[ChatMessage("user", item["question"])]), None)  # fmt: skip
        seconds["cot"] += time.perf_counter() - started
        rows["cot"].append(correct(last_number(cot.generations[0].text), expected))
        started = time.perf_counter()
        pal = platform.agent_runs.run("pal", item["question"], None, model=args.model, timeout_s=600)
        seconds["pal"] += time.perf_counter() - started
        rows["pal"].append(correct(last_number(pal["answer"]), expected))
        print(f"  item {number + 1}/{len(items)}: gold {expected:g} direct={rows['direct'][-1]} "
              f"cot={rows['cot'][-1]} pal={rows['pal'][-1]} ({pal['status']})", flush=True)  # fmt: skip

    platform.close()

    accuracy = {name: sum(values) / len(values) for name, values in rows.items()}
    report = {
        "model": args.model, "items": len(items), "accuracy": accuracy,
        "seconds_per_item": {name: seconds[name] / len(items) for name in seconds},
        "sandbox_ms": {"p50": percentile(sandboxed, 0.5), "p95": percentile(sandboxed, 0.95), "runs": len(sandboxed)},
        "in_process_ms": {"p50": percentile(in_process, 0.5), "p95": percentile(in_process, 0.95)},
        "load_average": os.getloadavg(),
    }  # fmt: skip
    print(f"\nGSM8K, first {len(items)} items, model {args.model} (greedy)")
    print(f"{'method':<10}{'accuracy':>10}{'vs direct':>11}{'s/item':>9}")
    for name in ("direct", "cot", "pal"):
        ratio = accuracy[name] / accuracy["direct"] if accuracy["direct"] else float("nan")
        print(f"{name:<10}{accuracy[name]:>10.2f}{ratio:>11.2f}{report['seconds_per_item'][name]:>9.1f}")
    s50, s95 = report["sandbox_ms"]["p50"], report["sandbox_ms"]["p95"]
    e50 = report["in_process_ms"]["p50"]
    print(f"\nsandbox (wasm) per run: p50 {s50:.1f} ms, p95 {s95:.1f} ms over {len(sandboxed)} runs; "
          f"in-process exec p50 {e50:.3f} ms; overhead p50 {s50 - e50:.1f} ms ({s50 / max(e50, 1e-6):.0f}x)")  # fmt: skip
    print(f"load average {report['load_average']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
