"""Built-in retrievers over Espalier's collections: ``vector`` (the collection's embedder in the
vector store), ``keyword`` (BM25) and ``hybrid`` (both fused by reciprocal rank).
``POST /api/collections/{c}/search`` and grounded chat answers find them by name, so a plugin can
add its own (``register_retrievers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import RetrievedChunk

if TYPE_CHECKING:
    from espalier.core.platform import Platform


class CollectionRetriever:
    """Searches one collection of ``platform.rag`` in one mode. Access is checked by the caller."""

    def __init__(self, platform: Platform, mode: str, description: str):
        self.platform = platform
        self.name = mode
        self.mode = mode
        self.description = description

    def search(
        self, query: str, *, collection: str, k: int = 5, filters: Mapping[str, Any] | None = None
    ) -> list[RetrievedChunk]:
        record = self.platform.rag.collection_by_name(collection)
        return self.platform.rag.search_record(record, query, k=k, mode=self.mode, filters=filters)


@hookimpl(trylast=True)
def register_retrievers(register, platform):
    register(CollectionRetriever(platform, "vector", "Nearest chunks by embedding (cosine)"))
    register(CollectionRetriever(platform, "keyword", "BM25 keyword match, index kept at ingestion"))
    register(CollectionRetriever(platform, "hybrid", "Vector and keyword rankings fused by reciprocal rank"))
