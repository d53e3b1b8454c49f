"""Prompt passes with the real shipped model.

Pre-packed weights: a prompt pass on them gives the same bits as on the plain weights, and the
packing ran on the engine thread. Prefix cache: reused keys and values give the same bits as a
full prefill, the engine computes only what it has not seen, a conversation reuses its earlier
turns, memory stays within its bound, and nothing cached is ever written to."""

from __future__ import annotations

import threading

import pytest
import torch

from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams
from espalier.plugins.transformers_models import DEFAULT_MODEL, TransformersProvider
from espalier.plugins.transformers_models.engine import get_engine
from espalier.plugins.transformers_models.packing import (
    PackedLinear,
    pack_linear,
    pack_linear_weights,
    packed_prefill,
    packing_is_exact,
)
from espalier.plugins.transformers_models.prefix import BLOCK, PrefixCache

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(max_tokens=12, temperature=0)
# A few-shot system prompt: the long shared beginning that reuse is for.
FEW_SHOT = (
    "You answer questions about gardening in one sentence. Examples. Q: When should I prune roses? "
    "A: In late winter, just before the buds break. Q: How deep do tulip bulbs go? A: About three "
    "times their own height. Q: Do tomatoes need full sun? A: Yes, at least six hours a day."
)


@pytest.fixture(scope="module")
def model(model_cache_dir):
    return TransformersProvider().load(DEFAULT_MODEL, cache_dir=str(model_cache_dir))


@pytest.fixture
def engine():
    """The process's engine with reuse on and a fresh cache; restored afterwards."""
    engine = get_engine()
    before = engine.prefix_cache_bytes
    engine.prefix_cache_bytes = 128 * 2**20
    yield engine
    engine.prefix_cache_bytes = before


@pytest.fixture
def prefixes(model, engine):
    assert engine.wait_idle(60)
    model.loaded.prefixes = None  # a fresh cache for this test (only the engine thread uses it, and it is idle)
    yield lambda: model.loaded.prefixes
    model.loaded.prefixes = None


def _forward(model, ids: list[int], past=None):
    with torch.inference_mode(), model.loaded.lock:
        output = model.model(input_ids=torch.tensor([ids]), use_cache=True, **{model._forward.cache_arg: past})
    output.past_key_values = getattr(output, model._forward.cache_arg)
    return output


def _prefill_lengths(model):
    """Collects the number of positions each forward pass computes."""
    lengths: list[int] = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    return lengths, handle


def test_prompt_passes_on_packed_weights_give_the_same_bits(model):
    if model.dtype != torch.bfloat16:
        pytest.skip("weights are packed for bfloat16 models; this CPU serves float32")
    # every linear layer is packed, and that happened on the engine thread (its own CPU thread team)
    layers = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(isinstance(m, PackedLinear) for m in layers)
    assert model.serving_stats()["packed_prefill_layers"] == len(layers)
    for messages in (
        [ChatMessage("user", "What is the capital of France?")],
        [ChatMessage("system", FEW_SHOT), ChatMessage("user", "Why do leaves turn red? " * 8)],
    ):
        ids = model.prompt_ids(messages)
        plain = _forward(model, ids)
        with packed_prefill():
            packed = _forward(model, ids)
        assert torch.equal(plain.logits, packed.logits)
        for mine, theirs in zip(packed.past_key_values.layers, plain.past_key_values.layers, strict=True):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


def test_packing_runs_on_the_engine_thread_and_its_errors_reach_the_caller():
    engine = get_engine()
    assert engine.call(lambda: threading.current_thread()) is engine.thread

    def broken():
        raise ValueError("not on this model")

    with pytest.raises(ValueError, match="not on this model"):
        engine.call(broken)
    # a model with nothing to pack is left alone
    assert pack_linear_weights(torch.nn.Sequential(torch.nn.ReLU()), engine.call) == 0


def test_a_packed_layer_whose_weight_changes_uses_the_new_weight():
    layer = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    if not packing_is_exact([layer]):
        # This CPU cannot pack bfloat16 weights (oneDNN needs AVX512-BF16 or AVX-NE-CONVERT): the
        # engine must then leave every layer plain, and prompt passes run F.linear.
        assert pack_linear_weights(torch.nn.Sequential(layer)) == 0 and type(layer) is torch.nn.Linear
        sample = torch.randn(1, 5, 64).to(torch.bfloat16)
        with packed_prefill(), torch.inference_mode():
            assert torch.equal(layer(sample), torch.nn.functional.linear(sample, layer.weight))
        return
    pack_linear(layer)
    sample = torch.randn(1, 5, 64).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: the packed copy is stale now
    with packed_prefill(), torch.inference_mode():
        assert torch.equal(layer(sample), torch.nn.functional.linear(sample, layer.weight))
    assert "espalier_packed" not in layer.state_dict()  # never saved with the weights


def test_reused_beginnings_give_the_same_bits_as_a_full_prefill(model):
    prompts = [
        model.prompt_ids([ChatMessage("system", FEW_SHOT), ChatMessage("user", "How often should I water basil?")]),
        model.prompt_ids([ChatMessage("user", "Summarise the history of the printing press. " * 12)]),
        model.prompt_ids([ChatMessage("user", "tell me " * 90)]),  # lengths that leave every tail size
    ]
    checked = 0
    for ids in prompts:
        full = _forward(model, ids)
        cache = PrefixCache(2**30)
        cache.store(ids, full.past_key_values)
        reused, entry = cache.lookup(ids)
        assert reused == (len(ids) - 1) // BLOCK * BLOCK  # whole blocks, one position left to compute
        for length in range(BLOCK, len(ids), BLOCK):
            past = cache.past(entry, length)
            rest = _forward(model, ids[length:], past)
            assert torch.equal(rest.logits[0, -1], full.logits[0, -1]), (len(ids), length)
            for mine, theirs in zip(rest.past_key_values.layers, full.past_key_values.layers, strict=True):
                assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values), (
                    len(ids),
                    length,
                )
            checked += 1
    assert checked >= 10


def test_the_engine_computes_only_what_it_has_not_seen(model, engine, prefixes):
    questions = ["How often should I water basil?", "What is the best soil for carrots?", "When do I plant garlic?"]
    messages = [[ChatMessage("system", FEW_SHOT), ChatMessage("user", question)] for question in questions]
    engine.prefix_cache_bytes = 0
    alone = [model.generate(chat, GREEDY)[0].text for chat in messages]
    assert prefixes() is None

    engine.prefix_cache_bytes = 128 * 2**20
    first = model.prompt_ids(messages[0])
    reused = 0
    lengths, handle = _prefill_lengths(model)
    try:
        texts = []
        for number, chat in enumerate(messages):
            lengths.clear()
            texts.append(model.generate(chat, GREEDY)[0].text)
            prompt = model.prompt_ids(chat)
            if number == 0:
                assert lengths[0] == len(prompt)  # nothing seen yet: the whole prompt
                continue
            common = next(i for i, (a, b) in enumerate(zip(prompt, first, strict=False)) if a != b)
            assert common >= 2 * BLOCK  # the few-shot system prompt
            assert lengths[0] == len(prompt) - common // BLOCK * BLOCK, (lengths[0], len(prompt), common)
            reused += common // BLOCK * BLOCK
    finally:
        handle.remove()
    assert texts == alone  # the same greedy replies with reuse as without
    stats = model.serving_stats()["prefix_cache"]
    assert stats["hits"] == 2 and stats["reused_tokens"] == reused
    # each prompt's reusable part (whole blocks) is the shared system prompt, which the newest holds
    whole_blocks = {len(model.prompt_ids(chat)) // BLOCK for chat in messages}
    assert stats["entries"] == (1 if whole_blocks == {2} else len(messages))


def test_a_conversation_reuses_its_earlier_turns(model, engine, prefixes):
    first = [ChatMessage("system", FEW_SHOT), ChatMessage("user", "How deep should I plant potatoes?")]
    reply = model.generate(first, GREEDY)[0].text
    second = [*first, ChatMessage("assistant", reply), ChatMessage("user", "And how far apart?")]
    before = prefixes().stats.reused_tokens
    lengths, handle = _prefill_lengths(model)
    try:
        answer = model.generate(second, GREEDY)[0].text
    finally:
        handle.remove()
    reused = prefixes().stats.reused_tokens - before
    assert reused == len(model.prompt_ids(first)) // BLOCK * BLOCK
    assert lengths[0] == len(model.prompt_ids(second)) - reused

    engine.prefix_cache_bytes = 0
    assert model.generate(second, GREEDY)[0].text == answer  # the same reply computed in full


def test_memory_stays_within_its_bound_and_the_least_recent_goes_first(model):
    prompts = [
        model.prompt_ids([ChatMessage("user", f"Question number {number}: " + "why is the sky blue? " * 10)])
        for number in range(4)
    ]
    caches = [_forward(model, ids).past_key_values for ids in prompts]
    size = sum(layer.keys.nbytes + layer.values.nbytes for layer in caches[0].layers)
    cache = PrefixCache(int(size * 2.5))  # room for two
    for ids, kv in zip(prompts, caches, strict=True):
        cache.store(ids, kv)
        assert cache.bytes <= cache.capacity_bytes
    assert len(cache) == 2
    assert cache.lookup(prompts[0])[0] == 0 and cache.lookup(prompts[1])[0] == 0  # evicted
    assert cache.lookup(prompts[3])[0] == (len(prompts[3]) - 1) // BLOCK * BLOCK
    # the one just used is kept when the next comes in; the other goes
    cache.store(prompts[0], caches[0])
    assert cache.lookup(prompts[3])[0] > 0 and cache.lookup(prompts[2])[0] == 0

    tiny = PrefixCache(size // 2)  # a prompt larger than the whole cache is not kept
    tiny.store(prompts[0], caches[0])
    assert len(tiny) == 0 and tiny.bytes == 0


def test_cached_keys_are_never_written_to(model, engine, prefixes):
    chat = [ChatMessage("system", FEW_SHOT), ChatMessage("user", "Which herbs grow in shade?")]
    model.generate(chat, GenerationParams(max_tokens=4, temperature=0))
    (entry,) = prefixes()._entries.values()
    copies = [(keys.clone(), values.clone()) for keys, values in entry.layers]
    # reuse it: one request, then three candidates of another sharing its beginning, decoded together
    model.generate(chat, GenerationParams(max_tokens=8, temperature=0))
    model.generate(
        [chat[0], ChatMessage("user", "Which herbs like sun?")],
        GenerationParams(max_tokens=8, temperature=0.8, n=3, seed=1),
    )
    assert prefixes().stats.hits == 2
    for (keys, values), (old_keys, old_values) in zip(entry.layers, copies, strict=True):
        assert torch.equal(keys, old_keys) and torch.equal(values, old_values)
    # and they are what a fresh prompt pass computes (nothing wrote to them while they were stored)
    fresh = _forward(model, entry.tokens).past_key_values
    for (keys, values), layer in zip(entry.layers, fresh.layers, strict=True):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)


def test_beginnings_stay_with_the_key_that_computed_them(model):
    ids = model.prompt_ids([ChatMessage("system", FEW_SHOT), ChatMessage("user", "Is clay soil good for roses?")])
    cache = PrefixCache(2**30)
    cache.store(ids, _forward(model, ids).past_key_values, "key-a")
    assert cache.lookup(ids, "key-b") == (0, None) and cache.lookup(ids, None) == (0, None)
    assert cache.lookup(ids, "key-a")[0] == (len(ids) - 1) // BLOCK * BLOCK


def test_a_shared_beginning_outlives_the_prompt_that_held_it(model):
    def chat(question: str) -> list[int]:
        return model.prompt_ids(
            [ChatMessage("system", FEW_SHOT), ChatMessage("user", question + " Please explain in detail." * 4)]
        )

    first, second = chat("Why do roses need pruning?"), chat("How should I feed hungry tomatoes?")
    other = model.prompt_ids([ChatMessage("user", "Tell me about the moon and its phases. " * 6)])
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b) // BLOCK * BLOCK
    assert shared >= 2 * BLOCK and len(first) - shared >= BLOCK and len(second) - shared >= BLOCK
    kv = {id(ids): _forward(model, ids).past_key_values for ids in (first, second, other)}
    size = max(sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) for cache in kv.values())
    cache = PrefixCache(int(size * 2.5))  # room for two
    cache.store(first, kv[id(first)])
    cache.store(second, kv[id(second)])  # the shared blocks now point at `second`
    assert len(cache) == 2 and cache.lookup(first)[0] > shared  # `first` is the most recent now
    cache.store(other, kv[id(other)])  # evicts `second`, which the shared blocks pointed at
    assert len(cache) == 2 and cache.lookup(second)[0] == shared  # found through `first`
    assert cache.lookup(chat("When do apples ripen?"))[0] == shared
