"""Console page latency: each server-rendered page against the JSON API that reads the same
data, on one real server, requests interleaved page/API so both see the same machine load.

    .venv/bin/python bench/console.py [--requests 40] [--chat-rows 5000]

``--chat-rows`` stored chat requests (spread over the last 24 h) are written first, so the
overview's hourly figures have real work to do; its peer is ``/api/models``, which the overview
also reads. Prints p50/p95 per pair and the page/API ratio; writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _server import Server
from sqlalchemy import create_engine, text

PAIRS = [  # (console page, API peer)
    ("/console", "/api/models"),
    ("/console/models", "/api/models"),
    ("/console/jobs", "/api/jobs"),
    ("/console/keys", "/api/keys"),
    ("/console/audit", "/api/audit"),
    ("/console/plugins", "/api/plugins"),
]


def sign_in(base: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60, follow_redirects=True)
    token = re.search(r'name="_csrf" value="([^"]+)"', client.get("/console/sign-in").text).group(1)
    response = client.post("/console/sign-in", data={"_csrf": token, "key": key})
    response.raise_for_status()
    return client


def seed_chat_requests(home: Path, rows: int) -> None:
    engine = create_engine(f"sqlite:///{home / 'espalier.db'}")
    now = datetime.now(UTC).replace(tzinfo=None)
    rng = random.Random(0)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO conversations (id, created_at, updated_at) VALUES ('conv_bench', :t, :t)"), {"t": now}
        )
        connection.execute(
            text(
                "INSERT INTO chat_requests (id, conversation_id, kind, model, messages, params, prompt_tokens, "
                "completion_tokens, latency_ms, status, created_at) "
                "VALUES (:id, 'conv_bench', 'chat', 'm', '[]', '{}', :p, :c, :l, 'ok', :t)"
            ),
            [
                {
                    "id": f"req_{i}",
                    "p": rng.randint(5, 500),
                    "c": rng.randint(1, 300),
                    "l": rng.lognormvariate(6, 0.6),
                    "t": now - timedelta(seconds=rng.uniform(0, 86_000)),
                }
                for i in range(rows)
            ],
        )
    engine.dispose()


def timed(client: httpx.Client, path: str, **kwargs) -> float:
    started = time.perf_counter()
    response = client.get(path, **kwargs)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (path, response.status_code)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--chat-rows", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "console.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        server = Server(Path(home))
        try:
            seed_chat_requests(Path(home), args.chat_rows)
            console = sign_in(server.base, server.key)
            api = httpx.Client(base_url=server.base, timeout=60, headers=server.headers)
            rows = []
            for page, peer in PAIRS:
                timed(console, page), timed(api, peer)  # warm up
                page_ms, api_ms = [], []
                for _ in range(args.requests):
                    page_ms.append(timed(console, page))
                    api_ms.append(timed(api, peer))
                rows.append(
                    {
                        "page": page,
                        "peer": peer,
                        "page_p50_ms": statistics.median(page_ms),
                        "api_p50_ms": statistics.median(api_ms),
                        "page_p95_ms": sorted(page_ms)[int(0.95 * len(page_ms)) - 1],
                        "api_p95_ms": sorted(api_ms)[int(0.95 * len(api_ms)) - 1],
                    }
                )
        finally:
            server.stop()
    print(
        f"console pages vs their JSON API peers, {args.requests} requests each, {args.chat_rows} stored chat requests"
    )
    print(f"{'page':<18} {'peer':<13} {'page p50':>9} {'api p50':>8} {'ratio':>6} {'page p95':>9} {'api p95':>8}")
    for row in rows:
        row["ratio_p50"] = row["page_p50_ms"] / row["api_p50_ms"]
        print(
            f"{row['page']:<18} {row['peer']:<13} {row['page_p50_ms']:>8.1f}ms {row['api_p50_ms']:>6.1f}ms "
            f"{row['ratio_p50']:>6.2f} {row['page_p95_ms']:>8.1f}ms {row['api_p95_ms']:>6.1f}ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"requests": args.requests, "chat_rows": args.chat_rows, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
