"""Agents on real data, one model per run:

* GSM8K (the first ``--limit`` items of ../shared/data/gsm8k_train_sample.jsonl, a fixed subset):
  accuracy of a direct answer vs chain-of-thought (the built-in ``cot-math`` template) vs PAL
  (a program run in the wasm sandbox);
* HotpotQA (the first ``--hotpot-limit`` items of ../shared/data/hotpot_dev_sample.jsonl, whose
  supporting paragraphs, with those of the next items as distractors, form one collection): exact
  match and F1 of the ReAct agent over the RAG tools (search, lookup) vs a plain grounded answer;
* the sandbox's overhead per run against running the same program in-process (the peer; never
  do that with model-written code).

    OMP_NUM_THREADS=1 .venv/bin/python bench/agents.py [--limit 5] [--hotpot-limit 5] [--model smollm2-135m-instruct]
    OMP_NUM_THREADS=1 .venv/bin/python bench/agents.py --model qwen    # Qwen2.5-Coder-0.5B (bench/_qwen.py)

(On a shared, loaded machine one torch thread was about 20x faster than the default here.)
``--model qwen`` downloads and verifies the Qwen GGUF into ~/.cache/espalier-bench once and
registers it in this run's own ESPALIER_HOME; it is never a dependency of Espalier. The default
135M model is far too small for maths and multi-hop questions: expect low numbers; the point is
the comparison on one model. Writes JSON to bench/results/agents-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "gsm8k_train_sample.jsonl"
HOTPOT = REPO.parent / "shared" / "data" / "hotpot_dev_sample.jsonl"
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


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = re.sub(r"\b(a|an|the)\b", " ", text.lower())
    return " ".join("".join(c for c in text if c not in string.punctuation).split())


def f1(prediction: str, truth: str) -> float:
    p, t = normalise(prediction).split(), normalise(truth).split()
    common = sum((Counter(p) & Counter(t)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def short_answer(text: str | None) -> str:
    """The answer part of a grounded reply: first line, citations dropped."""
    return re.sub(r"\[\d+\]", "", text or "").strip().split("\n")[0].strip()


def hotpot_quality(platform, model: str, limit: int) -> dict:
    """ReAct over the RAG tools vs a plain grounded answer, on one collection of HotpotQA paragraphs."""
    from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams
    from espalier.core.infrastructure.identity import Principal
    from espalier.core.sources.rag.service import Upload

    rows = [json.loads(line) for line in HOTPOT.read_text().splitlines()]
    asked, distractors = rows[:limit], rows[limit : 3 * limit]
    principal = Principal(key_id="bench", name="bench", role="operator")
    platform.rag.create_collection("hotpot", principal)
    paragraphs = {p["title"]: p["text"] for row in asked + distractors for p in row["supporting_paragraphs"]}
    uploads = [Upload(text.encode(), f"{title[:60]}.txt", title) for title, text in paragraphs.items()]
    platform.rag.ingest_many("hotpot", principal, uploads)
    out: dict = {"items": len(asked), "paragraphs": len(paragraphs), "react_statuses": {}, "answers": []}
    if not asked:
        return {
            **out,
            **{name: {"exact_match": 0.0, "f1": 0.0, "seconds_per_question": 0.0} for name in ("rag", "react")},
        }
    scores = {"rag": [0.0, 0.0, 0.0], "react": [0.0, 0.0, 0.0]}
    for number, row in enumerate(asked):
        started = time.perf_counter()
        request = ChatRequest(
            model=model,
            messages=[ChatMessage("user", row["question"] + " Answer with a short phrase only.")],
            params=GenerationParams(max_tokens=32, temperature=0.0, seed=0),
            collections=["hotpot"],
        )
        rag = short_answer(platform.chat.complete(request, principal).generations[0].text)
        scores["rag"][2] += time.perf_counter() - started
        started = time.perf_counter()
        run = platform.agent_runs.run(
            "react",
            row["question"],
            principal,
            model=model,
            collection="hotpot",
            tools=["search", "lookup"],
            max_steps=6,
            timeout_s=600,
        )
        scores["react"][2] += time.perf_counter() - started
        react = short_answer(run["answer"])
        out["react_statuses"][run["status"]] = out["react_statuses"].get(run["status"], 0) + 1
        for name, answer in (("rag", rag), ("react", react)):
            scores[name][0] += float(normalise(answer) == normalise(row["answer"]))
            scores[name][1] += f1(answer, row["answer"])
        out["answers"].append(
            {
                "gold": row["answer"],
                "rag": rag,
                "react": react,
                "react_status": run["status"],
                "react_steps": run["steps"],
            }
        )
        print(
            f"  hotpot {number + 1}/{len(asked)}: gold {row['answer']!r} rag={rag[:40]!r} "
            f"react={react[:40]!r} ({run['status']}, {run['steps']} steps)",
            flush=True,
        )
    for name, (em, f1_sum, seconds) in scores.items():
        out[name] = {
            "exact_match": em / len(asked),
            "f1": f1_sum / len(asked),
            "seconds_per_question": seconds / len(asked),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=5, help="GSM8K items")
    parser.add_argument("--hotpot-limit", type=int, default=5, help="HotpotQA questions")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sandbox-runs", type=int, default=30)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".pytest_cache" / "espalier-models")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"missing {DATA}")

    from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform
    from espalier.plugins.sandbox import Sandbox

    home = Path(tempfile.mkdtemp(prefix="espalier-bench-agents-"))
    os.environ["ESPALIER_HOME"] = str(home)
    platform = Platform(
        Settings(home=home, model_cache_dir=args.model_cache, agent_timeout_s=600), load_entry_points=False
    ).start(run_jobs=False)
    if args.model == "qwen":
        sys.path.insert(0, str(Path(__file__).parent))
        import _qwen

        args.model = _qwen.register(platform)
    args.out = args.out or Path(__file__).parent / "results" / f"agents-{args.model}.json"
    platform.models.load(args.model)  # loading (or dequantising) is not part of any timing
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
    print(
        f"sandbox p50 {percentile(sandboxed, 0.5):.1f} ms, in-process p50 {percentile(in_process, 0.5):.3f} ms",
        flush=True,
    )

    def greedy(max_tokens: int) -> GenerationParams:
        return GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=0)

    rows: dict[str, list[bool]] = {"direct": [], "cot": [], "pal": []}
    pal_statuses: list[str] = []
    pal_samples: list[dict] = []
    seconds = {"direct": 0.0, "cot": 0.0, "pal": 0.0}
    for number, item in enumerate(items):
        expected = gold(item["answer"])
        started = time.perf_counter()
        direct = platform.chat.complete(
            ChatRequest(
                model=args.model,
                params=greedy(24),
                messages=[
                    ChatMessage("system", "Answer with the final number only."),
                    ChatMessage("user", item["question"]),
                ],
            ),
            None,
        )
        seconds["direct"] += time.perf_counter() - started
        rows["direct"].append(correct(last_number(direct.generations[0].text), expected))
        started = time.perf_counter()
        cot = platform.chat.complete(
            ChatRequest(
                model=args.model,
                params=greedy(160),
                template="cot-math",
                messages=[ChatMessage("user", item["question"])],
            ),
            None,
        )
        seconds["cot"] += time.perf_counter() - started
        rows["cot"].append(correct(last_number(cot.generations[0].text), expected))
        started = time.perf_counter()
        pal = platform.agent_runs.run("pal", item["question"], None, model=args.model, timeout_s=600)
        seconds["pal"] += time.perf_counter() - started
        rows["pal"].append(correct(last_number(pal["answer"]), expected))
        pal_statuses.append(pal["status"])
        if len(pal_samples) < 3 and pal["trace"]:
            last = pal["trace"][-1]
            pal_samples.append({"program": last["extra"].get("program"), "observation": last["observation"][:300]})
        print(
            f"  item {number + 1}/{len(items)}: gold {expected:g} direct={rows['direct'][-1]} "
            f"cot={rows['cot'][-1]} pal={rows['pal'][-1]} ({pal['status']})",
            flush=True,
        )

    hotpot = hotpot_quality(platform, args.model, args.hotpot_limit)
    platform.close()

    accuracy = {name: sum(values) / len(values) if values else 0.0 for name, values in rows.items()}
    report = {
        "model": args.model,
        "items": len(items),
        "accuracy": accuracy,
        "seconds_per_item": {name: seconds[name] / max(len(items), 1) for name in seconds},
        "sandbox_ms": {"p50": percentile(sandboxed, 0.5), "p95": percentile(sandboxed, 0.95), "runs": len(sandboxed)},
        "in_process_ms": {"p50": percentile(in_process, 0.5), "p95": percentile(in_process, 0.95)},
        "pal_statuses": pal_statuses,
        "pal_samples": pal_samples,
        "hotpot": hotpot,
        "load_average": os.getloadavg(),
    }
    print(f"\nGSM8K, first {len(items)} items, model {args.model} (greedy)")
    print(f"{'method':<10}{'accuracy':>10}{'vs direct':>11}{'s/item':>9}")
    for name in ("direct", "cot", "pal"):
        ratio = accuracy[name] / accuracy["direct"] if accuracy["direct"] else float("nan")
        print(f"{name:<10}{accuracy[name]:>10.2f}{ratio:>11.2f}{report['seconds_per_item'][name]:>9.1f}")
    s50, s95 = report["sandbox_ms"]["p50"], report["sandbox_ms"]["p95"]
    e50 = report["in_process_ms"]["p50"]
    print(
        f"\nsandbox (wasm) per run: p50 {s50:.1f} ms, p95 {s95:.1f} ms over {len(sandboxed)} runs; "
        f"in-process exec p50 {e50:.3f} ms; overhead p50 {s50 - e50:.1f} ms ({s50 / max(e50, 1e-6):.0f}x)"
    )
    print(
        f"\nHotpotQA, first {hotpot['items']} questions, model {args.model}: {'method':<10}{'EM':>6}{'F1':>6}{'s/q':>7}"
    )
    for name in ("rag", "react"):
        row = hotpot[name]
        print(f"  {name:<10}{row['exact_match']:>6.2f}{row['f1']:>6.2f}{row['seconds_per_question']:>7.1f}")
    ratio = hotpot["react"]["f1"] / hotpot["rag"]["f1"] if hotpot["rag"]["f1"] else float("nan")
    print(f"  ReAct/RAG F1 ratio {ratio:.2f}; ReAct statuses {hotpot['react_statuses']}")
    print(f"load average {report['load_average']} (a machine shared with other engineers)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
