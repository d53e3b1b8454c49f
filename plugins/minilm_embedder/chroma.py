"""A chromadb embedding function backed by the ``minilm`` embedder.

Importing this module registers the function with chromadb, which rebuilds it from the
collection's stored config when a collection is opened again; import it before
``get_collection``. chromadb's own default embedder downloads a model, so collections must
always be created with this function (or with precomputed vectors).

    from espalier.plugins.minilm_embedder.chroma import MiniLMEmbeddingFunction
    collection = client.get_or_create_collection("docs", embedding_function=MiniLMEmbeddingFunction())
"""

from __future__ import annotations

from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from espalier.plugins.minilm_embedder.embedder import MODEL_NAME, MiniLMEmbedder


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Embeds documents and queries with the process's shared all-MiniLM-L6-v2 model."""

    def __init__(self) -> None:
        self._embedder = MiniLMEmbedder()

    def __call__(self, input: Documents) -> Embeddings:
        return list(self._embedder.embed_array(list(input)))

    @staticmethod
    def name() -> str:
        return "espalier-minilm"

    def default_space(self) -> Space:
        # Vectors are unit length, so cosine is the natural distance.
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "l2", "ip"]

    def get_config(self) -> dict[str, Any]:
        return {"model": MODEL_NAME}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        model = config.get("model", MODEL_NAME)
        if model != MODEL_NAME:
            raise ValueError(f"espalier-minilm only provides {MODEL_NAME}, not {model}")
        return MiniLMEmbeddingFunction()

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if new_config.get("model", MODEL_NAME) != old_config.get("model", MODEL_NAME):
            raise ValueError("The model of an espalier-minilm collection cannot change; make a new collection.")


def register_with_chromadb() -> type[MiniLMEmbeddingFunction]:
    """Make sure chromadb knows the function (done on import; safe to call again)."""
    return register_embedding_function(MiniLMEmbeddingFunction)
