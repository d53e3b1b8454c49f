"""Chat serving overhead: `/v1/chat/completions` (plain and streaming) against raw
`model.generate` in-process on the same model, same prompts, same greedy decoding.

    .venv/bin/python bench/chat.py [--max-tokens 64] [--repeats 2]

Prints tokens/s and time to first token for each path and the ratios (target: API/raw >= 0.9 at
batch 1), then aggregate tokens/s of 4 concurrent clients against 4 sequential raw calls.
Raw and served runs take turns, never overlap, so they do not share the CPU.

The three paths run the same prompts, so the server's prefix cache (on by default in Espalier)
would hand the streamed request the keys its plain twin just computed: the benchmark serves with
it off (``ESPALIER_PREFIX_CACHE_MB=0``), to measure serving on its own. ``--prefix-cache`` leaves it
on; the report says how many prompt tokens it reused. Each repeat takes prompts not seen before.

Then a second server, with the prefix cache on as it ships, answers three four-turn conversations
(a few-shot system prompt, the replies kept in the history): time to first token per turn against
raw ``generate`` on the same messages (``--no-conversations`` skips it).

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
from typing import Any

import httpx
import torch
from _server import Server
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL = "smollm2-135m-instruct"
# Every request gets a prompt of its own: the server reuses the keys and values of prompts it has
# seen (its prefix cache), and repeating prompts would measure that instead of serving overhead.
PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about autumn leaves.",
    "Give three tips for learning to cook.",
    "What does a gardener do in spring?",
    "Why is the sky blue during the day?",
    "Name three animals that live in the desert.",
    "How does a bicycle stay upright?",
    "Write a short poem about the sea.",
    "What is the boiling point of water?",
    "Describe a rainy afternoon in one sentence.",
    "What are the colours of the rainbow?",
    "Suggest a name for a friendly robot.",
    "How do bees make honey?",
    "Give two reasons to read more books.",
    "What is the largest planet in our solar system?",
    "Explain what a volcano is to a child.",
    "Write a limerick about a cat.",
    "What should I pack for a day hike?",
    "How many legs does a spider have?",
]
# Multi-turn conversations for the prefix cache: a few-shot system prompt, then four questions.
GARDENER = (
    "You are a gardener who answers in one or two sentences. Examples. Q: When should I prune roses? "
    "A: In late winter, just before the buds break. Q: How deep do tulip bulbs go? A: About three times "
    "their own height. Q: Do tomatoes need full sun? A: Yes, at least six hours a day."
)
CONVERSATIONS = [
    ["When should I plant garlic?", "How deep should the cloves go?", "How far apart?", "When do I harvest it?"],
    [
        "Why are my tomato leaves turning yellow?",
        "Could it be too much water?",
        "How often should I water them?",
        "Should I use mulch?",
    ],
    [
        "What grows well in deep shade?",
        "Do ferns need much water?",
        "Can I grow them in pots?",
        "What soil do they like best?",
    ],
]
CONCURRENT_PROMPTS = [
    "Tell me a fun fact about octopuses.",
    "What makes bread rise in the oven?",
    "Write two lines about the moon.",
    "How do plants drink water?",
]


def raw_model(cache_dir: Path):
    from espalier.plugins.common.gguf import gguf_cache_folder
    from espalier.plugins.common.model_sources import resolve_source
    from espalier.plugins.transformers_models.loader import pick_dtype
    from espalier.plugins.transformers_models.provider import DEFAULT_MODEL

    folder = gguf_cache_folder(resolve_source(DEFAULT_MODEL.source), cache_dir)
    dtype = pick_dtype("auto")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, dtype


def _messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def raw_generate(model, tokenizer, prompt: str | list[dict[str, str]], max_tokens: int) -> tuple[int, float, float]:
    """Tokens, seconds for ``max_tokens`` (0: only the first token), and time to first token: from
    the messages in hand to the first token, chat template and tokenizer included, as the API's
    time includes them."""
    with torch.inference_mode():
        started = time.perf_counter()
        text = tokenizer.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        model.generate(**ids, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - started
        if not max_tokens:
            return 1, ttft, ttft
        started = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        elapsed = time.perf_counter() - started
    return out.shape[1] - ids["input_ids"].shape[1], elapsed, ttft


def api_plain(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    response = client.post(
        server.base + "/v1/chat/completions",
        headers=server.headers,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"], elapsed


def api_stream(
    client: httpx.Client,
    server: Server,
    prompt: str | list[dict[str, str]],
    max_tokens: int,
    text: list[str] | None = None,
) -> tuple[int, float, float]:
    """Tokens, seconds and time to the first content; the reply's pieces go to ``text``."""
    body = {
        "model": MODEL,
        "messages": _messages(prompt),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
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
                if text is not None:
                    text.append(choice["delta"].get("content") or "")
    return tokens, time.perf_counter() - started, first or 0.0


def conversations(client: httpx.Client, server: Server, model, tokenizer, max_tokens: int) -> dict[str, list[float]]:
    """Time to first token of each turn of a few conversations, raw against the API, on the same
    messages (the history holds the API's replies). Raw ``generate`` reads the whole conversation
    every turn; the server reuses what it has seen (the system prompt, the earlier turns)."""
    ttft: dict[str, list[float]] = {}
    for questions in CONVERSATIONS:
        messages = [{"role": "system", "content": GARDENER}]
        for turn, question in enumerate(questions, start=1):
            messages.append({"role": "user", "content": question})
            ttft.setdefault(f"raw_turn_{turn}", []).append(raw_generate(model, tokenizer, messages, 0)[2])
            pieces: list[str] = []
            ttft.setdefault(f"api_turn_{turn}", []).append(api_stream(client, server, messages, max_tokens, pieces)[2])
            messages.append({"role": "assistant", "content": "".join(pieces)})
    return ttft


def prefix_stats(client: httpx.Client, server: Server) -> dict[str, Any]:
    info = client.get(server.base + f"/api/models/{MODEL}", headers=server.headers).raise_for_status().json()
    serving = next(version for version in info["versions"] if version["serving"])
    return (serving.get("serving_stats") or {}).get("prefix_cache") or {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE for the server process only")
    parser.add_argument(
        "--prefix-cache", action="store_true", help="serve with the prefix cache on (it reuses repeated prompts)"
    )
    parser.add_argument(
        "--no-conversations",
        dest="conversations",
        action="store_false",
        help="skip the multi-turn section (a second server, with the prefix cache on)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "chat.json")
    args = parser.parse_args()
    if not 1 <= args.repeats <= len(PROMPTS) // 5:
        parser.error(f"--repeats goes from 1 to {len(PROMPTS) // 5} (each repeat takes 5 prompts not seen before)")
    torch.set_num_threads(torch.get_num_threads())
    home = Path(tempfile.mkdtemp(prefix="espalier-bench-chat-"))
    cache = home / "models"
    extra = {
        **({} if args.prefix_cache else {"ESPALIER_PREFIX_CACHE_MB": "0"}),
        **dict(item.split("=", 1) for item in args.server_env),
    }
    server = Server(home, env={"ESPALIER_MODEL_CACHE_DIR": str(cache), **extra})
    client = httpx.Client(timeout=300)  # shared by every API call (thread-safe), like the openai SDK's
    try:
        # warm the server's model (converts the GGUF into the cache the raw model then reads)
        api_plain(client, server, "hello", 4)
        model, tokenizer, dtype = raw_model(cache)
        raw_generate(model, tokenizer, "hello", 4)
        rows = {"raw": [], "api": [], "api_stream": []}
        for turn in range(args.repeats):
            for prompt in PROMPTS[turn * 5 : turn * 5 + 5]:
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
        raw_tokens = sum(raw_generate(model, tokenizer, p, args.max_tokens)[0] for p in CONCURRENT_PROMPTS)
        raw_seq = raw_tokens / (time.perf_counter() - started)
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda p=p: results.append(api_plain(client, server, p, args.max_tokens)[0]))
            for p in CONCURRENT_PROMPTS
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        api_conc = sum(results) / (time.perf_counter() - started)
        prefixes = prefix_stats(client, server)
    finally:
        server.stop()
    turns: dict[str, list[float]] = {}
    if args.conversations:
        # the product as it ships: the prefix cache on, whatever --prefix-cache said above
        talker = Server(home / "conversations", env={"ESPALIER_MODEL_CACHE_DIR": str(cache)})
        try:
            api_plain(client, talker, "hello", 4)
            turns = conversations(client, talker, model, tokenizer, 24)
            turn_prefixes = prefix_stats(client, talker)
        finally:
            talker.stop()
    client.close()

    report = {
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "max_tokens": args.max_tokens,
        "requests_per_path": len(rows["raw"]),
        "raw_tokens_per_s": round(raw_tps, 2),
        "api_tokens_per_s": round(api_tps, 2),
        "api_stream_tokens_per_s": round(stream_tps, 2),
        "ratio_api_vs_raw": round(api_tps / raw_tps, 3),
        "ratio_stream_vs_raw": round(stream_tps / raw_tps, 3),
        "raw_ttft_s": round(raw_ttft, 4),
        "stream_ttft_s": round(stream_ttft, 4),
        "ratio_ttft_raw_vs_stream": round(raw_ttft / stream_ttft, 3) if stream_ttft else None,
        "raw_sequential_4_tokens_per_s": round(raw_seq, 2),
        "api_concurrent_4_tokens_per_s": round(api_conc, 2),
        "ratio_concurrent_vs_sequential": round(api_conc / raw_seq, 3),
        "server_prefix_cache": prefixes,
        "raw_ttft_each_ms": [round(t * 1000, 1) for _, _, t in rows["raw"]],
        "stream_ttft_each_ms": [round(t * 1000, 1) for _, _, t in rows["api_stream"]],
    }
    print(
        f"model {MODEL}, {dtype}, {torch.get_num_threads()} threads, greedy, max_tokens={args.max_tokens}, "
        f"{len(rows['raw'])} requests per path"
    )
    print(f"{'path':<34}{'tokens/s':>10}{'TTFT (s)':>10}{'ratio':>8}")
    print(f"{'raw model.generate':<34}{raw_tps:>10.2f}{raw_ttft:>10.3f}{1:>8.2f}")
    print(f"{'/v1/chat/completions':<34}{api_tps:>10.2f}{'':>10}{api_tps / raw_tps:>8.2f}")
    print(f"{'/v1/chat/completions stream':<34}{stream_tps:>10.2f}{stream_ttft:>10.3f}{stream_tps / raw_tps:>8.2f}")
    print(f"{'TTFT raw / stream':<34}{'':>10}{'':>10}{raw_ttft / stream_ttft if stream_ttft else 0:>8.2f}")
    print(f"{'raw, 4 sequential calls':<34}{raw_seq:>10.2f}{'':>10}{1:>8.2f}")
    print(f"{'API, 4 concurrent clients':<34}{api_conc:>10.2f}{'':>10}{api_conc / raw_seq:>8.2f}")
    if prefixes:
        print(
            f"server prefix cache: {prefixes['reused_tokens']} of {prefixes['prompt_tokens']} prompt tokens reused "
            f"({prefixes['hits']} of {prefixes['prompts']} prompts)"
        )
    if turns:
        print(
            f"\nconversations ({len(CONVERSATIONS)}, {len(CONVERSATIONS[0])} turns, few-shot system prompt), "
            "median time to first token; the server with its prefix cache on:"
        )
        print(f"{'turn':<8}{'raw (s)':>10}{'stream (s)':>12}{'raw/stream':>12}")
        for turn in range(1, len(CONVERSATIONS[0]) + 1):
            raw_t, api_t = statistics.median(turns[f"raw_turn_{turn}"]), statistics.median(turns[f"api_turn_{turn}"])
            print(f"{turn:<8}{raw_t:>10.3f}{api_t:>12.3f}{raw_t / api_t:>12.2f}")
        print(
            f"server prefix cache: {turn_prefixes['reused_tokens']} of {turn_prefixes['prompt_tokens']} prompt tokens "
            f"reused ({turn_prefixes['hits']} of {turn_prefixes['prompts']} prompts)"
        )
        report["conversations_ttft_s"] = {key: [round(t, 4) for t in values] for key, values in turns.items()}
        report["conversations_prefix_cache"] = turn_prefixes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
