"""The ``minilm`` embedder with the real shipped all-MiniLM-L6-v2 weights, alone and inside a real
chromadb PersistentClient."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from espalier.core.infrastructure.contracts import Embedder
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins import minilm_embedder
from espalier.plugins.minilm_embedder import MiniLMEmbedder
from espalier.plugins.minilm_embedder.embedder import shared_model

pytestmark = pytest.mark.slow

FACTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar in plant leaves.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "A golden retriever is a friendly dog breed that loves to fetch.",
    "Python is a programming language known for its readable syntax.",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_plugin_registers_minilm():
    registered = []
    minilm_embedder.register_embedders(lambda item, **options: registered.append((item, options)))
    assert [(e.name, e.dimensions, options) for e, options in registered] == [("minilm", 384, {"default": True})]
    assert isinstance(registered[0][0], Embedder)


def test_vectors_have_384_unit_length_dimensions(embedder):
    vectors = embedder.embed(["hello world", "a second, rather longer sentence about nothing much", ""])
    assert len(vectors) == 3
    assert all(len(vector) == 384 for vector in vectors)
    assert all(isinstance(value, float) for value in vectors[0])
    np.testing.assert_allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]) == []
    with pytest.raises(InvalidInput):
        embedder.embed("one string")


def test_similar_sentences_rank_first(embedder):
    query = np.array(embedder.embed(["Which plants make food from light?"])[0])
    facts = np.array(embedder.embed(FACTS))
    ranking = np.argsort(-(facts @ query))
    assert ranking[0] == 1
    pets = np.array(embedder.embed(["My puppy loves chasing a ball."])[0])
    assert int(np.argmax(facts @ pets)) == 3
    # Same meaning in other words beats a different topic.
    a, b, c = embedder.embed(["The cat sat on the mat.", "A kitten was sitting on the rug.", "Interest rates rose."])
    assert np.dot(a, b) > np.dot(a, c) + 0.2


def test_many_texts_grouped_by_token_count_keep_their_order(embedder):
    # More than one batch, lengths shuffled: each vector must still belong to its own text.
    words = "the tower stands in paris and the river runs past it under old bridges".split()
    texts = [" ".join(words[: 1 + (n * 7) % len(words)]) + f" number {n}" for n in range(150)] + FACTS
    vectors = embedder.embed_array(texts)
    assert vectors.shape == (len(texts), 384)
    plain = shared_model().encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(vectors, plain, atol=1e-5)
    assert int(np.argmax(vectors[-5:] @ np.array(embedder.embed(["Which plants make food from light?"])[0]))) == 1


def test_one_model_per_process_across_threads(embedder):
    models = []
    threads = [threading.Thread(target=lambda: models.append(shared_model())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model) for model in models}) == 1
    assert MiniLMEmbedder().embed(["x"]) == embedder.embed(["x"])


def test_chromadb_collection_uses_it_and_rebuilds_it_from_config(tmp_path):
    import chromadb

    from espalier.plugins.minilm_embedder.chroma import MiniLMEmbeddingFunction

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    collection = client.create_collection("facts", embedding_function=MiniLMEmbeddingFunction())
    collection.add(ids=[f"fact-{i}" for i in range(len(FACTS))], documents=FACTS)
    found = collection.query(query_texts=["famous landmark in France"], n_results=2)
    assert found["ids"][0][0] == "fact-0"
    del collection, client

    # A new client opens the stored collection without being handed the function: chromadb rebuilds
    # it from the collection's config (never its own downloading default).
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    reopened = client.get_collection("facts")
    stored = reopened.configuration["embedding_function"]
    assert isinstance(stored, MiniLMEmbeddingFunction)
    assert stored.get_config() == {"model": "all-MiniLM-L6-v2"}
    assert client.get_collection("facts", embedding_function=MiniLMEmbeddingFunction()).count() == len(FACTS)
    found = reopened.query(query_texts=["Which language has clean, readable code?"], n_results=1)
    assert found["ids"][0] == ["fact-4"]
    assert reopened.count() == len(FACTS)
