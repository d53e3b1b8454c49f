"""Collections and their documents: create, list, ingest, update, delete, search.

A user key may create collections (it owns them) and read those it owns or whose ``read_roles``
admit it; operators manage every collection. Documents arrive as JSON: ``text`` for plain text,
Markdown or HTML, or ``content_base64`` for any supported file (PDF included), or as files in a
``multipart/form-data`` upload (``POST /api/collections/{c}/upload``, one or several ``file`` parts).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody

from espalier.api.guards import CurrentPrincipal, access
from espalier.core.infrastructure.errors import InvalidInput, PayloadTooLarge
from espalier.core.sources.rag.service import Upload

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
    k: int = 5
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


#: room for multipart boundaries and part headers on top of the documents themselves
MULTIPART_OVERHEAD = 64 * 1024
MAX_FILES = 100


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused with 413 once it passes ``limit``: before reading anything when
    Content-Length announces more, else as soon as the streamed bytes do (nothing is kept)."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise PayloadTooLarge(
            f"the upload has {int(announced)} bytes; the limit is {limit} "
            "(ESPALIER_MAX_UPLOAD_BYTES for all files of one request together)"
        )
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(
                f"the upload passed {limit} bytes (ESPALIER_MAX_UPLOAD_BYTES for all files of one request together)"
            )
        yield chunk


async def read_multipart(request: Request, limit: int) -> tuple[list[tuple[str, str, bytes]], dict[str, Any]]:
    """``([(filename, content_type, data)], fields)`` of a multipart upload. Files are spooled by
    litestar's parser (to disk past 1 MiB), each read once, then closed."""
    # litestar's own streaming parser (what ``request.form()`` uses), fed through our cap so the
    # upload limit can differ from the request limit of the rest of the API
    from litestar._multipart import parse_multipart_form
    from litestar.datastructures import UploadFile
    from litestar.exceptions import ClientException

    content_type, options = request.content_type
    if content_type != "multipart/form-data" or "boundary" not in options:
        raise InvalidInput(
            "send the files as multipart/form-data with one 'file' part per document", code="unsupported_content_type"
        )
    try:
        form = await parse_multipart_form(
            _capped(request, limit), options["boundary"].encode(), multipart_form_part_limit=MAX_FILES + 10
        )
    except ClientException as exc:
        raise InvalidInput(
            f"malformed multipart/form-data body ({exc.detail}); let your HTTP client build it"
        ) from None
    files: list[tuple[str, str, bytes]] = []
    fields: dict[str, Any] = {}
    try:
        for name, value in form.items():
            values = value if isinstance(value, list) else [value]
            if name == "file":
                for item in values:
                    if not isinstance(item, UploadFile):
                        raise InvalidInput("'file' parts must be files (with a filename)")
                    files.append((item.filename, item.content_type, await item.read()))
            elif name in ("metadata", "format"):
                if len(values) != 1 or not isinstance(values[0], str):
                    raise InvalidInput(f"send '{name}' once, as a text field")
                fields[name] = values[0]
            else:
                raise InvalidInput(
                    f"unknown form field '{name}'; send 'file' parts, and optionally 'metadata' and 'format'"
                )
    finally:
        for value in form.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, UploadFile):
                    await item.close()
    if not files:
        raise InvalidInput("no 'file' part in the upload", code="no_files")
    if len(files) > MAX_FILES:
        raise InvalidInput(f"at most {MAX_FILES} files per upload")
    return files, fields


#: what a browser or client declares for a file without a known extension
CONTENT_TYPES = {"text/plain": "text", "text/markdown": "markdown", "text/html": "html", "application/pdf": "pdf"}


def uploads_from(files: list[tuple[str, str, bytes]], fields: dict[str, Any]) -> list[Upload]:
    metadata = None
    if "metadata" in fields:
        try:
            metadata = json.loads(fields["metadata"])
        except json.JSONDecodeError:
            raise InvalidInput("'metadata' must be a JSON object") from None
        if not isinstance(metadata, dict):
            raise InvalidInput("'metadata' must be a JSON object")
    out = []
    for filename, content_type, data in files:
        # the part's filename is the document's source: a bare name from a browser, a path under
        # the folder from `espalier ingest`
        if not 1 <= len(filename) <= 1000:
            raise InvalidInput("each file needs a name of 1-1000 characters")
        base = filename.replace("\\", "/").rsplit("/", 1)[-1]
        declared = fields.get("format")
        if declared is None and "." not in base:
            declared = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
        out.append(Upload(data, base or filename, filename, metadata, declared))
    return out


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
    def get_collection(self, request: Request, name: str, principal: CurrentPrincipal) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        record = rag.collection(name, principal)
        budget = rag.budget(record.settings)
        return {**collection_out(record), "budget": asdict(budget)}

    @patch("/{name:str}", sync_to_thread=True, summary="Change access, description or settings")
    def update_collection(
        self, request: Request, name: str, data: JSONBody[CollectionUpdate], principal: CurrentPrincipal
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
    def delete_collection(self, request: Request, name: str, principal: CurrentPrincipal) -> dict[str, str]:
        request.app.state.platform.rag.delete_collection(name, principal)
        return {"deleted": name}

    @get("/{name:str}/documents", sync_to_thread=True, summary="Documents of a collection")
    def list_documents(self, request: Request, name: str, principal: CurrentPrincipal) -> dict[str, Any]:
        rag = request.app.state.platform.rag
        return {"documents": [document_out(d) for d in rag.list_documents(name, principal)]}

    @post("/{name:str}/documents", sync_to_thread=True, summary="Ingest a document (same content again is a no-op)")
    def ingest(self, request: Request, name: str, data: JSONBody[DocumentUpload], principal: CurrentPrincipal) -> Any:
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
        request_max_body_size=None,
        summary="Upload files (multipart/form-data, one or several 'file' parts)",
    )
    async def upload(self, request: Request, name: str, principal: CurrentPrincipal) -> Any:
        """Each file is one document (its name is its source). The whole request is limited to
        ESPALIER_MAX_UPLOAD_BYTES (413, refused from Content-Length before reading); one bad file
        refuses the batch and nothing is stored."""
        from litestar import Response

        platform = request.app.state.platform
        await anyio.to_thread.run_sync(
            lambda: platform.rag.collection(name, principal, write=True)
        )  # 403/404 before reading
        files, fields = await read_multipart(request, platform.settings.max_upload_bytes + MULTIPART_OVERHEAD)
        for filename, _type, data in files:
            if len(data) > platform.settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"'{filename}' has {len(data)} bytes; the limit is {platform.settings.max_upload_bytes} (ESPALIER_MAX_UPLOAD_BYTES)"
                )
        uploads = uploads_from(files, fields)
        results = await anyio.to_thread.run_sync(lambda: platform.rag.ingest_many(name, principal, uploads))
        body = {"documents": [{**document_out(r.document), "status": r.status} for r in results]}
        status = 201 if any(r.status == "created" for r in results) else 200
        return Response(body, status_code=status)

    @post("/{name:str}/urls", sync_to_thread=True, summary="Fetch web pages (text/html, text/plain) and ingest them")
    def ingest_urls(self, request: Request, name: str, data: JSONBody[UrlIngest], principal: CurrentPrincipal) -> Any:
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
        self, request: Request, name: str, document_id: str, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        _record, document = request.app.state.platform.rag.document(name, document_id, principal)
        return document_out(document)

    @patch("/{name:str}/documents/{document_id:str}", sync_to_thread=True, summary="Replace a document's metadata")
    def update_document(
        self, request: Request, name: str, document_id: str, data: JSONBody[DocumentUpdate], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        return document_out(request.app.state.platform.rag.update_document(name, document_id, principal, data.metadata))

    @delete(
        "/{name:str}/documents/{document_id:str}",
        status_code=200,
        sync_to_thread=True,
        summary="Delete a document and its vectors",
    )
    def delete_document(
        self, request: Request, name: str, document_id: str, principal: CurrentPrincipal
    ) -> dict[str, str]:
        request.app.state.platform.rag.delete_document(name, document_id, principal)
        return {"deleted": document_id}

    @post("/{name:str}/search", status_code=200, summary="Search a collection (vector, keyword or hybrid)")
    async def search(
        self, request: Request, name: str, data: JSONBody[SearchRequest], principal: CurrentPrincipal
    ) -> dict[str, Any]:
        return await _search(request, name, principal, data.query, data.k, data.mode, data.filters)

    @get("/{name:str}/search", summary="Search a collection: ?q=...&k=5&mode=hybrid")
    async def search_get(
        self, request: Request, name: str, principal: CurrentPrincipal, q: str, k: int = 5, mode: str = "hybrid"
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
