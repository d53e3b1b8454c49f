"""Built-in retrievers over Espalier's collections: ``vector`` (MiniLM in chromadb), ``keyword``
(BM25) and ``hybrid`` (both fused by reciprocal rank). ``POST /api/collections/{c}/search`` and
grounded chat answers find them by name, so a plugin can add its own (``register_retrievers``).

They are registered before the platform exists and bound to it in ``startup``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import RetrievedChunk
from espalier.core.infrastructure.errors import Unavailable


class CollectionRetriever:
    """Searches one collection of ``platform.rag`` in one mode. Access is checked by the caller."""

    def __init__(self, mode: str, description: str):
        self.name = mode
        self.mode = mode
        self.description = description
        self.platform: Any = None

    def search(
        self, query: str, *, collection: str, k: int = 5, filters: Mapping[str, Any] | None = None
    ) -> list[RetrievedChunk]:
        if self.platform is None:
            raise Unavailable(f"retriever '{self.name}' is not bound to a running platform")
        record = self.platform.rag.collection_by_name(collection)
        return self.platform.rag.search_record(record, query, k=k, mode=self.mode, filters=filters)


@hookimpl(trylast=True)
def register_retrievers(register):
    register(CollectionRetriever("vector", "Nearest chunks by MiniLM embedding (cosine)"))
    register(CollectionRetriever("keyword", "BM25 keyword match, index kept at ingestion"))
    register(CollectionRetriever("hybrid", "Vector and keyword rankings fused by reciprocal rank"))


@hookimpl
def startup(platform):
    for entry in platform.retrievers:
        if isinstance(entry.item, CollectionRetriever):
            entry.item.platform = platform
