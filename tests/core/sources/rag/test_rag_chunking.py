"""Chunking with the chat model's own tokenizer, and the budget that keeps grounded prompts inside
the context window."""

from __future__ import annotations

import pytest

from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.sources.rag.chunking import (
    PER_SOURCE_OVERHEAD,
    PROMPT_OVERHEAD,
    plan_budget,
    split_text,
    token_counter,
    word_estimate,
)


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir, tmp_path_factory):
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    platform = Platform(
        Settings(home=tmp_path_factory.mktemp("chunking-home"), model_cache_dir=model_cache_dir),
        load_entry_points=False,
    ).start(run_jobs=False)
    model, _version = platform.models.load("smollm2-135m-instruct")
    yield model.tokenizer
    platform.close()


@pytest.mark.slow
def test_chunks_fit_in_tokens_follow_structure_and_overlap(tokenizer, hotpot):
    _rows, by_title = hotpot
    body = "\n\n".join(list(by_title.values())[:12])
    text = f"# First part\n\n{body}\n\n# Second part\n\nA short closing paragraph."
    count = token_counter(tokenizer)
    chunks = split_text(text, 64, 8, count)
    assert len(chunks) > 10
    for chunk in chunks:
        assert count(chunk.text) <= 64
        assert text[chunk.start : chunk.end] == chunk.text
    assert chunks[-1].text.startswith("# Second part")  # a chunk never straddles a heading
    # consecutive chunks of one section overlap
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:], strict=False))


def test_budget_fits_the_window_with_room_for_the_answer():
    for window in (1024, 2048, 8192, 32768):
        budget = plan_budget(window)
        used = budget.k * (budget.chunk_tokens + PER_SOURCE_OVERHEAD) + PROMPT_OVERHEAD + budget.answer_tokens
        assert used <= window and budget.k >= 1
    assert plan_budget(8192, chunk_tokens=100).k == 5
    assert plan_budget(1024, k=4).chunk_tokens <= (1024 - 256 - PROMPT_OVERHEAD) // 4
    with pytest.raises(InvalidInput, match="do not fit"):
        plan_budget(2048, chunk_tokens=512, k=8)
    with pytest.raises(InvalidInput, match="no room"):
        plan_budget(400)


def test_word_estimate_without_a_tokenizer():
    assert token_counter(None) is word_estimate
    assert word_estimate("one two three four five") >= 5
