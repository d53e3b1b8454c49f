"""Collections and their documents: create, list, ingest, update, delete, search.

A user key may create collections (it owns them) and read those it owns or whose ``read_roles``
admit it; operators manage every collection. Documents arrive as JSON: ``text`` for plain text,
Markdown or HTML, or ``content_base64`` for any supported file (PDF included), or as files in a
``multipart/form-data`` upload (``POST /api/collections/{c}/upload``, one or several ``file`` parts).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from espalier.api.documents.uploads import read_uploads
from espalier.api.guards import CurrentPrincipal, accepts, access
from espalier.api.schema_types import INT64_MAX, INT64_MIN, Count
from espalier.core.infrastructure.errors import InvalidInput, PayloadTooLarge

Name = Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
Scalar = str | int | float | bool


class CollectionCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    read_roles: list[str] = []
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    settings: dict[str, Any] = {}


class CollectionUpdate(msgspec.Struct, forbid_unknown_fields=True):
    read_roles: list[str] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    settings: dict[str, Any] | None = None


class DocumentUpload(msgspec.Struct, forbid_unknown_fields=True):
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    text: str | None = None
    content_base64: str | None = None
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None
    format: str | None = None
    metadata: dict[str, Scalar] | None = None


class UrlIngest(msgspec.Struct, forbid_unknown_fields=True):
    urls: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]], msgspec.Meta(min_length=1, max_length=20)
    ]
    metadata: dict[str, Scalar] | None = None


class DocumentUpdate(msgspec.Struct, forbid_unknown_fields=True):
    metadata: dict[str, Scalar]


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    k: Count = 5
    mode: str = "hybrid"
    filters: dict[str, Scalar] | None = None


def collection_out(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "owner_key_id": record.owner_key_id,
        "read_roles": record.read_roles,
        "description": record.description,
        "settings": record.settings,
        "created_at": record.created_at,
    }


def document_out(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "source": record.source,
        "content_hash": record.content_hash,
        "format": record.media_type,
        "metadata": record.meta,
        "chunks": record.chunk_count,
        "characters": record.characters,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def chunk_out(chunk: Any) -> dict[str, Any]:
    out = asdict(chunk)
    out["span"] = list(chunk.span) if chunk.span else None
    return out


def upload_bytes(data: DocumentUpload, limit: int) -> bytes:
    if (data.text is None) == (data.content_base64 is None):
        raise InvalidInput("send exactly one of 'text' and 'content_base64'")
    if data.text is not None:
        raw = data.text.encode("utf-8")
    else:
        try:
            raw = base64.b64decode(data.content_base64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("content_base64 is not valid base64") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"the document has {len(raw)} bytes; the limit is {limit} (ESPALIER_MAX_UPLOAD_BYTES)")
    return raw


class CollectionsController(Controller):
    path = "/api/collections"
    tags = ["collections"]
    opt = access("user")

    @get(sync_to_thread=True, summary="Collections this key may read")
    def list_collections(self, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        return {"collections": [collection_out(r) for r in rag.list_collections(principal)]}

    @post(sync_to_thread=True, summary="Create a collection (the calling key owns it)")
    def create_collection(
        self, request: Request, data: JSONBody[CollectionCreate], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        record = rag.create_collection(
            data.name, principal, read_roles=data.read_roles, description=data.description, settings=data.settings
        )
        return collection_out(record)

    @get("/{name:str}", sync_to_thread=True, summary="One collection, with its computed chunk budget")
    def get_collection(self, request: Request, name: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        record = rag.collection(name, principal)
        budget = rag.budget(record.settings)
        return {**collection_out(record), "budget": asdict(budget)}

    @patch("/{name:str}", sync_to_thread=True, summary="Change access, description or settings")
    def update_collection(
        self, request: Request, name: FromPath[str], data: JSONBody[CollectionUpdate], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        return collection_out(
            rag.update_collection(
                name, principal, read_roles=data.read_roles, description=data.description, settings=data.settings
            )
        )

    @delete(
        "/{name:str}", status_code=200, sync_to_thread=True, summary="Delete a collection, its documents and vectors"
    )
    def delete_collection(self, request: Request, name: FromPath[str], principal: CurrentPrincipal) -> dict[str, str]:
        request.app.state.platform.rag.delete_collection(name, principal)
        return {"deleted": name}

    @get("/{name:str}/documents", sync_to_thread=True, summary="Documents of a collection")
    def list_documents(self, request: Request, name: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        return {"documents": [document_out(d) for d in rag.list_documents(name, principal)]}

    @post("/{name:str}/documents", sync_to_thread=True, summary="Ingest a document (same content again is a no-op)")
    def ingest(
        self, request: Request, name: FromPath[str], data: JSONBody[DocumentUpload], principal: CurrentPrincipal
    ) -> Any:
        from litestar import Response

        platform = request.app.state.platform
        raw = upload_bytes(data, platform.settings.max_upload_bytes)
        result = platform.rag.ingest(
            name,
            principal,
            raw,
            filename=data.filename,
            source=data.source,
            metadata=data.metadata,
            media_type=data.format,
        )
        status = 201 if result.status == "created" else 200
        return Response({**document_out(result.document), "status": result.status}, status_code=status)

    @post(
        "/{name:str}/upload",
        opt=accepts("multipart/form-data"),
        request_max_body_size=None,
        summary="Upload files (multipart/form-data, one or several 'file' parts)",
    )
    async def upload(self, request: Request, name: FromPath[str], principal: CurrentPrincipal) -> Any:
        """Each file is one document (its name is its source). The whole request is limited to
        ESPALIER_MAX_UPLOAD_BYTES (413, refused from Content-Length before reading); one bad file
        refuses the batch and nothing is stored."""
        from litestar import Response

        platform = request.app.state.platform
        await anyio.to_thread.run_sync(
            lambda: platform.rag.collection(name, principal, write=True)
        )  # 403/404 before reading
        uploads = await read_uploads(request, platform.settings.max_upload_bytes)
        results = await anyio.to_thread.run_sync(lambda: platform.rag.ingest_many(name, principal, uploads))
        body = {"documents": [{**document_out(r.document), "status": r.status} for r in results]}
        status = 201 if any(r.status == "created" for r in results) else 200
        return Response(body, status_code=status)

    @post("/{name:str}/urls", sync_to_thread=True, summary="Fetch web pages (text/html, text/plain) and ingest them")
    def ingest_urls(
        self, request: Request, name: FromPath[str], data: JSONBody[UrlIngest], principal: CurrentPrincipal
    ) -> Any:
        """Private, loopback and link-local addresses are refused unless ESPALIER_WEB_ALLOW_HOSTS
        allows them; every redirect is checked again. All pages are fetched before any is stored."""
        from litestar import Response

        from espalier.core.sources.rag.web import WebPolicy

        platform = request.app.state.platform
        results = platform.rag.ingest_urls(
            name, principal, data.urls, WebPolicy.from_settings(platform.settings), metadata=data.metadata
        )
        body = {"documents": [{**document_out(r.document), "status": r.status} for r in results]}
        return Response(body, status_code=201 if any(r.status == "created" for r in results) else 200)

    @get("/{name:str}/documents/{document_id:str}", sync_to_thread=True, summary="One document")
    def get_document(
        self, request: Request, name: FromPath[str], document_id: FromPath[str], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        _record, document = request.app.state.platform.rag.document(name, document_id, principal)
        return document_out(document)

    @patch("/{name:str}/documents/{document_id:str}", sync_to_thread=True, summary="Replace a document's metadata")
    def update_document(
        self,
        request: Request,
        name: FromPath[str],
        document_id: FromPath[str],
        data: JSONBody[DocumentUpdate],
        principal: CurrentPrincipal,
    ) -> dict[str, Any]:
        return document_out(request.app.state.platform.rag.update_document(name, document_id, principal, data.metadata))

    @delete(
        "/{name:str}/documents/{document_id:str}",
        status_code=200,
        sync_to_thread=True,
        summary="Delete a document and its vectors",
    )
    def delete_document(
        self, request: Request, name: FromPath[str], document_id: FromPath[str], principal: CurrentPrincipal
    ) -> dict[str, str]:
        request.app.state.platform.rag.delete_document(name, document_id, principal)
        return {"deleted": document_id}

    @post("/{name:str}/search", status_code=200, summary="Search a collection (vector, keyword or hybrid)")
    async def search(
        self, request: Request, name: FromPath[str], data: JSONBody[SearchRequest], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        return await _search(request, name, principal, data.query, data.k, data.mode, data.filters)

    @get("/{name:str}/search", summary="Search a collection: ?q=...&k=5&mode=hybrid")
    async def search_get(
        self,
        request: Request,
        name: FromPath[str],
        principal: CurrentPrincipal,
        q: FromQuery[str],
        k: Annotated[int, Parameter(ge=INT64_MIN, le=INT64_MAX)] = 5,
        mode: FromQuery[str] = "hybrid",
    ) -> dict[str, Any]:
        return await _search(request, name, principal, q, k, mode, None)


async def _search(
    request: Request, name: str, principal: Any, query: str, k: int, mode: str, filters: dict[str, Any] | None
) -> dict[str, Any]:
    platform = request.app.state.platform

    def run() -> list[Any]:
        platform.rag.collection(name, principal)  # 403 before any search
        if mode not in platform.retrievers:
            raise InvalidInput(f"no retriever '{mode}' (available: {', '.join(platform.retrievers.names())})")
        return platform.retrievers.get(mode).search(query, collection=name, k=k, filters=filters)

    chunks = await anyio.to_thread.run_sync(run)
    return {"collection": name, "mode": mode, "results": [chunk_out(c) for c in chunks]}


ROUTES = [CollectionsController]
