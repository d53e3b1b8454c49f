"""Collections, documents, ingestion and search. The database holds the truth (collections,
documents, chunk texts and spans); a vector store holds the vectors and a keyword index the
keywords (the built-ins: chromadb and BM25; plugins register others).

Writes go vectors first, then one database transaction, then the old vectors are removed: a
failure at any step leaves the previous version of the document searchable and nothing half
written (vectors not named in the database are ignored by search).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import insert as sql_insert
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import KeywordIndex, RetrievedChunk, VectorStore
from espalier.core.infrastructure.db.base import new_id, utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import Conflict, Forbidden, InvalidInput, NotFound
from espalier.core.infrastructure.identity import ROLES, Principal
from espalier.core.sources.rag.chunking import Budget, plan_budget, split_text, token_counter
from espalier.core.sources.rag.extract import DocumentTypes
from espalier.core.sources.rag.fusion import reciprocal_rank_fusion
from espalier.core.sources.rag.tables import ChunkRecord, CollectionRecord, DocumentRecord

log = logging.getLogger("espalier.rag")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
META_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SETTING_KEYS = {"chunk_tokens", "k", "overlap", "answer_tokens", "model"}
MODES = ("vector", "keyword", "hybrid")
MAX_K = 50


@dataclass
class Upload:
    data: bytes
    filename: str
    source: str | None = None
    metadata: Mapping[str, Any] | None = None
    media_type: str | None = None


@dataclass
class _Prepared:
    source: str
    kind: str
    meta: dict[str, Any]
    digest: str
    characters: int
    chunks: list[Any]
    existing: DocumentRecord | None
    old_ids: list[str]
    document_id: str
    ids: list[str]
    document: Any = None


@dataclass
class IngestResult:
    document: DocumentRecord
    status: str  # created, replaced, unchanged


def check_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    if len(meta) > 32:
        raise InvalidInput("at most 32 metadata fields per document")
    for key, value in meta.items():
        if not META_KEY.match(key):
            raise InvalidInput(f"metadata key '{key}' must be a letter then letters, digits or '_' (64 at most)")
        if not isinstance(value, str | int | float | bool) or isinstance(value, str) and len(value) > 1000:
            raise InvalidInput(f"metadata '{key}' must be a string (1000 characters at most), number or boolean")
    return meta


def check_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(settings or {})
    unknown = set(settings) - SETTING_KEYS
    if unknown:
        raise InvalidInput(f"unknown collection settings {sorted(unknown)}; known: {sorted(SETTING_KEYS)}")
    for key in ("chunk_tokens", "k", "answer_tokens"):
        if key in settings and (
            not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 1
        ):
            raise InvalidInput(f"settings.{key} must be a positive integer")
    if "overlap" in settings and not (isinstance(settings["overlap"], int | float) and 0 <= settings["overlap"] < 0.5):
        raise InvalidInput("settings.overlap is a fraction of a chunk in [0, 0.5)")
    if "model" in settings and not isinstance(settings["model"], str):
        raise InvalidInput("settings.model must be a model name")
    return settings


class RagService:
    """``store``, ``keywords``, ``document_types`` and ``embedder`` are asked for when needed, so the
    platform's choice (a setting, or the plugin that offers a default) is made on first use."""

    def __init__(
        self,
        engine: Engine,
        store: Callable[[], VectorStore],
        keywords: Callable[[], KeywordIndex],
        audit: AuditLog,
        embedder: Callable[[], Any],
        load_model: Callable[[str], Any],
        default_model: str,
        document_types: Callable[[], DocumentTypes],
    ):
        self.engine = engine
        self._store = store
        self._keywords = keywords
        self.audit = audit
        self._embedder = embedder
        self._load_model = load_model
        self.default_model = default_model
        self._document_types = document_types

    @property
    def store(self) -> VectorStore:
        return self._store()

    @property
    def keywords(self) -> KeywordIndex:
        return self._keywords()

    @property
    def document_types(self) -> DocumentTypes:
        """The formats ingestion reads: text and Markdown, and those of the registered extractors."""
        return self._document_types()

    def _embed(self, texts: list[str]) -> Any:
        import numpy as np

        embedder = self._embedder()
        if hasattr(embedder, "embed_array"):
            return embedder.embed_array(texts)
        return np.asarray(embedder.embed(texts), dtype="float32")

    # Access ------------------------------------------------------------------------------------
    @staticmethod
    def can_read(record: CollectionRecord, principal: Principal) -> bool:
        return (
            principal.has_role("operator")
            or record.owner_key_id == principal.key_id
            or any(principal.has_role(role) for role in record.read_roles)
        )

    @staticmethod
    def can_write(record: CollectionRecord, principal: Principal) -> bool:
        return principal.has_role("operator") or record.owner_key_id == principal.key_id

    def collection(self, name: str, principal: Principal, *, write: bool = False) -> CollectionRecord:
        record = self.collection_by_name(name)
        if not self.can_read(record, principal):
            raise Forbidden(f"key '{principal.name}' may not read collection '{name}'; ask its owner or an operator")
        if write and not self.can_write(record, principal):
            raise Forbidden(f"only the owner of collection '{name}' or an operator may change it")
        return record

    def collection_by_name(self, name: str) -> CollectionRecord:
        """No access check: for retrievers, whose callers checked it."""
        with session_scope(self.engine) as session:
            record = session.exec(select(CollectionRecord).where(CollectionRecord.name == name)).first()
        if record is None:
            raise NotFound(f"no collection '{name}'; list them with GET /api/collections")
        return record

    @staticmethod
    def chroma_name(record: CollectionRecord) -> str:
        return f"espalier-{record.id}"

    # Collections -------------------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        principal: Principal,
        *,
        read_roles: Sequence[str] = (),
        description: str = "",
        settings: Mapping[str, Any] | None = None,
    ) -> CollectionRecord:
        if not NAME.match(name):
            raise InvalidInput(
                "a collection name is 3-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
            )
        bad = [role for role in read_roles if role not in ROLES]
        if bad:
            raise InvalidInput(f"read_roles takes {', '.join(ROLES)}; not {', '.join(bad)}")
        settings = check_settings(settings)
        self.budget(settings)  # refuses settings that cannot fit the model's window
        with session_scope(self.engine) as session:
            if session.exec(select(CollectionRecord).where(CollectionRecord.name == name)).first() is not None:
                raise Conflict(f"collection '{name}' exists; pick another name or delete it first")
            record = CollectionRecord(
                id=new_id("col"),
                name=name,
                owner_key_id=principal.key_id,
                read_roles=sorted(set(read_roles)),
                description=description,
                settings=settings,
            )
            session.add(record)
        self.audit.record(principal, "collection.create", name, read_roles=list(read_roles))
        return record

    def list_collections(self, principal: Principal) -> list[CollectionRecord]:
        with session_scope(self.engine) as session:
            records = list(session.exec(select(CollectionRecord).order_by(CollectionRecord.name)))
        return [r for r in records if self.can_read(r, principal)]

    def update_collection(
        self,
        name: str,
        principal: Principal,
        *,
        read_roles: Sequence[str] | None = None,
        description: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> CollectionRecord:
        record = self.collection(name, principal, write=True)
        changes: dict[str, Any] = {}
        if read_roles is not None:
            bad = [role for role in read_roles if role not in ROLES]
            if bad:
                raise InvalidInput(f"read_roles takes {', '.join(ROLES)}; not {', '.join(bad)}")
            changes["read_roles"] = sorted(set(read_roles))
        if description is not None:
            changes["description"] = description
        if settings is not None:
            changes["settings"] = check_settings(settings)
            self.budget(changes["settings"])
        with session_scope(self.engine) as session:
            stored = session.get(CollectionRecord, record.id)
            for key, value in changes.items():
                setattr(stored, key, value)
            session.add(stored)
            session.flush()
            session.refresh(stored)
            record = stored
        self.audit.record(principal, "collection.update", name, fields=sorted(changes))
        return record

    def delete_collection(self, name: str, principal: Principal) -> None:
        record = self.collection(name, principal, write=True)
        self.store.drop(self.chroma_name(record))  # 503 here leaves everything as it was
        with session_scope(self.engine) as session:
            session.exec(sql_delete(ChunkRecord).where(ChunkRecord.collection_id == record.id))  # type: ignore[call-overload]
            session.exec(sql_delete(DocumentRecord).where(DocumentRecord.collection_id == record.id))  # type: ignore[call-overload]
            session.exec(sql_delete(CollectionRecord).where(CollectionRecord.id == record.id))  # type: ignore[call-overload]
        self.keywords.drop(record.id)
        self.audit.record(principal, "collection.delete", name)

    # Budget ------------------------------------------------------------------------------------
    def model_for(self, settings: Mapping[str, Any]) -> Any:
        return self._load_model(settings.get("model") or self.default_model)

    def budget(self, settings: Mapping[str, Any], model: Any = None) -> Budget:
        model = model or self.model_for(settings)
        return plan_budget(
            model.context_window,
            answer_tokens=settings.get("answer_tokens", 256),
            chunk_tokens=settings.get("chunk_tokens"),
            k=settings.get("k"),
            overlap=settings.get("overlap", 0.15),
        )

    # Documents ---------------------------------------------------------------------------------
    def ingest(
        self,
        collection: str,
        principal: Principal,
        data: bytes,
        *,
        filename: str,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        media_type: str | None = None,
        reindex: bool = True,
    ) -> IngestResult:
        item = Upload(data, filename, source, metadata, media_type)
        return self.ingest_many(collection, principal, [item], reindex=reindex)[0]

    def ingest_many(
        self, collection: str, principal: Principal, uploads: Sequence[Upload], *, reindex: bool = True
    ) -> list[IngestResult]:
        """Ingests several documents with one embedding pass, batched vector-store adds and one
        transaction. Every upload is checked first: one bad file refuses the batch, nothing stored."""
        record = self.collection(collection, principal, write=True)
        model = budget = counter = None
        prepared: list[_Prepared] = []
        results: list[IngestResult | None] = []
        seen: set[str] = set()
        types = self.document_types
        sources = [u.source or u.filename for u in uploads]
        with session_scope(self.engine) as session:  # one query for the whole batch
            documents = {
                d.source: d
                for d in session.exec(
                    select(DocumentRecord).where(
                        DocumentRecord.collection_id == record.id, DocumentRecord.source.in_(sources)
                    )
                )
            }  # type: ignore[attr-defined]
            chunk_ids: dict[str, list[str]] = {}
            for chunk_id, document_id in session.exec(
                select(ChunkRecord.id, ChunkRecord.document_id).where(
                    ChunkRecord.document_id.in_([d.id for d in documents.values()])
                )
            ):  # type: ignore[attr-defined]
                chunk_ids.setdefault(document_id, []).append(chunk_id)
        for upload in uploads:
            source = upload.source or upload.filename
            if not 1 <= len(source) <= 1000:
                raise InvalidInput("source must be 1-1000 characters")
            if source in seen:
                raise InvalidInput(f"source '{source}' appears twice in one batch")
            seen.add(source)
            kind = types.media_type_for(upload.filename, upload.media_type)
            meta = check_metadata(upload.metadata)
            text = types.extract(upload.data, kind, upload.filename)
            digest = hashlib.sha256(upload.data).hexdigest()
            existing = documents.get(source)
            old_ids = chunk_ids.get(existing.id, []) if existing else []
            if (
                existing is not None
                and existing.content_hash == digest
                and (upload.metadata is None or existing.meta == meta)
            ):
                results.append(IngestResult(existing, "unchanged"))
                continue
            if model is None:
                model = self.model_for(record.settings)
                budget = self.budget(record.settings, model)
                counter = token_counter(getattr(model, "tokenizer", None))
            chunks = split_text(text, budget.chunk_tokens, budget.overlap_tokens, counter)
            if not chunks:
                raise InvalidInput(f"'{upload.filename}' contains no text", code="empty_document")
            document_id = existing.id if existing else new_id("doc")
            generation = secrets.token_hex(3)
            prepared.append(
                _Prepared(
                    source,
                    kind,
                    meta,
                    digest,
                    len(text),
                    chunks,
                    existing,
                    old_ids,
                    document_id,
                    [f"{document_id}-{generation}-{n}" for n in range(len(chunks))],
                )
            )
            results.append(None)
        if prepared:
            self._store_prepared(record, principal, prepared)
            if reindex:
                self.reindex(record.id)
        done = iter(prepared)
        out = []
        for result in results:
            if result is None:
                item = next(done)
                result = IngestResult(item.document, "replaced" if item.existing else "created")
            out.append(result)
        return out

    def ingest_urls(
        self,
        collection: str,
        principal: Principal,
        urls: Sequence[str],
        policy: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[IngestResult]:
        """Fetches every page (each URL and redirect checked by ``policy``) before storing any, then
        ingests them as one batch; the URL asked for is the document's source."""
        from urllib.parse import urlsplit

        from espalier.core.sources.rag.web import fetch

        self.collection(collection, principal, write=True)  # 403/404 before any fetch
        if not 1 <= len(urls) <= 20:
            raise InvalidInput("send 1-20 URLs per request")
        uploads = []
        for url in dict.fromkeys(urls):
            page = fetch(url, policy)
            name = (
                urlsplit(page.final_url).path.rstrip("/").rsplit("/", 1)[-1]
                or urlsplit(page.final_url).hostname
                or "page"
            )
            uploads.append(
                Upload(page.data, name[:200], url, {**(metadata or {}), "url": page.final_url[:1000]}, page.kind)
            )
        results = self.ingest_many(collection, principal, uploads)
        log.info("ingested %d web pages into %s", len(results), collection)
        return results

    def _store_prepared(self, record: CollectionRecord, principal: Principal, prepared: list[_Prepared]) -> None:
        ids = [i for item in prepared for i in item.ids]
        texts = [c.text for item in prepared for c in item.chunks]
        metadatas = [
            {**item.meta, "_doc": item.document_id, "_index": n, "_start": c.start, "_end": c.end}
            for item in prepared
            for n, c in enumerate(item.chunks)
        ]
        vectors = self._embed(texts)
        name = self.chroma_name(record)
        self.store.add(name, ids, vectors, texts, metadatas)
        try:
            with session_scope(self.engine) as session:
                for item in prepared:
                    document = session.get(DocumentRecord, item.document_id) if item.existing else None
                    if document is None:
                        document = DocumentRecord(
                            id=item.document_id,
                            collection_id=record.id,
                            source=item.source,
                            content_hash=item.digest,
                            media_type=item.kind,
                            created_by=principal.key_id,
                        )
                    document.content_hash, document.media_type, document.meta = item.digest, item.kind, item.meta
                    document.chunk_count, document.characters, document.updated_at = (
                        len(item.chunks),
                        item.characters,
                        utcnow(),
                    )
                    session.add(document)
                    if item.existing:
                        session.exec(sql_delete(ChunkRecord).where(ChunkRecord.document_id == item.document_id))  # type: ignore[call-overload]
                    item.document = document
                session.flush()
                # one executemany for every chunk of the batch, not an ORM object per chunk
                rows = [
                    {
                        "id": i,
                        "document_id": item.document_id,
                        "collection_id": record.id,
                        "index": n,
                        "start": c.start,
                        "end": c.end,
                        "text": c.text,
                    }
                    for item in prepared
                    for n, (i, c) in enumerate(zip(item.ids, item.chunks, strict=True))
                ]
                for start in range(0, len(rows), 5000):
                    session.exec(sql_insert(ChunkRecord), params=rows[start : start + 5000])  # type: ignore[call-overload]
                self._bump(session, record.id)
                session.flush()
                for item in prepared:
                    session.refresh(item.document)
                    session.expunge(item.document)
        except Exception:
            self.store.delete(name, ids, quiet=True)
            raise
        self.store.delete(name, [i for item in prepared for i in item.old_ids], quiet=True)
        self.audit.record(
            principal,
            "document.ingest",
            record.name,
            documents=[item.source for item in prepared][:50],
            count=len(prepared),
            chunks=len(ids),
        )

    @staticmethod
    def _bump(session: Any, collection_id: str) -> None:
        stored = session.get(CollectionRecord, collection_id)
        stored.index_version += 1
        session.add(stored)

    def reindex(self, collection_id: str) -> None:
        """Rebuilds the collection's keyword index at its current version (done at ingestion)."""
        with session_scope(self.engine) as session:
            version = session.get(CollectionRecord, collection_id).index_version
            rows = list(
                session.exec(
                    select(ChunkRecord.id, ChunkRecord.text)
                    .where(ChunkRecord.collection_id == collection_id)
                    .order_by(ChunkRecord.id)
                )
            )
        self.keywords.build(collection_id, version, [r[0] for r in rows], [r[1] for r in rows])

    def list_documents(self, collection: str, principal: Principal) -> list[DocumentRecord]:
        record = self.collection(collection, principal)
        with session_scope(self.engine) as session:
            return list(
                session.exec(
                    select(DocumentRecord)
                    .where(DocumentRecord.collection_id == record.id)
                    .order_by(DocumentRecord.source)
                )
            )

    def document_counts(self, collection_ids: Sequence[str]) -> dict[str, int]:
        from sqlalchemy import func

        if not collection_ids:
            return {}
        with session_scope(self.engine) as session:
            rows = session.exec(
                select(DocumentRecord.collection_id, func.count())
                .where(DocumentRecord.collection_id.in_(list(collection_ids)))
                .group_by(DocumentRecord.collection_id)
            )  # type: ignore[attr-defined]
            return {row[0]: row[1] for row in rows}

    def document(
        self, collection: str, document_id: str, principal: Principal, *, write: bool = False
    ) -> tuple[CollectionRecord, DocumentRecord]:
        record = self.collection(collection, principal, write=write)
        with session_scope(self.engine) as session:
            document = session.get(DocumentRecord, document_id)
        if document is None or document.collection_id != record.id:
            raise NotFound(f"no document '{document_id}' in collection '{collection}'")
        return record, document

    def document_text(self, collection: str, document_id: str, principal: Principal) -> str:
        """A document's extracted text, rebuilt from its chunks in order (they overlap: each adds
        what lies past the end of the text so far)."""
        _record, document = self.document(collection, document_id, principal)
        with session_scope(self.engine) as session:
            rows = session.exec(
                select(ChunkRecord.text, ChunkRecord.start, ChunkRecord.end)
                .where(ChunkRecord.document_id == document.id)
                .order_by(ChunkRecord.start)  # type: ignore[arg-type]
            ).all()
        text, end = "", 0
        for chunk_text, start, stop in rows:
            if stop <= end:
                continue
            text += chunk_text[max(0, end - start) :]
            end = stop
        return text

    def update_document(
        self, collection: str, document_id: str, principal: Principal, metadata: Mapping[str, Any]
    ) -> DocumentRecord:
        record, document = self.document(collection, document_id, principal, write=True)
        meta = check_metadata(metadata)
        with session_scope(self.engine) as session:
            chunks = list(
                session.exec(
                    select(ChunkRecord).where(ChunkRecord.document_id == document_id).order_by(ChunkRecord.index)
                )
            )
        self.store.update_metadata(
            self.chroma_name(record),
            [c.id for c in chunks],
            [{**meta, "_doc": document_id, "_index": c.index, "_start": c.start, "_end": c.end} for c in chunks],
        )
        with session_scope(self.engine) as session:
            stored = session.get(DocumentRecord, document_id)
            stored.meta, stored.updated_at = meta, utcnow()
            session.add(stored)
            session.flush()
            session.refresh(stored)
            document = stored
        self.audit.record(principal, "document.update", f"{collection}/{document_id}")
        return document

    def delete_document(self, collection: str, document_id: str, principal: Principal) -> None:
        record, _document = self.document(collection, document_id, principal, write=True)
        with session_scope(self.engine) as session:
            ids = list(session.exec(select(ChunkRecord.id).where(ChunkRecord.document_id == document_id)))
        self.store.delete(self.chroma_name(record), ids)  # 503 here: nothing changed
        with session_scope(self.engine) as session:
            session.exec(sql_delete(ChunkRecord).where(ChunkRecord.document_id == document_id))  # type: ignore[call-overload]
            session.exec(sql_delete(DocumentRecord).where(DocumentRecord.id == document_id))  # type: ignore[call-overload]
            self._bump(session, record.id)
        self.reindex(record.id)
        self.audit.record(principal, "document.delete", f"{collection}/{document_id}")

    # Search ------------------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        principal: Principal,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        filters: Mapping[str, Any] | None = None,
    ) -> list[RetrievedChunk]:
        record = self.collection(collection, principal)
        return self.search_record(record, query, k=k, mode=mode, filters=filters)

    def search_record(
        self,
        record: CollectionRecord,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        filters: Mapping[str, Any] | None = None,
    ) -> list[RetrievedChunk]:
        if not query.strip():
            raise InvalidInput("query must not be empty")
        if len(query) > 4000:
            raise InvalidInput("query must be at most 4000 characters")
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}")
        filters = check_metadata(filters)
        scores: dict[str, float] = {}
        if mode == "vector":
            ranked = self._vector(record, query, k, filters)
        elif mode == "keyword":
            ranked = self._keyword(record, query, k, filters)
        else:
            wide = max(k * 4, 20)
            fused = reciprocal_rank_fusion(
                [i for i, _ in self._vector(record, query, wide, filters)],
                [i for i, _ in self._keyword(record, query, wide, filters)],
            )
            ranked = fused[:k]
        scores = dict(ranked)
        return self._chunks(record, [i for i, _ in ranked][:k], scores)

    def _vector(
        self, record: CollectionRecord, query: str, k: int, filters: Mapping[str, Any]
    ) -> list[tuple[str, float]]:
        vector = self._embed([query])[0]
        where = None
        if filters:
            clauses = [{key: {"$eq": value}} for key, value in filters.items()]
            where = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        return [(i, 1.0 - d) for i, d in self.store.query(self.chroma_name(record), vector, k, where)]

    def _keyword(
        self, record: CollectionRecord, query: str, k: int, filters: Mapping[str, Any]
    ) -> list[tuple[str, float]]:
        if not self.keywords.has(record.id, record.index_version):
            self.reindex(record.id)  # e.g. the index folder was lost: rebuild once, then reuse
            with session_scope(self.engine) as session:
                record = session.get(CollectionRecord, record.id)
        hits = self.keywords.search(record.id, record.index_version, query, k * 10 if filters else k)
        if filters:
            with session_scope(self.engine) as session:
                rows = session.exec(
                    select(ChunkRecord.id, DocumentRecord.meta)
                    .join(DocumentRecord)
                    .where(ChunkRecord.id.in_([i for i, _ in hits]))
                )  # type: ignore[attr-defined]
                meta = {row[0]: row[1] for row in rows}
            hits = [(i, s) for i, s in hits if all(meta.get(i, {}).get(key) == v for key, v in filters.items())]
        return hits[:k]

    def _chunks(self, record: CollectionRecord, ids: list[str], scores: Mapping[str, float]) -> list[RetrievedChunk]:
        if not ids:
            return []
        with session_scope(self.engine) as session:
            rows = session.exec(select(ChunkRecord, DocumentRecord).join(DocumentRecord).where(ChunkRecord.id.in_(ids)))  # type: ignore[attr-defined]
            found = {chunk.id: (chunk, document) for chunk, document in rows}
        out = []
        for chunk_id in ids:  # vectors of replaced or deleted chunks are not in the database: skipped
            if chunk_id in found:
                chunk, document = found[chunk_id]
                out.append(
                    RetrievedChunk(
                        document_id=document.id,
                        chunk_id=chunk.id,
                        text=chunk.text,
                        score=round(scores[chunk_id], 6),
                        source=document.source,
                        span=(chunk.start, chunk.end),
                        metadata={**document.meta, "collection": record.name, "index": chunk.index},
                    )
                )
        return out
