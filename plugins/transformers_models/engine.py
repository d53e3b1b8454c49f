"""The generation engine: one thread per process runs every forward pass of every local model.

Why one thread: each thread that runs torch ops on the CPU gets its own OpenMP thread team, and
once several teams exist they compete for the cores, so decoding slows down in every thread
(measured: about a third slower on 2 cores). Request threads therefore never touch the weights;
they submit a :class:`Sequence` and read its pieces of text from a queue.

Continuous batching: a sequence that arrives while others decode is prefilled on its own (its
``n`` candidates share that prompt pass) and joins its model's running batch before the next
decode step. The batch's KV cache is left-padded to a common length; each row keeps its own
positions and attends only to its own keys (:mod:`.attention`), so one forward pass advances
every sequence by one token. Rows leave the batch as soon as their sequence ends (end of text,
stop string, ``max_tokens``, cancel, or a consumer that stopped reading), and padding no row
needs any more is cut off. A model without row attention has each sequence decoded on its own,
taking turns step by step.

Prompt passes run on weights pre-packed for oneDNN at load (:mod:`.packing`; same bits, less
time), and prompts that begin like a recent one are prefilled from its keys and values
(:mod:`.prefix`): few-shot examples, long system prompts and a conversation's earlier turns are
computed once, not per request.

Sampling stays per sequence: each has its own sampler (and seeded generator). A row's logits do
not depend on its neighbours, to the last bit: row attention gives it the attention kernel it
gets alone, and every decode step uses the same (PyTorch's own) matrix kernels whatever the
number of rows (see ``_native_kernels``). So a greedy request answers the same alone or among
others.

Failures stay with their sequence: an exception while prefilling or sampling one sequence is
raised to its consumer alone; one in a batched forward pass ends the sequences of that batch.
The engine thread itself keeps running.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from espalier.core.infrastructure.contracts import GenerationParams, TokenDelta
from espalier.plugins.transformers_models.packing import packed_prefill
from espalier.plugins.transformers_models.prefix import PrefixCache
from espalier.plugins.transformers_models.text import CandidateText

log = logging.getLogger(__name__)

#: Most rows (sequences times their ``n`` candidates) decoded in one forward pass of one model.
MAX_BATCH_ROWS = 16
#: Memory for the KV of recent prompts, per model's weights (``ESPALIER_PREFIX_CACHE_MB``).
PREFIX_CACHE_BYTES = 128 * 2**20
NUCLEUS_SEARCH = 512

_DONE = object()


class Sequence:
    """One request's candidates on the engine. Created by :meth:`GenerationEngine.submit`;
    iterate :meth:`deltas` in the request's thread."""

    def __init__(
        self,
        loaded: Any,
        forward: ForwardSpec,
        prompt: list[int],
        params: GenerationParams,
        candidates: list[CandidateText],
        eos_token_ids: frozenset[int],
        cancel: Callable[[], bool] | None,
    ):
        self.loaded = loaded
        self.forward = forward
        self.prompt = prompt
        self.params = params
        self.candidates = candidates
        self.eos_token_ids = eos_token_ids
        self.cancel = cancel
        self.n = len(candidates)
        self.generated = 0  # tokens generated per candidate so far (the same for all of them)
        self.sampler: _Sampler | None = None
        self.constraint: Any = None  # a JsonConstraint for schema-constrained rows (tool calls)
        self.abandoned = threading.Event()
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def abandon(self) -> None:
        """The consumer stopped reading: the engine drops the sequence at its next step."""
        self.abandoned.set()

    def deltas(self) -> Iterator[TokenDelta]:
        return _DeltaIterator(self)

    # Engine side -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(candidate.done for candidate in self.candidates)

    def should_stop(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and bool(self.cancel()))

    def take(self, tokens: list[int], logits: torch.Tensor | None = None) -> list[TokenDelta]:
        """Turn one token per candidate into deltas; the last delta of a candidate carries its
        ``finish_reason``. Deltas with no text are only made when they finish a candidate.
        ``logits`` (one row per candidate, before the sampler) score the tokens when the request
        asked for logprobs; each delta carries the scores of the tokens behind it."""
        self.generated += 1
        if logits is not None and self.params.logprobs is not None:
            self._score(tokens, logits)
        deltas = []
        for index, token in enumerate(tokens):
            candidate = self.candidates[index]
            if candidate.done:
                continue
            if token in self.eos_token_ids:
                candidate.completion_tokens += 1
                deltas.append(self._delta(index, candidate.finish("stop")))
                continue
            text = candidate.push(token)
            if self.constraint is not None and self.constraint.advance(index, token) and not candidate.done:
                text += candidate.finish("stop")  # the JSON document is complete
            if candidate.done or text:
                deltas.append(self._delta(index, text))
        if not self.done and self.generated >= self.params.max_tokens:
            deltas.extend(self.finish_all("length"))
        return deltas

    def _delta(self, index: int, text: str) -> TokenDelta:
        candidate = self.candidates[index]
        return TokenDelta(
            index, text, candidate.finish_reason, candidate.completion_tokens, logprobs=candidate.take_logprobs()
        )

    def _score(self, tokens: list[int], logits: torch.Tensor) -> None:
        """Each row's chosen token's log-probability under the model's own distribution (the raw
        logits' log-softmax: no temperature, nucleus or schema mask), and the ``logprobs`` most
        likely alternatives. End-of-sequence tokens are not reported (OpenAI reports none)."""
        logprobs = logits.float().log_softmax(dim=-1)
        chosen = logprobs.gather(-1, torch.tensor(tokens, device=logprobs.device)[:, None]).squeeze(-1).tolist()
        k = int(self.params.logprobs or 0)
        if k:
            values, ids = logprobs.topk(k, dim=-1)
            tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            tops = [[] for _ in tokens]
        for index, token in enumerate(tokens):
            if token not in self.eos_token_ids:
                self.candidates[index].score(token, chosen[index], tops[index])

    def finish_all(self, reason: str) -> list[TokenDelta]:
        deltas = []
        for index, candidate in enumerate(self.candidates):
            if not candidate.done:
                tail = candidate.finish(reason)
                deltas.append(self._delta(index, tail))
        return deltas

    def emit(self, deltas: list[TokenDelta]) -> None:
        if deltas:
            self.out.put(deltas)
        if self.done:
            self.out.put(_DONE)

    def fail(self, error: BaseException) -> None:
        for candidate in self.candidates:
            if not candidate.done:
                candidate.finish_reason = "cancelled"
        self.out.put(error)


class _DeltaIterator:
    """Reads a sequence's deltas in the consumer's thread.

    ``cancel`` is also polled here, before each step's deltas, so a consumer sees the same
    pieces it saw when generation ran in its own thread: the engine may have run ahead, but what
    it made after the cancel is never delivered. Closing the iterator, or dropping it, abandons
    the sequence. ``prompt_tokens`` is the length of the prompt as the model saw it.
    """

    def __init__(self, sequence: Sequence):
        self.sequence = sequence
        self.prompt_tokens = len(sequence.prompt)
        self.pending: deque[TokenDelta] = deque()
        self.tokens = [0] * sequence.n
        self.finished = [False] * sequence.n
        self.closed = False

    def __iter__(self) -> _DeltaIterator:
        return self

    def __next__(self) -> TokenDelta:
        while not self.pending:
            if self.closed:
                raise StopIteration
            cancel = self.sequence.cancel
            if cancel is not None and cancel():
                self.close()
                self.pending.extend(
                    TokenDelta(index, "", "cancelled", self.tokens[index])
                    for index in range(self.sequence.n)
                    if not self.finished[index]
                )
                continue
            item = self.sequence.out.get()
            if item is _DONE:
                self.close()
                continue
            if isinstance(item, BaseException):
                self.close()
                raise item
            self.pending.extend(item)
        delta = self.pending.popleft()
        if delta.tokens is not None:
            self.tokens[delta.index] = delta.tokens
        if delta.finish_reason:
            self.finished[delta.index] = True
        return delta

    def close(self) -> None:
        self.closed = True
        self.sequence.abandon()

    def __del__(self) -> None:
        self.sequence.abandon()


class ForwardSpec:
    """How to call one model: the name of its cache argument, the prefill extras, and whether
    its sequences may share a padded batch (row attention, see :mod:`.attention`)."""

    def __init__(self, cache_arg: str, prefill_args: dict[str, Any], batched: bool = True):
        self.cache_arg = cache_arg
        self.prefill_args = prefill_args
        self.batched = batched


class _Batch:
    """The running batch of one model: a left-padded KV cache with one row per candidate.

    ``starts[row]`` is where that row's real keys begin in the cache (the padding before it is
    never attended to); ``None`` while no row is padded.
    """

    def __init__(self, loaded: Any, forward: ForwardSpec, mergeable: bool):
        self.loaded = loaded
        self.forward = forward
        self.mergeable = mergeable
        self.device = loaded.model.device
        self.members: list[Sequence] = []
        self.cache: Any = None
        self.starts: list[int] | None = None
        self.positions: list[int] = []  # position of each row's next token
        self.tokens: list[int] = []  # each row's last sampled token, the next step's input

    @property
    def rows(self) -> int:
        return len(self.tokens)

    def add(self, sequence: Sequence, cache: Any, tokens: list[int]) -> None:
        length = len(sequence.prompt)
        if self.cache is None:
            self.cache = cache
        else:
            ours, theirs = _cache_length(self.cache), _cache_length(cache)
            total = max(ours, theirs)
            starts = self.starts or [0] * self.rows
            self.starts = [start + total - ours for start in starts] + [total - theirs] * sequence.n
            for mine, other in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, total - ours), _pad_left(other.keys, total - theirs)])
                mine.values = torch.cat([_pad_left(mine.values, total - ours), _pad_left(other.values, total - theirs)])
            if not any(self.starts):
                self.starts = None
        self.members.append(sequence)
        self.positions.extend([length] * sequence.n)
        self.tokens.extend(tokens)

    def keep(self, kept: list[Sequence]) -> None:
        """Keep only the rows of ``kept`` (in batch order) and cut padding no row needs."""
        if len(kept) == len(self.members):
            return
        rows, start = [], 0
        for member in self.members:
            if member in kept:
                rows.extend(range(start, start + member.n))
            start += member.n
        self.members = kept
        self.tokens = [self.tokens[row] for row in rows]
        self.positions = [self.positions[row] for row in rows]
        if not rows:
            self.cache, self.starts = None, None
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        cut = 0
        if self.starts is not None:
            starts = [self.starts[row] for row in rows]
            cut = min(starts)
            self.starts = [start - cut for start in starts] if any(start > cut for start in starts) else None
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]

    def step(self) -> torch.Tensor:
        """One decode step for every row; returns the last position's logits, one row each."""
        inputs = torch.tensor(self.tokens, dtype=torch.long, device=self.device)[:, None]
        extra: dict[str, Any] = {self.forward.cache_arg: self.cache}
        if self.starts is not None:
            extra["position_ids"] = torch.tensor(self.positions, dtype=torch.long, device=self.device)[:, None]
            extra["espalier_row_starts"] = self.starts
        with self.loaded.lock, _native_kernels():
            output = self.loaded.model(input_ids=inputs, use_cache=True, **extra)
        self.positions = [position + 1 for position in self.positions]
        self.cache = getattr(output, self.forward.cache_arg)
        return output.logits[:, -1, :]


@contextmanager
def _native_kernels() -> Iterator[None]:
    """Decode steps run on PyTorch's own CPU kernels, not oneDNN's: oneDNN takes over matrix
    products from two rows up (and attention's inner products), and its rounding differs, so a
    row's logits would depend on how many rows share the step. Prefill, always one sequence,
    keeps oneDNN. The switch is process-wide: torch work in other threads (embeddings) may run on
    PyTorch's kernels meanwhile, which changes nothing but their speed."""
    if not torch._C._get_mkldnn_enabled():
        yield
        return
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(True)


def _pad_left(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0, size, 0)) if size else tensor  # (batch, heads, length, head_dim)


def _cache_length(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[-2])


def _can_merge(cache: Any) -> bool:
    """Only plain full-attention caches can be padded and stacked along the batch."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


class GenerationEngine:
    """Owns the generation thread. Use :func:`get_engine` for the process's engine."""

    def __init__(self, max_batch_rows: int = MAX_BATCH_ROWS, prefix_cache_bytes: int = PREFIX_CACHE_BYTES):
        self.max_batch_rows = max_batch_rows
        #: Memory for reused prompt beginnings, per model's weights; 0 turns reuse off. Read when
        #: a model's first sequence is prefilled.
        self.prefix_cache_bytes = prefix_cache_bytes
        #: Models loaded from now on run prompt passes on pre-packed weights (:mod:`.packing`).
        self.pack_prefill_weights = True
        self._incoming: queue.SimpleQueue[Sequence | _Task] = queue.SimpleQueue()
        self._waiting: deque[Sequence] = deque()
        self._batches: list[_Batch] = []
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.steps = 0  # decode steps run, all batches together
        self.rows_stepped = 0  # rows those steps advanced (rows_stepped / steps: the mean batch)
        self.widest = 0  # most rows in one step
        self._idle = threading.Event()
        self._idle.set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or decoding; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (self._idle.is_set() and self._incoming.empty()):
            if not self._idle.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def submit(
        self,
        loaded: Any,
        forward: ForwardSpec,
        prompt: list[int],
        params: GenerationParams,
        candidates: list[CandidateText],
        eos_token_ids: frozenset[int],
        cancel: Callable[[], bool] | None = None,
        constraint: Any = None,
    ) -> Sequence:
        """Queue a checked request; its first token is computed before the next decode step.
        ``constraint`` (a :class:`~.constrain.JsonConstraint`) masks each row's logits and says
        when a row's document is complete."""
        sequence = Sequence(loaded, forward, prompt, params, candidates, eos_token_ids, cancel)
        sequence.constraint = constraint
        self._ensure_thread()
        self._incoming.put(sequence)
        return sequence

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the engine thread (between steps) and return its result.

        For torch work on a model's weights outside of generation, such as packing them at load:
        torch work in any other thread gives that thread a CPU thread team of its own, and once
        there are more such threads than cores, OpenMP stops spinning between parallel regions
        and every region of every decode step waits for its threads to wake (measured here:
        decoding about a third slower for good)."""
        if threading.current_thread() is self._thread:
            return function(*args)
        task = _Task(function, args)
        self._ensure_thread()
        self._incoming.put(task)
        return task.result.result()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="espalier-generation", daemon=True)
                self._thread.start()

    # The thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        # Inference mode is thread-local; this thread is ours alone, so it stays on.
        with torch.inference_mode():
            while True:
                try:
                    self._admit()
                    for batch in list(self._batches):
                        self._step(batch)
                except BaseException as error:  # never let the thread die: fail what is running, go on
                    log.exception("generation engine failed; ending the sequences it was running")
                    for batch in self._batches:
                        for member in batch.members:
                            member.fail(error)
                    self._batches = []

    def _admit(self) -> None:
        """Take new sequences (waiting for one when idle) and prefill those that fit."""
        block = not self._batches and not self._waiting
        while True:
            if block:
                self._idle.set()
            try:
                sequence = self._incoming.get(block=block)
            except queue.Empty:
                break
            self._idle.clear()
            block = False
            if isinstance(sequence, _Task):
                sequence.run()
                continue
            self._waiting.append(sequence)
        still_waiting: deque[Sequence] = deque()
        while self._waiting:
            sequence = self._waiting.popleft()
            if sequence.abandoned.is_set():
                continue
            batch = self._batch_for(sequence)
            if batch is None:
                still_waiting.append(sequence)
                continue
            self._prefill(sequence, batch)
        self._waiting = still_waiting
        self._batches = [batch for batch in self._batches if batch.members]

    def _batch_for(self, sequence: Sequence) -> _Batch | None:
        """The batch ``sequence`` joins (a new one if its model has none), or None when full."""
        same_model = [batch for batch in self._batches if batch.loaded is sequence.loaded]
        if sum(batch.rows for batch in same_model) + sequence.n > self.max_batch_rows and same_model:
            return None
        for batch in same_model:
            if batch.mergeable:
                return batch
        return _Batch(sequence.loaded, sequence.forward, mergeable=True)

    def prefixes(self, loaded: Any) -> PrefixCache | None:
        """The prefix cache of ``loaded``'s weights (made on first use); None when reuse is off."""
        if self.prefix_cache_bytes <= 0:
            return None
        if getattr(loaded, "prefixes", None) is None:
            loaded.prefixes = PrefixCache(self.prefix_cache_bytes)
        return loaded.prefixes

    def _prefill(self, sequence: Sequence, batch: _Batch) -> None:
        try:
            if _stop(sequence):
                return
            sequence.sampler = _Sampler(sequence.params, sequence.loaded.model.device)
            sequence.sampler.constraint = sequence.constraint
            prefixes = self.prefixes(sequence.loaded)
            scope = sequence.params.cache_scope
            start, known = prefixes.lookup(sequence.prompt, scope) if prefixes is not None else (0, None)
            extra = dict(sequence.forward.prefill_args)
            if known is not None:
                extra[sequence.forward.cache_arg] = prefixes.past(known, start)  # type: ignore[union-attr]
            input_ids = torch.tensor([sequence.prompt[start:]], dtype=torch.long, device=sequence.loaded.model.device)
            with sequence.loaded.lock, packed_prefill():
                output = sequence.loaded.model(input_ids=input_ids, use_cache=True, **extra)
            cache = getattr(output, sequence.forward.cache_arg)
            if prefixes is not None and _can_merge(cache):
                prefixes.store(sequence.prompt, cache, scope)
            logits = output.logits[:, -1, :]
            if sequence.n > 1:
                cache.batch_repeat_interleave(sequence.n)
                logits = logits.expand(sequence.n, -1)
            tokens = sequence.sampler(logits).tolist()
            sequence.emit(sequence.take(tokens, logits))
            if sequence.done:
                return
            if batch.members and not (batch.mergeable and _can_merge(cache) and _can_merge(batch.cache)):
                batch = _Batch(sequence.loaded, sequence.forward, mergeable=False)
            elif not batch.members:
                batch.mergeable = sequence.forward.batched and _can_merge(cache)
            if batch not in self._batches:
                self._batches.append(batch)
            batch.add(sequence, cache, tokens)
        except Exception as error:
            sequence.fail(error)

    def _step(self, batch: _Batch) -> None:
        batch.keep([member for member in batch.members if not _stop(member)])
        if not batch.members:
            self._batches.remove(batch)
            return
        try:
            logits = batch.step()
        except Exception as error:
            log.exception("decode step failed for %d sequences", len(batch.members))
            for member in batch.members:
                member.fail(error)
            batch.keep([])
            self._batches.remove(batch)
            return
        self.steps += 1
        self.rows_stepped += batch.rows
        self.widest = max(self.widest, batch.rows)
        greedy = logits.argmax(dim=-1).tolist()
        kept, start = [], 0
        for member in batch.members:
            rows = slice(start, start + member.n)
            start += member.n
            try:
                sampler = member.sampler
                plain_greedy = sampler.generator is None and sampler.constraint is None
                tokens = greedy[rows] if plain_greedy else sampler(logits[rows]).tolist()
                member.emit(member.take(tokens, logits[rows]))
            except Exception as error:
                member.fail(error)
                continue
            batch.tokens[rows] = tokens
            if not member.done:
                kept.append(member)
        batch.keep(kept)
        if not batch.members:
            self._batches.remove(batch)


class _Task:
    """A function to run on the engine thread (:meth:`GenerationEngine.call`)."""

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]):
        self.function, self.args = function, args
        self.result: Future[Any] = Future()

    def run(self) -> None:
        try:
            self.result.set_result(self.function(*self.args))
        except BaseException as error:  # handed to the caller
            self.result.set_exception(error)


def _stop(sequence: Sequence) -> bool:
    """True when the sequence should leave now (cancelled or abandoned); tells its consumer."""
    try:
        stop = sequence.should_stop()
    except Exception as error:  # a cancel callback that raises ends its own sequence only
        sequence.fail(error)
        return True
    if stop:
        sequence.emit(sequence.finish_all("cancelled"))
    return stop


class _Sampler:
    """Picks the next token of each row: greedy at temperature 0, else temperature and top-p
    sampling from a generator seeded by ``params.seed`` (the same seed gives the same text)."""

    def __init__(self, params: GenerationParams, device: torch.device):
        self.constraint: Any = None  # masks logits to what a JSON Schema allows next
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.generator = None
        if self.temperature > 0:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        if self.generator is None:
            return logits.argmax(dim=-1)
        probs = (logits.float() / self.temperature).softmax(dim=-1)
        if self.top_p >= 1.0:
            return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(-1)
        # The nucleus nearly always lies among the most likely few hundred tokens: look there first
        # and sort the whole vocabulary only when those do not reach top_p.
        top, order = probs.topk(min(NUCLEUS_SEARCH, probs.shape[-1]), dim=-1)
        if bool((top.sum(dim=-1) < self.top_p).any()):
            top, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set of tokens whose probability reaches top_p (always the first).
        top = top.masked_fill(top.cumsum(dim=-1) - top > self.top_p, 0.0)
        picked = torch.multinomial(top, num_samples=1, generator=self.generator)
        return order.gather(-1, picked).squeeze(-1)


# One engine per process ----------------------------------------------------------------------

_engine: GenerationEngine | None = None
_engine_lock = threading.Lock()


def get_engine() -> GenerationEngine:
    """The process's engine (a forked child gets its own, since threads do not survive a fork)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = GenerationEngine()
    return _engine


def _forget_after_fork() -> None:
    global _engine, _engine_lock
    _engine = None
    _engine_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
