"""A real key's latency while forged keys flood the server: the request of a valid key, alone and
during 60 concurrent requests naming its id with made-up secrets, on a real `espalier serve`
(SQLite, no Redis), taking turns; and whether the real key is left with its budget.

    .venv/bin/python bench/auth_flood.py [--rounds 5] [--flood 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent))
from espalier.api.testing import RunningServer  # noqa: E402


def timed_get(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    status = client.get(url, headers=headers).status_code
    return status, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flood", type=int, default=60)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    server = RunningServer(Path(tempfile.mkdtemp()) / "home")
    try:
        key = server.create_key("user", "real")
        key_id = key.split("_")[1]
        real = {"Authorization": f"Bearer {key}"}
        url = server.base + "/api/me"
        quiet, flooded, forged_statuses = [], [], []
        with httpx.Client(timeout=120) as client:
            timed_get(client, url, real)  # verified once, as a key in use would be
            for round_ in range(args.rounds):
                quiet.append(timed_get(client, url, real)[1])

                def forge(n: int, round_: int = round_) -> int:
                    headers = {"Authorization": f"Bearer esp_{key_id}_forged{round_}x{n}"}
                    with httpx.Client(timeout=120) as own:
                        return own.get(url, headers=headers).status_code

                with ThreadPoolExecutor(args.flood) as pool:
                    futures = [pool.submit(forge, n) for n in range(args.flood)]
                    time.sleep(0.2)  # the flood is in flight
                    status, ms = timed_get(client, url, real)
                    assert status == 200, status
                    flooded.append(ms)
                    forged_statuses += [f.result() for f in futures]
        statuses = {s: forged_statuses.count(s) for s in sorted(set(forged_statuses))}
        print(f"real request alone:        p50 {statistics.median(quiet):7.1f} ms (n={len(quiet)})")
        print(f"real request during flood: p50 {statistics.median(flooded):7.1f} ms (n={len(flooded)})")
        print(f"flooded / alone: {statistics.median(flooded) / statistics.median(quiet):.2f}")
        print(f"forged requests answered: {statuses}")
        print("  (401: checked; 429: refused before any check; 503: waited past the bound on concurrent checks)")
        left = sum(httpx.get(url, headers=real).status_code == 200 for _ in range(5))
        print(f"the real key afterwards: {left}/5 requests answered 200")
    finally:
        server.stop()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
