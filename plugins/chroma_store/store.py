"""Collections' vectors in chromadb: an embedded ``PersistentClient`` in ``ESPALIER_HOME`` or an
``HttpClient`` to a Chroma server (``ESPALIER_CHROMA_URL``). A
:class:`~espalier.core.infrastructure.contracts.VectorStore`.

Vectors are always computed by Espalier's embedder and passed in (``embeddings=`` and
``query_embeddings=``), and collections are created without an embedding function, so chromadb's
own default (which downloads a model) is never used. Every call is wrapped so that an unreachable
server becomes a 503 saying which server and what to do, never a 500.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from espalier import EspalierError, Unavailable

log = logging.getLogger("espalier.rag.store")

#: chromadb refuses bigger batches (5,461 for SQLite-backed stores); stay under whatever it reports.
DEFAULT_BATCH = 5000


class ChromaStore:
    """The ``chroma`` vector store; each Espalier collection is one chromadb collection (cosine)."""

    name = "chroma"

    def __init__(self, *, path: Path, url: str | None = None):
        self.path = path
        self.url = url
        self._client: Any = None
        self._lock = threading.Lock()
        self._collections: dict[str, Any] = {}

    @property
    def where(self) -> str:
        return f"the Chroma server at {self.url}" if self.url else f"the embedded chromadb at {self.path}"

    @contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """Turns chromadb and network failures into :class:`Unavailable` (503) with a clear message."""
        try:
            yield
        except EspalierError:
            raise
        except Exception as exc:
            self._collections.clear()
            if self.url:
                self._client = None  # reconnect on the next call: the server may be back
            log.warning("chromadb failed while %s: %r", doing, exc, exc_info=True)
            hint = "start it or fix ESPALIER_CHROMA_URL" if self.url else "check the disk and ESPALIER_HOME"
            raise Unavailable(
                f"the vector store is unavailable while {doing}: {self.where} failed "
                f"({exc.__class__.__name__}); {hint}, then retry",
                code="vector_store_unavailable",
            ) from None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import chromadb
                from chromadb.config import Settings as ChromaSettings

                chroma_settings = ChromaSettings(anonymized_telemetry=False)
                with self.guard("connecting"):
                    if self.url:
                        parsed = urlparse(self.url)
                        self._client = chromadb.HttpClient(
                            host=parsed.hostname or "127.0.0.1",
                            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                            ssl=parsed.scheme == "https",
                            settings=chroma_settings,
                        )
                    else:
                        self.path.mkdir(parents=True, exist_ok=True)
                        self._client = chromadb.PersistentClient(path=str(self.path), settings=chroma_settings)
            return self._client

    def collection(self, collection: str) -> Any:
        cached = self._collections.get(collection)
        if cached is not None:
            return cached
        with self.guard("opening a collection"):
            handle = self.client().get_or_create_collection(
                collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
            )
        self._collections[collection] = handle
        return handle

    def batch_size(self) -> int:
        with self.guard("reading the batch limit"):
            return min(DEFAULT_BATCH, int(self.client().get_max_batch_size()))

    def add(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: Any,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Adds in batches; on failure removes what was added, so nothing is left half-written."""
        handle = self.collection(collection)
        size = self.batch_size()
        done = 0
        try:
            with self.guard("adding vectors"):
                for start in range(0, len(ids), size):
                    end = start + size
                    handle.add(
                        ids=list(ids[start:end]),
                        embeddings=vectors[start:end],
                        documents=list(texts[start:end]),
                        metadatas=[dict(m) for m in metadatas[start:end]],
                    )
                    done = end
        except Unavailable:
            if done:
                self.delete(collection, ids[:done], quiet=True)
            raise

    def delete(self, collection: str, ids: Sequence[str], *, quiet: bool = False) -> None:
        if not ids:
            return
        try:
            handle = self.collection(collection)
            size = self.batch_size()
            with self.guard("deleting vectors"):
                for start in range(0, len(ids), size):
                    handle.delete(ids=list(ids[start : start + size]))
        except Unavailable:
            if not quiet:
                raise
            log.warning(
                "could not remove %d vectors from %s; they are ignored (not in the database)", len(ids), collection
            )

    def update_metadata(self, collection: str, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
        handle = self.collection(collection)
        with self.guard("updating metadata"):
            size = self.batch_size()
            for start in range(0, len(ids), size):
                handle.update(
                    ids=list(ids[start : start + size]), metadatas=[dict(m) for m in metadatas[start : start + size]]
                )

    def query(
        self, collection: str, vector: Sequence[float], k: int, where: Mapping[str, Any] | None
    ) -> list[tuple[str, float]]:
        handle = self.collection(collection)
        with self.guard("searching"):
            import numpy as np

            result = handle.query(
                query_embeddings=np.asarray([vector], dtype="float32"),
                n_results=k,
                where=dict(where) if where else None,
                include=["distances"],
            )
        return list(zip(result["ids"][0], result["distances"][0], strict=True))

    def drop(self, collection: str) -> None:
        self._collections.pop(collection, None)
        with self.guard("deleting a collection"):
            try:
                self.client().delete_collection(collection)
            except Exception as exc:  # already gone is fine
                if "does not exist" not in str(exc) and "NotFound" not in type(exc).__name__:
                    raise
