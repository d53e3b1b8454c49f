"""Structured outputs with the shipped model: how many replies are schema-valid JSON, and what the
constraint costs against the same requests unconstrained.

    .venv/bin/python bench/structured.py [--requests 50] [--max-tokens 120]

A real ``espalier serve`` on loopback with the shipped SmolLM2-135M. The requests: questions of the
shared HotpotQA sample, each with one of five JSON Schemas in turn (an answer with a confidence, a
list of entities, a nested record, an enum, a verdict with a reason); then ``--json-object``
requests with ``{"type": "json_object"}`` (any object), reported apart. Each request runs twice, alternating which
side goes first: with ``response_format`` (decoded under the schema) and without it (the peer: the
same messages, the schema stated in the same system message the server adds, free decoding), both
at temperature 0 with the same ``max_tokens``. Printed: the share of replies that parse and validate
against the schema on each side, each side's median and total seconds, and the time ratio
constrained / unconstrained. The machine is shared (2 cores): the load average is printed.
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

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server  # noqa: E402

from espalier.core.infrastructure.contracts import ChatMessage  # noqa: E402
from espalier.core.tools.structured import parse_response_format, with_instructions  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "smollm2-135m-instruct"

SCHEMAS = [
    (
        "answer",
        {
            "type": "object",
            "properties": {
                "answer": {"type": "string", "maxLength": 80},
                "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["answer", "confidence"],
        },
    ),
    (
        "entities",
        {
            "type": "object",
            "properties": {
                "entities": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 40},
                    "minItems": 1,
                    "maxItems": 4,
                }
            },
            "required": ["entities"],
        },
    ),
    (
        "record",
        {
            "type": "object",
            "properties": {
                "question_type": {"type": "string", "maxLength": 30},
                "subject": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 40}, "year": {"type": "integer"}},
                    "required": ["name"],
                },
            },
            "required": ["question_type", "subject"],
        },
    ),
    (
        "kind",
        {
            "type": "object",
            "properties": {"kind": {"enum": ["person", "place", "date", "number", "other"]}},
            "required": ["kind"],
        },
    ),
    (
        "verdict",
        {
            "type": "object",
            "properties": {
                "answerable": {"type": "boolean"},
                "reason": {"type": "string", "maxLength": 100},
            },
            "required": ["answerable", "reason"],
        },
    ),
]
JSON_OBJECT = ("object", None)  # {"type": "json_object"}: any object, measured on its own (--json-object)


def response_format(name: str, schema: dict | None) -> dict:
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def valid(text: str, schema: dict | None) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    try:
        jsonschema.validate(value, schema or {"type": "object"})
    except jsonschema.ValidationError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument(
        "--json-object", type=int, default=10, help="then this many json_object requests, reported apart"
    )
    parser.add_argument(
        "--model-cache", default=str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "espalier-models")
    )
    args = parser.parse_args()
    questions = [json.loads(line)["question"] for line in (SHARED / "hotpot_dev_sample.jsonl").read_text().splitlines()]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as home:
        server = Server(Path(home), env={"ESPALIER_MODEL_CACHE_DIR": args.model_cache})
        try:
            client = httpx.Client(base_url=server.base, headers=server.headers, timeout=600)
            warm = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            client.post("/v1/chat/completions", json=warm).raise_for_status()
            sides: dict[str, dict[str, list]] = {
                s: {"valid": [], "seconds": [], "tokens": []} for s in ("constrained", "free")
            }
            by_schema: dict[str, list[bool]] = {}
            for number in range(args.requests + args.json_object):
                name, schema = SCHEMAS[number % len(SCHEMAS)] if number < args.requests else JSON_OBJECT
                question = questions[number % len(questions)]
                fmt = parse_response_format(response_format(name, schema))
                prompted = with_instructions([ChatMessage("user", question)], fmt)
                bodies = {
                    "constrained": {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": question}],
                        "response_format": response_format(name, schema),
                    },
                    "free": {"model": MODEL, "messages": [{"role": m.role, "content": m.content} for m in prompted]},
                }
                order = ("constrained", "free") if number % 2 == 0 else ("free", "constrained")
                if number >= args.requests:
                    order = ("constrained",)  # json_object: the validity of the constrained side only
                for side in order:
                    body = {**bodies[side], "temperature": 0, "max_tokens": args.max_tokens}
                    started = time.perf_counter()
                    response = client.post("/v1/chat/completions", json=body)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    reply = response.json()
                    ok = valid(reply["choices"][0]["message"]["content"] or "", schema)
                    sides[side]["valid"].append(ok)
                    sides[side]["seconds"].append(elapsed)
                    sides[side]["tokens"].append(reply["usage"]["completion_tokens"])
                    if side == "constrained":
                        by_schema.setdefault(name, []).append(ok)
                last = {side: sides[side]["valid"][-1] if side in order else "-" for side in sides}
                print(
                    f"  {number + 1:3d}/{args.requests} {name:<9} constrained valid {last['constrained']!s:<5} "
                    f"free valid {last['free']!s:<5}",
                    flush=True,
                )
        finally:
            server.stop()
    objects = by_schema.pop("object", [])
    n = args.requests
    for row in sides.values():  # the json_schema requests alone, both sides
        for key in row:
            row[key] = row[key][:n]
    print(f"\n{n} json_schema requests, temperature 0, max_tokens {args.max_tokens}, {MODEL}")
    print(f"{'side':<12} {'schema-valid':>13} {'median s':>9} {'total s':>8} {'tokens/reply':>13}")
    for side, row in sides.items():
        share = sum(row["valid"]) / len(row["valid"])
        print(
            f"{side:<12} {share:>12.0%} {statistics.median(row['seconds']):>9.2f} {sum(row['seconds']):>8.1f} "
            f"{statistics.fmean(row['tokens']):>13.1f}"
        )
    per_token = {s: sum(r["seconds"]) / max(1, sum(r["tokens"])) for s, r in sides.items()}
    print(
        f"time ratio constrained / free: {sum(sides['constrained']['seconds']) / sum(sides['free']['seconds']):.2f} "
        f"per request, {per_token['constrained'] / per_token['free']:.2f} per generated token"
    )
    print("constrained validity by schema: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_schema.items()))
    if objects:
        print(f"json_object (any object, no schema to close it): {sum(objects)}/{len(objects)} valid")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
