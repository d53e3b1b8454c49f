"""The generation engine with the real shipped model: one thread runs every forward pass,
concurrent requests share batches and still answer exactly as they do alone, a cancelled stream
leaves its batch without disturbing the others, and a failing request does not stop the engine."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.transformers_models import DEFAULT_MODEL, TransformersProvider
from espalier.plugins.transformers_models.engine import get_engine

pytestmark = pytest.mark.slow

PROMPTS = {
    "france": [ChatMessage("user", "What is the capital of France?")],
    "dragon": [ChatMessage("user", "Tell me a short story about a dragon who learns to cook.")],
    "haiku": [ChatMessage("system", "You are a poet."), ChatMessage("user", "Write a haiku about autumn leaves.")],
    "tips": [ChatMessage("user", "Give three tips for learning to cook, one line each.")],
}
GREEDY = GenerationParams(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def model(model_cache_dir):
    return TransformersProvider().load(DEFAULT_MODEL, cache_dir=str(model_cache_dir))


def _run_together(jobs: dict[str, callable]) -> dict[str, object]:
    """Start every job at once (a barrier lines them up) and collect results or errors."""
    barrier = threading.Barrier(len(jobs))
    results: dict[str, object] = {}

    def run(name, job):
        barrier.wait()
        try:
            results[name] = job()
        except Exception as error:  # the test looks at it
            results[name] = error

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a request never finished"
    return results


def test_every_forward_pass_runs_on_the_engine_thread(model):
    threads: set[str] = set()
    hook = model.model.register_forward_pre_hook(lambda module, args: threads.add(threading.current_thread().name))
    try:
        model.generate(PROMPTS["france"], GREEDY)
        list(model.stream(PROMPTS["haiku"], GREEDY))
        _run_together({name: (lambda m=messages: model.generate(m, GREEDY)) for name, messages in PROMPTS.items()})
    finally:
        hook.remove()
    assert threads == {"espalier-generation"}
    assert get_engine().thread.name == "espalier-generation"


def test_concurrent_requests_batch_and_answer_as_they_do_alone(model):
    sampled = GenerationParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=7, n=2)
    stopped = replace(GREEDY, max_tokens=20, stop=["."])
    alone = {name: model.generate(messages, GREEDY)[0].text for name, messages in PROMPTS.items()}
    alone["sampled"] = [g.text for g in model.generate(PROMPTS["dragon"], sampled)]
    alone["stopped"] = model.generate(PROMPTS["tips"], stopped)[0].text
    engine = get_engine()
    steps, rows = engine.steps, engine.rows_stepped

    jobs = {name: (lambda m=messages: model.generate(m, GREEDY)[0].text) for name, messages in PROMPTS.items()}
    jobs["sampled"] = lambda: [g.text for g in model.generate(PROMPTS["dragon"], sampled)]
    jobs["stopped"] = lambda: "".join(d.text for d in model.stream(PROMPTS["tips"], stopped))
    together = _run_together(jobs)

    assert together == alone
    assert all(alone.values()) and len(set(alone["sampled"])) == 2
    assert (engine.rows_stepped - rows) / (engine.steps - steps) > 1.5, "the requests did not share decode steps"


def test_cancelling_one_stream_leaves_the_others_alone(model):
    long = GenerationParams(max_tokens=40, temperature=0)
    alone = {name: model.generate(PROMPTS[name], long)[0].text for name in ("dragon", "tips")}
    engine = get_engine()
    cancelled: dict[str, object] = {}

    def leave_early():
        deltas = model.stream(PROMPTS["haiku"], replace(long, max_tokens=400))
        received = [next(deltas).text for _ in range(3)]
        deltas.close()  # what the API does when the client disconnects
        cancelled["sequence"] = deltas.sequence
        return received

    together = _run_together(
        {
            "dragon": lambda: "".join(d.text for d in model.stream(PROMPTS["dragon"], long)),
            "tips": lambda: model.generate(PROMPTS["tips"], long)[0].text,
            "haiku": leave_early,
        }
    )
    assert engine.wait_idle(120)
    assert {name: together[name] for name in alone} == alone
    assert len(together["haiku"]) == 3
    # left the batch at once: far from its 400 tokens, not decoded on after the others ended
    assert cancelled["sequence"].generated < 30


def test_a_failing_request_does_not_stop_the_engine(model):
    engine = get_engine()
    model.generate(PROMPTS["france"], GREEDY)
    thread = engine.thread
    expected = model.generate(PROMPTS["dragon"], replace(GREEDY, max_tokens=24))[0].text
    vocabulary = model.model.config.vocab_size

    def broken():  # a token id outside the vocabulary fails inside the engine, in the forward pass
        return model._submit([1, 2, vocabulary + 5], GREEDY, None).__next__()

    together = _run_together(
        {
            "broken": broken,
            "good": lambda: model.generate(PROMPTS["dragon"], replace(GREEDY, max_tokens=24))[0].text,
            "overflow": lambda: model.generate(PROMPTS["france"], replace(GREEDY, max_tokens=9000)),
        }
    )
    assert isinstance(together["broken"], IndexError)
    assert isinstance(together["overflow"], InvalidInput) and together["overflow"].code == "context_length_exceeded"
    assert together["good"] == expected
    assert engine.thread is thread and thread.is_alive()
    assert model.generate(PROMPTS["france"], GREEDY)[0].text == model.generate(PROMPTS["france"], GREEDY)[0].text


def test_cancel_before_the_first_token_and_a_dropped_iterator(model):
    engine = get_engine()
    [generation] = model.generate(PROMPTS["dragon"], GREEDY, cancel=lambda: True)
    assert generation.finish_reason == "cancelled" and generation.completion_tokens == 0
    deltas = model.stream(PROMPTS["dragon"], replace(GREEDY, max_tokens=400))
    sequence = deltas.sequence
    del deltas  # never read: dropping it abandons the sequence
    assert engine.wait_idle(120)
    assert sequence.generated < 30
