"""Token-aware chunking, structure first (headings and paragraphs, then sentences, then words),
with overlap, and the arithmetic that makes the augmented prompt fit the model's context window.

Sizes are counted with the chat model's own tokenizer when it has one, so "fits" is computed, not
guessed; models without a local tokenizer (remote ones) get a conservative word estimate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput

TokenCounter = Callable[[str], int]

#: What a model's answer may take unless a collection says otherwise.
ANSWER_TOKENS = 256
#: The grounded system prompt plus the question (questions longer than this are cut by the budget check).
PROMPT_OVERHEAD = 200
#: "[n] source:\n> ...\n" around each passage.
PER_SOURCE_OVERHEAD = 16
#: MiniLM reads at most 256 word pieces; a longer chunk would be embedded by its start only.
EMBEDDER_LIMIT = 256
DEFAULT_K = 5


def word_estimate(text: str) -> int:
    """A tokenizer-free upper-ish estimate: ~1.4 tokens per word, at least one per 4 characters."""
    return max(int(len(text.split()) * 1.4), len(text) // 4)


_counters: dict[int, TokenCounter] = {}


def token_counter(tokenizer: object | None) -> TokenCounter:
    """One counter per tokenizer, so the chunker built on it (and its memo) is reused."""
    if tokenizer is None:
        return word_estimate
    counter = _counters.get(id(tokenizer))
    if counter is None:
        encode = tokenizer.encode
        counter = _counters[id(tokenizer)] = lambda text: len(encode(text, add_special_tokens=False))
    return counter


@dataclass(frozen=True)
class Budget:
    """How big chunks are and how many are retrieved, so the prompt fits with room for the answer."""

    context_window: int
    answer_tokens: int
    chunk_tokens: int
    k: int
    overlap_tokens: int

    @property
    def passage_tokens(self) -> int:
        return self.context_window - self.answer_tokens - PROMPT_OVERHEAD


def plan_budget(
    context_window: int,
    *,
    answer_tokens: int = ANSWER_TOKENS,
    chunk_tokens: int | None = None,
    k: int | None = None,
    overlap: float = 0.15,
) -> Budget:
    room = context_window - answer_tokens - PROMPT_OVERHEAD
    if room < 32 + PER_SOURCE_OVERHEAD:
        raise InvalidInput(
            f"a context window of {context_window} tokens leaves no room for sources "
            f"after {answer_tokens} answer tokens; "
            "lower answer_tokens or use a model with a larger window",
            code="context_too_small",
        )
    if chunk_tokens is None:
        per_chunk = room // (k or DEFAULT_K) - PER_SOURCE_OVERHEAD
        chunk_tokens = max(16, min(EMBEDDER_LIMIT, per_chunk))
    if k is None:
        k = max(1, min(DEFAULT_K, room // (chunk_tokens + PER_SOURCE_OVERHEAD)))
    if k * (chunk_tokens + PER_SOURCE_OVERHEAD) > room:
        raise InvalidInput(
            f"{k} chunks of {chunk_tokens} tokens do not fit a {context_window}-token window with {answer_tokens} "
            f"answer tokens (at most {room} tokens of sources); lower chunk_tokens or k",
            code="budget_exceeded",
        )
    return Budget(context_window, answer_tokens, chunk_tokens, k, int(chunk_tokens * overlap))


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    end: int


@lru_cache(maxsize=32)
def _chunker(count: TokenCounter, chunk_tokens: int) -> Any:
    import semchunk

    return semchunk.chunkerify(count, chunk_tokens)  # memoises token counts: keep one per counter


_HEADING = re.compile(r"(?m)^(?=#{1,6}\s)")


def split_text(text: str, chunk_tokens: int, overlap_tokens: int, count: TokenCounter) -> list[Chunk]:
    """Chunks of at most ``chunk_tokens`` with offsets into ``text``. Markdown sections are split
    apart first (a chunk never straddles a heading); semchunk then splits each section at the
    largest structural boundary that fits: blank lines, lines, sentences, words."""
    chunker = _chunker(count, chunk_tokens)
    overlap = overlap_tokens / chunk_tokens if overlap_tokens else None
    chunks: list[Chunk] = []
    bounds = [m.start() for m in _HEADING.finditer(text)]
    starts = sorted({0, *bounds})
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        section = text[start:end]
        if not section.strip():
            continue
        pieces, offsets = chunker(section, offsets=True, overlap=overlap)
        for piece, (a, b) in zip(pieces, offsets, strict=True):
            if piece.strip():
                chunks.append(Chunk(piece, start + a, start + b))
    return chunks
