"""The BM25 keyword index of a collection (bm25s), a
:class:`~espalier.core.infrastructure.contracts.KeywordIndex`. Rebuilt and saved when the collection's
chunks change (at ingestion), loaded once per process and version, never rebuilt per query."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class BM25Index:
    """The ``bm25`` keyword index: one folder per collection and version under ``root``."""

    name = "bm25"

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[int, Any, list[str]]] = {}
        self._lock = threading.Lock()

    def _folder(self, collection_id: str, version: int) -> Path:
        return self.root / collection_id / f"v{version}"

    def build(self, collection_id: str, version: int, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Index ``texts`` as version ``version`` and drop older versions."""
        import bm25s

        folder = self._folder(collection_id, version)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        retriever = None
        if ids:
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
            retriever.save(str(tmp / "bm25"))
        (tmp / "ids.json").write_text(json.dumps(list(ids)))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # readers never see a half-written index
        for old in (self.root / collection_id).glob("v*"):
            if old != folder and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
        with self._lock:
            self._cache[collection_id] = (version, retriever, list(ids))

    def _load(self, collection_id: str, version: int) -> tuple[Any, list[str]] | None:
        cached = self._cache.get(collection_id)
        if cached and cached[0] == version:
            return cached[1], cached[2]
        folder = self._folder(collection_id, version)
        if not (folder / "ids.json").exists():
            return None
        import bm25s

        ids = json.loads((folder / "ids.json").read_text())
        retriever = bm25s.BM25.load(str(folder / "bm25")) if ids else None
        with self._lock:
            self._cache[collection_id] = (version, retriever, ids)
        return retriever, ids

    def has(self, collection_id: str, version: int) -> bool:
        return self._load(collection_id, version) is not None

    def search(self, collection_id: str, version: int, query: str, k: int) -> list[tuple[str, float]]:
        import bm25s

        loaded = self._load(collection_id, version)
        if loaded is None:
            raise LookupError(collection_id)
        retriever, ids = loaded
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if retriever is None or not tokens.vocab:
            return []
        results, scores = retriever.retrieve(tokens, k=min(k, len(ids)), show_progress=False, n_threads=1)
        return [(ids[int(i)], float(s)) for i, s in zip(results[0], scores[0], strict=True) if s > 0]

    def drop(self, collection_id: str) -> None:
        with self._lock:
            self._cache.pop(collection_id, None)
        shutil.rmtree(self.root / collection_id, ignore_errors=True)
