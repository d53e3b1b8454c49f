"""Chat serving overhead: `/v1/chat/completions` (plain and streaming) against raw
`model.generate` in-process on the same model, same prompts, same greedy decoding.

    .venv/bin/python bench/chat.py [--max-tokens 64] [--repeats 2]

Prints tokens/s and time to first token for each path and the ratios (target: API/raw >= 0.9 at
batch 1), then aggregate tokens/s of 4 concurrent clients against 4 sequential raw calls.
Raw and served runs take turns, never overlap, so they do not share the CPU.

The API paths use one keep-alive ``httpx.Client``, as the ``openai`` SDK does: building a client
costs 18-40 ms here (it loads the CA bundle into an SSL context, even for http URLs), which is the
client's start-up, not the server's time to first token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _server import Server

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about autumn leaves.",
    "Give three tips for learning to cook.",
    "What does a gardener do in spring?",
]


def raw_model(cache_dir: Path):
    from espalier.plugins.transformers_models.loader import gguf_cache_folder, pick_dtype
    from espalier.plugins.transformers_models.sources import resolve_source
    from espalier.plugins.transformers_models.provider import DEFAULT_MODEL

    folder = gguf_cache_folder(resolve_source(DEFAULT_MODEL.source), cache_dir)
    dtype = pick_dtype("auto")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, dtype


def raw_generate(model, tokenizer, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """Tokens, seconds for ``max_tokens``, and time to first token: from the messages in hand to the
    first token, chat template and tokenizer included, as the API's time includes them."""
    with torch.inference_mode():
        started = time.perf_counter()
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        model.generate(**ids, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        elapsed = time.perf_counter() - started
    return out.shape[1] - ids["input_ids"].shape[1], elapsed, ttft


def api_plain(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    response = client.post(server.base + "/v1/chat/completions", headers=server.headers, json={
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"], elapsed


def api_stream(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", server.base + "/v1/chat/completions", headers=server.headers, json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice["delta"].get("content") and first is None:
                    first = time.perf_counter() - started
    return tokens, time.perf_counter() - started, first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE for the server process only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "chat.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    home = Path(tempfile.mkdtemp(prefix="espalier-bench-chat-"))
    cache = home / "models"
    extra = dict(item.split("=", 1) for item in args.server_env)
    server = Server(home, env={"ESPALIER_MODEL_CACHE_DIR": str(cache), **extra})
    client = httpx.Client(timeout=300)  # shared by every API call (thread-safe), like the openai SDK's
    try:
        # warm the server's model (converts the GGUF into the cache the raw model then reads)
        api_plain(client, server, "hello", 4)
        model, tokenizer, dtype = raw_model(cache)
        raw_generate(model, tokenizer, "hello", 4)
        rows = {"raw": [], "api": [], "api_stream": []}
        for _ in range(args.repeats):
            for prompt in PROMPTS:
                rows["raw"].append(raw_generate(model, tokenizer, prompt, args.max_tokens))
                tokens, elapsed = api_plain(client, server, prompt, args.max_tokens)
                rows["api"].append((tokens, elapsed, None))
                rows["api_stream"].append(api_stream(client, server, prompt, args.max_tokens))

        def tps(items):
            return sum(t for t, _, _ in items) / sum(e for _, e, _ in items)

        raw_tps, api_tps, stream_tps = tps(rows["raw"]), tps(rows["api"]), tps(rows["api_stream"])
        raw_ttft = statistics.median(t for _, _, t in rows["raw"])
        stream_ttft = statistics.median(t for _, _, t in rows["api_stream"])

        # concurrency: 4 clients at once against 4 sequential raw calls
        started = time.perf_counter()
        raw_tokens = sum(raw_generate(model, tokenizer, p, args.max_tokens)[0] for p in PROMPTS[:4])
        raw_seq = raw_tokens / (time.perf_counter() - started)
        results: list[int] = []
        threads = [threading.Thread(target=lambda p=p: results.append(api_plain(client, server, p, args.max_tokens)[0])) for p in PROMPTS[:4]]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        api_conc = sum(results) / (time.perf_counter() - started)
    finally:
        client.close()
        server.stop()

    report = {
        "dtype": str(dtype), "threads": torch.get_num_threads(), "max_tokens": args.max_tokens,
        "requests_per_path": len(rows["raw"]),
        "raw_tokens_per_s": round(raw_tps, 2), "api_tokens_per_s": round(api_tps, 2),
        "api_stream_tokens_per_s": round(stream_tps, 2),
        "ratio_api_vs_raw": round(api_tps / raw_tps, 3), "ratio_stream_vs_raw": round(stream_tps / raw_tps, 3),
        "raw_ttft_s": round(raw_ttft, 4), "stream_ttft_s": round(stream_ttft, 4),
        "ratio_ttft_raw_vs_stream": round(raw_ttft / stream_ttft, 3) if stream_ttft else None,
        "raw_sequential_4_tokens_per_s": round(raw_seq, 2), "api_concurrent_4_tokens_per_s": round(api_conc, 2),
        "ratio_concurrent_vs_sequential": round(api_conc / raw_seq, 3),
        "raw_ttft_each_ms": [round(t * 1000, 1) for _, _, t in rows["raw"]],
        "stream_ttft_each_ms": [round(t * 1000, 1) for _, _, t in rows["api_stream"]],
    }  # fmt: skip
    print(f"model {MODEL}, {dtype}, {torch.get_num_threads()} threads, greedy, max_tokens={args.max_tokens}, "
          f"{len(rows['raw'])} requests per path")
    print(f"{'path':<34}{'tokens/s':>10}{'TTFT (s)':>10}{'ratio':>8}")
    print(f"{'raw model.generate':<34}{raw_tps:>10.2f}{raw_ttft:>10.3f}{1:>8.2f}")
    print(f"{'/v1/chat/completions':<34}{api_tps:>10.2f}{'':>10}{api_tps / raw_tps:>8.2f}")
    print(f"{'/v1/chat/completions stream':<34}{stream_tps:>10.2f}{stream_ttft:>10.3f}{stream_tps / raw_tps:>8.2f}")
    print(f"{'TTFT raw / stream':<34}{'':>10}{'':>10}{raw_ttft / stream_ttft if stream_ttft else 0:>8.2f}")
    print(f"{'raw, 4 sequential calls':<34}{raw_seq:>10.2f}{'':>10}{1:>8.2f}")
    print(f"{'API, 4 concurrent clients':<34}{api_conc:>10.2f}{'':>10}{api_conc / raw_seq:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
