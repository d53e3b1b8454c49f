"""Reusing the keys and values of prompts that begin the same way.

Chat prompts share long beginnings: the chat template's system prompt, a few-shot template's
worked examples, and in a conversation every earlier turn. The engine keeps the KV cache of recent
prompts and prefills a new prompt from the longest beginning it has seen, computing only the
rest. Causal attention makes a position's keys and values depend on the tokens up to it alone, so
the reused part is what a full prefill would compute.

To the last bit, too: a greedy reply must not depend on what happens to be cached. The CPU matrix
kernels work through a prompt's positions in blocks of rows, and a position's result depends on
where it falls in its block (a tail of a few rows takes another kernel, with other rounding).
Beginnings are therefore reused in whole blocks of :data:`BLOCK` (32) positions, so that every
computed position lies where it lies in a full prefill and gets the same kernel; reuse at other
lengths changed the last bits of some logits here (``tests/plugins/test_prompt_passes.py`` checks
logits and keys bit for bit). At least one prompt position is always computed (its logits give
the first token). Memory is bounded by ``capacity_bytes``; the least recently used prompts go
first. Only the engine thread changes an instance (other threads read its counters).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

#: Beginnings are reused in whole blocks of this many positions (a multiple of the CPU kernels'
#: row block, 32 or a divisor of it on x86 with AVX-512 or AVX2).
BLOCK = 32


@dataclass(eq=False)
class _Entry:
    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (1, heads, len(tokens), dim)
    nbytes: int
    keys: list[int] = field(default_factory=list)  # its block keys, shortest beginning first


@dataclass
class PrefixStats:
    prompts: int = 0  # prefills looked up
    hits: int = 0  # prefills that reused a beginning
    prompt_tokens: int = 0  # tokens of the prompts looked up
    reused_tokens: int = 0  # of those, taken from the cache instead of computed

    def as_dict(self) -> dict[str, Any]:
        share = self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {
            "prompts": self.prompts,
            "hits": self.hits,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "reused_share": round(share, 4),
        }


class PrefixCache:
    """The KV caches of recent prompts of one model's weights, found by their beginnings.

    Prompts are kept per ``scope`` (the calling key): a beginning is only reused by the scope
    that computed it, so the time to a first token says nothing about other keys' prompts.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.stats = PrefixStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id(entry) -> entry, least recent first
        self._index: dict[
            int, _Entry
        ] = {}  # key of (scope, prompt[:b]), b a multiple of BLOCK -> the newest entry with it

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _block_keys(scope: str | None, tokens: list[int], limit: int) -> list[int]:
        """Chained keys of ``tokens[:BLOCK]``, ``tokens[:2 * BLOCK]``... up to ``limit`` tokens."""
        keys, key = [], hash(("espalier-prefix", scope))
        for end in range(BLOCK, limit + 1, BLOCK):
            key = hash((key, *tokens[end - BLOCK : end]))
            keys.append(key)
        return keys

    def lookup(self, prompt: list[int], scope: str | None = None) -> tuple[int, _Entry | None]:
        """The longest cached beginning of ``prompt`` in ``scope`` (in whole blocks, at most
        ``len(prompt) - 1`` tokens): its length and the entry holding it, or ``(0, None)``."""
        self.stats.prompts += 1
        self.stats.prompt_tokens += len(prompt)
        keys = self._block_keys(scope, prompt, len(prompt) - 1)
        found, length = None, 0
        for number, key in enumerate(keys, start=1):
            entry = self._index.get(key)
            if entry is None:
                break
            found, length = entry, number * BLOCK
        # a hash collision must never hand out someone else's keys
        while found is not None and found.tokens[:length] != prompt[:length]:
            length -= BLOCK
            found = self._index.get(keys[length // BLOCK - 1]) if length else None
        if found is None:
            return 0, None
        self._entries.move_to_end(id(found))
        self.stats.hits += 1
        self.stats.reused_tokens += length
        return length, found

    def past(self, entry: _Entry, length: int) -> Any:
        """A fresh cache holding ``entry``'s first ``length`` positions (copies: the cached
        tensors are never written to)."""
        from transformers.cache_utils import DynamicCache  # entries come from plain dynamic caches only

        past = DynamicCache()
        for layer, (keys, values) in enumerate(entry.layers):
            past.update(keys[:, :, :length], values[:, :, :length], layer)
        return past

    def store(self, prompt: list[int], cache: Any, scope: str | None = None) -> None:
        """Keep the KV of ``prompt`` (``cache`` right after its prefill, one row) for ``scope``."""
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        nbytes = sum(keys.nbytes + values.nbytes for keys, values in layers)
        if len(prompt) < BLOCK or nbytes > self.capacity_bytes:
            return
        keys = self._block_keys(scope, prompt, len(prompt))
        known = self._index.get(keys[-1])
        if known is not None and len(known.tokens) == len(prompt) and known.tokens == prompt:
            self._entries.move_to_end(id(known))
            return
        # A kept prompt whose every block this one has (a conversation's previous turn) would be
        # reachable no more: its memory goes now, not when it would have aged out.
        mine = set(keys)
        for old in {id(old): old for key in keys if (old := self._index.get(key)) is not None}.values():
            if mine.issuperset(old.keys):
                self._drop(old)
        while self._entries and self.bytes + nbytes > self.capacity_bytes:
            self._drop(next(iter(self._entries.values())))
        entry = _Entry(list(prompt), layers, nbytes, keys)
        self._entries[id(entry)] = entry
        self.bytes += nbytes
        for key in keys:
            self._index[key] = entry

    def _drop(self, entry: _Entry) -> None:
        del self._entries[id(entry)]
        self.bytes -= entry.nbytes
        for key in entry.keys:
            if self._index.get(key) is entry:
                # another kept prompt may begin the same way (a shared system prompt): it takes over
                heir = next((other for other in reversed(self._entries.values()) if key in other.keys), None)
                if heir is None:
                    del self._index[key]
                else:
                    self._index[key] = heir
