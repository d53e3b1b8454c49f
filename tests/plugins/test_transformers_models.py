"""The ``transformers`` provider with the real shipped SmolLM2-135M-Instruct GGUF: loading and its
safetensors cache, chat templating, sampling, stop strings, streaming, cancellation, limits."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from espalier.core.infrastructure.contracts import ChatMessage, ChatModel, GenerationParams, ModelProvider
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.plugins import transformers_models
from espalier.plugins.common.gguf import gguf_cache_folder
from espalier.plugins.transformers_models import DEFAULT_MODEL, TransformersProvider, resolve_source, unload_all
from espalier.plugins.transformers_models.loader import load_weights, pick_dtype
from espalier.plugins.transformers_models.text import IncrementalDecoder, StopMatcher

pytestmark = pytest.mark.slow

FRANCE = [ChatMessage("user", "What is the capital of France?")]
STORY = [ChatMessage("user", "Tell me a short story about a dragon who learns to cook.")]
GREEDY = GenerationParams(max_tokens=16, temperature=0)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def cold_load(model_cache):
    """The first load in this session: converts the GGUF file into the (empty) cache."""
    unload_all()
    started = time.perf_counter()
    model = TransformersProvider().load(DEFAULT_MODEL, cache_dir=str(model_cache))
    return model, time.perf_counter() - started


@pytest.fixture(scope="session")
def model(cold_load):
    return cold_load[0]


def test_plugin_registers_the_transformers_provider():
    registered = []
    transformers_models.register_model_providers(registered.append)
    assert [provider.name for provider in registered] == ["transformers"]
    assert isinstance(registered[0], ModelProvider)
    assert DEFAULT_MODEL.provider == "transformers"


def test_gguf_load_writes_a_safetensors_cache_that_later_loads_use(cold_load, model_cache):
    model, cold_seconds = cold_load
    assert isinstance(model, ChatModel)
    assert not model.loaded.from_cache
    folder = gguf_cache_folder(resolve_source(DEFAULT_MODEL.source), model_cache)
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()

    # A fresh load from disk (not the process's shared copy) reads the cache, and is faster.
    again = load_weights(DEFAULT_MODEL.source, model.dtype, None, str(model_cache))
    assert again.from_cache
    assert again.load_seconds < cold_seconds
    assert again.model is not model.model


def test_a_corrupt_gguf_file_is_a_clear_error_and_leaves_no_cache(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    spec = replace(DEFAULT_MODEL, name="broken", source=str(bad))
    with pytest.raises(InvalidInput, match=r"could not convert the GGUF file .*broken\.gguf"):
        TransformersProvider().load(spec, cache_dir=str(tmp_path / "cache"))
    assert not gguf_cache_folder(resolve_source(str(bad)), tmp_path / "cache").exists()


def test_weights_are_loaded_once_per_process(model, model_cache):
    narrow = TransformersProvider().load(
        replace(DEFAULT_MODEL, name="narrow", source="smollm2", context_window=64), cache_dir=str(model_cache)
    )
    assert narrow.loaded is model.loaded
    assert narrow.context_window == 64
    assert model.context_window == model.model.config.max_position_embeddings == 8192


def test_dtype_follows_the_cpu_unless_the_spec_says(model, model_cache):
    assert model.dtype == pick_dtype("auto")
    assert pick_dtype("float32") is torch.float32 and pick_dtype("bf16") is torch.bfloat16
    with pytest.raises(InvalidInput, match="dtype"):
        pick_dtype("int3")
    explicit = TransformersProvider().load(replace(DEFAULT_MODEL, dtype="float32"), cache_dir=str(model_cache))
    assert explicit.dtype == torch.float32
    assert next(explicit.model.parameters()).dtype == torch.float32
    assert explicit.generate(FRANCE, GenerationParams(max_tokens=4, temperature=0))[0].completion_tokens == 4


def test_sources_that_are_not_there_fail_clearly(tmp_path):
    with pytest.raises(InvalidInput, match="smollm2-135m-instruct"):
        resolve_source("builtin:gpt-5")
    with pytest.raises(NotFound, match="never downloaded"):
        resolve_source(str(tmp_path / "missing"))
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"0")
    with pytest.raises(InvalidInput, match=".gguf"):
        resolve_source(str(not_gguf))
    assert resolve_source("smollm2") == resolve_source(DEFAULT_MODEL.source)


def test_chat_template_is_applied_and_the_model_answers(model):
    [answer] = model.generate(FRANCE, GREEDY)
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
    assert answer.prompt_tokens == model.count_tokens(FRANCE)
    assert "<|im_start|>" in model.tokenizer.decode(model.prompt_ids(FRANCE))
    assert model.count_tokens(FRANCE) > len(model.tokenizer(FRANCE[0].content)["input_ids"])


def test_greedy_generation_is_deterministic(model):
    first = model.generate(STORY, GREEDY)[0]
    second = model.generate(STORY, GREEDY)[0]
    assert first.text == second.text and first.text


def test_same_seed_same_sample(model):
    params = GenerationParams(max_tokens=12, temperature=1.0, top_p=0.95, seed=1234)
    first = model.generate(STORY, params)[0].text
    assert model.generate(STORY, params)[0].text == first
    others = {model.generate(STORY, replace(params, seed=seed))[0].text for seed in (1, 2, 3)}
    assert others - {first}, "different seeds should give some different text"


def test_n_candidates(model):
    candidates = model.generate(STORY, GenerationParams(max_tokens=12, temperature=1.0, n=3, seed=5))
    assert len(candidates) == 3
    assert len({candidate.text for candidate in candidates}) > 1
    assert {candidate.prompt_tokens for candidate in candidates} == {model.count_tokens(STORY)}


def test_max_tokens_finishes_with_length(model):
    [generation] = model.generate(STORY, GenerationParams(max_tokens=3, temperature=0))
    assert generation.finish_reason == "length"
    assert generation.completion_tokens == 3


def test_stop_string_cuts_the_text(model):
    full = model.generate(FRANCE, GREEDY)[0].text
    assert "Paris" in full
    [cut] = model.generate(FRANCE, replace(GREEDY, stop=["Paris", "never-appears"]))
    assert cut.text == full[: full.index("Paris")]
    assert cut.finish_reason == "stop"


def test_stop_string_spanning_tokens_when_streaming(model):
    full = model.generate(FRANCE, GREEDY)[0].text
    stop = full[5:14]  # starts and ends inside tokens
    deltas = list(model.stream(FRANCE, replace(GREEDY, stop=[stop])))
    streamed = "".join(delta.text for delta in deltas)
    assert streamed == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop"
    assert model.generate(FRANCE, replace(GREEDY, stop=[stop]))[0].text == streamed


def test_stream_adds_up_to_generate(model):
    params = GenerationParams(max_tokens=24, temperature=0)
    expected = model.generate(STORY, params)[0]
    deltas = []
    for delta in model.stream(STORY, params):
        assert not torch.is_inference_mode_enabled(), "inference mode leaked into the consumer"
        deltas.append(delta)
    assert len([delta for delta in deltas if delta.text]) > 5
    assert "".join(delta.text for delta in deltas) == expected.text
    assert [delta.finish_reason for delta in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == expected.finish_reason


def test_stream_of_several_candidates_is_indexed(model):
    params = GenerationParams(max_tokens=8, temperature=0.9, n=2, seed=3)
    deltas = list(model.stream(STORY, params))
    generated = model.generate(STORY, params)
    for index in (0, 1):
        mine = [delta for delta in deltas if delta.index == index]
        assert "".join(delta.text for delta in mine) == generated[index].text
        assert [delta.finish_reason is not None for delta in mine].count(True) == 1
        assert mine[-1].finish_reason == generated[index].finish_reason


def test_cancel_stops_a_stream_between_tokens(model):
    seen = []
    deltas = model.stream(STORY, GenerationParams(max_tokens=200, temperature=0), cancel=lambda: len(seen) >= 3)
    for delta in deltas:
        seen.append(delta)
    assert len(seen) == 4
    assert seen[-1].finish_reason == "cancelled"
    [generation] = model.generate(STORY, GREEDY, cancel=lambda: True)
    assert generation.finish_reason == "cancelled" and generation.completion_tokens == 0


def test_prompt_and_max_tokens_must_fit_the_context_window(model, model_cache):
    with pytest.raises(InvalidInput, match="8192") as error:
        model.generate(FRANCE, GenerationParams(max_tokens=8192))
    assert error.value.details["context_window"] == 8192
    narrow = TransformersProvider().load(replace(DEFAULT_MODEL, context_window=40), cache_dir=str(model_cache))
    with pytest.raises(InvalidInput, match="context window is 40 tokens"):
        narrow.stream(FRANCE, GenerationParams(max_tokens=8))
    with pytest.raises(InvalidInput, match="max_tokens"):
        model.generate(FRANCE, GenerationParams(max_tokens=0))
    with pytest.raises(InvalidInput, match="n must be"):
        model.generate(FRANCE, GenerationParams(n=0))


def test_concurrent_requests_match_sequential_ones(model):
    expected = {
        "story": model.generate(STORY, GenerationParams(max_tokens=8, temperature=0))[0].text,
        "france": model.generate(FRANCE, GenerationParams(max_tokens=8, temperature=0))[0].text,
    }
    results: dict[str, str] = {}

    def run(key, messages):
        results[key] = "".join(d.text for d in model.stream(messages, GenerationParams(max_tokens=8, temperature=0)))

    threads = [threading.Thread(target=run, args=args) for args in (("story", STORY), ("france", FRANCE))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == expected


def test_incremental_decoding_keeps_multibyte_characters_whole(model):
    text = "Crème brûlée 🐉 naïve – ok"
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(model.tokenizer)
    pieces = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == model.tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize(
    ("pieces", "stops", "released", "stopped"),
    [
        (["Hello wor", "ld. EN", "D here"], ["END"], "Hello world. ", True),
        (["a<", "b", "c"], ["<|x"], "a<bc", False),
        (["ab", "c", "d"], ["cd", "bcX"], "ab", True),
        (["no stops"], [], "no stops", False),
    ],
)
def test_stop_matcher_holds_back_possible_starts(pieces, stops, released, stopped):
    matcher = StopMatcher(stops)
    out = [matcher.push(piece) for piece in pieces]
    out.append(matcher.flush())
    assert "".join(out) == released
    assert matcher.stopped is stopped


def test_lora_adapter_is_applied_on_top_of_the_base(model, model_cache, tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        str(gguf_cache_folder(resolve_source(DEFAULT_MODEL.source), model_cache)), dtype=torch.float32
    )
    # init_lora_weights=False starts the adapter away from zero, so it visibly changes the output.
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    del base

    adapted = TransformersProvider().load(
        replace(DEFAULT_MODEL, adapter=str(tmp_path / "adapter")), cache_dir=str(model_cache)
    )
    assert adapted.loaded is not model.loaded
    params = GenerationParams(max_tokens=8, temperature=0)
    assert adapted.generate(FRANCE, params)[0].text != model.generate(FRANCE, params)[0].text
    with pytest.raises(NotFound, match="adapter_config.json"):
        TransformersProvider().load(replace(DEFAULT_MODEL, adapter=str(tmp_path)), cache_dir=str(model_cache))
