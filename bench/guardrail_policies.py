"""What guardrail policies add to a chat request: per-message check latency and per-piece
streaming overhead, against no policy measured in the same run.

    .venv/bin/python bench/guardrail_policies.py [--messages 200] [--pieces 200]

Real messages from ``toxicity_train.jsonl`` (every 40th row); a temporary SQLite database holds the
events. Rows: no policy, the default policy (profanity, flag; the peer of the ratios), profanity blocking plus
the injection rules on input, and the streamed checks (a block policy scores the text so far at
every piece; a flag-only policy scores it once at the end). Writes
``bench/results/guardrail_policies.json``. The machine is shared: expect noise, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from espalier.core.infrastructure.contracts import TokenDelta
from espalier.core.infrastructure.settings import Settings
from espalier.core.interface.guardrails.policies import CheckContext
from espalier.core.platform import Platform

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data" / "toxicity_train.jsonl"
RESULTS = REPO_ROOT / "bench" / "results"

SETUPS = {
    "none": [],
    "default (profanity flag)": None,
    "profanity block + injection rules": [
        {"direction": "input", "scorer": "profanity", "threshold": 0.9, "action": "block"},
        {"direction": "input", "scorer": "injection", "threshold": 0.5, "action": "flag"},
        {"direction": "output", "scorer": "profanity", "threshold": 0.9, "action": "block"},
    ],
}


def service(home: Path, policies):
    platform = Platform(Settings(home=home, guardrail_policies=policies), load_entry_points=False)
    platform.start(run_jobs=False)
    return platform


def per_message(platform, texts) -> float:
    context = CheckContext("chat")
    guard = platform.guardrail_service
    guard.check(texts[:2], direction="input", context=context, record=False)  # load the scorers
    times = []
    for text in texts:
        started = time.perf_counter()
        guard.check([text], direction="input", context=context)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def streamed(platform, text: str, pieces: int) -> float:
    words = (text.split() * (pieces // max(1, len(text.split())) + 1))[:pieces]
    deltas = [TokenDelta(0, " " + w) for w in words[:-1]] + [TokenDelta(0, " " + words[-1], finish_reason="stop")]
    started = time.perf_counter()
    for _ in platform.guardrail_service.watch_stream(iter(deltas), 1, CheckContext("chat")):
        pass
    return (time.perf_counter() - started) * 1000 / pieces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--pieces", type=int, default=200)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"{DATA} is missing", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[::40] if line.strip()]
    texts = [r["text"] for r in rows][: args.messages]
    clean = next(r["text"] for r in rows if r["label"] == "clean" and len(r["text"]) > 60)
    results = {}
    with tempfile.TemporaryDirectory() as home:
        for index, (name, policies) in enumerate(SETUPS.items()):
            platform = service(Path(home) / str(index), policies)
            try:
                results[name] = {
                    "check_p50_ms": per_message(platform, texts),
                    "stream_ms_per_piece": streamed(platform, clean, args.pieces),
                }
            finally:
                platform.close()
    base = results["default (profanity flag)"]  # the peer: what every request pays out of the box
    print(
        f"guardrail policy overhead: {len(texts)} messages, {args.pieces} streamed pieces, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'setup':36} {'check p50 ms':>13} {'x default':>10} {'stream ms/piece':>16} {'x default':>10}")
    for name, row in results.items():
        print(
            f"{name:36} {row['check_p50_ms']:13.3f} {row['check_p50_ms'] / base['check_p50_ms']:10.2f} "
            f"{row['stream_ms_per_piece']:16.4f} {row['stream_ms_per_piece'] / base['stream_ms_per_piece']:10.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guardrail_policies.json").write_text(
        json.dumps(
            {"messages": len(texts), "pieces": args.pieces, "load": os.getloadavg()[0], "results": results}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
