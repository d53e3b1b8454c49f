"""Documents: collections (list, create), a collection's documents (upload with a progress bar,
delete) and a search playground that shows the chunks found, with their scores and sources.

Uploads go to ``/console/documents/{c}/upload`` as multipart/form-data, read by the same code
(``api/documents/uploads.py``) as the API's ``POST /api/collections/{c}/upload`` (same limit,
same refusals); the page's script sends them with XMLHttpRequest so the browser reports upload
progress.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import msgspec
from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from espalier.api.console.render import NavItem, page, read_form
from espalier.api.console.session import console
from espalier.api.documents.uploads import read_uploads
from espalier.core.infrastructure.errors import InvalidInput

NAV = NavItem("Documents", "/console/documents")
MODES = ("hybrid", "vector", "keyword")


class CollectionForm(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    shared: str = ""  # "on": every user key may read it


class SearchForm(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    mode: str = "hybrid"
    k: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5


def _principal(request: Request):  # type: ignore[no-untyped-def]
    return request.scope["principal"]  # type: ignore[typeddict-item]


def _collections(request: Request) -> list[dict]:
    rag = request.app.state.platform.rag
    records = rag.list_collections(_principal(request))
    counts = rag.document_counts([r.id for r in records])
    return [{"record": r, "documents": counts.get(r.id, 0)} for r in records]


@get("/console/documents", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def documents_page(request: Request) -> Template:
    return page(request, "documents.html", active=NAV.path, collections=_collections(request))


@post("/console/documents/collections", opt=console("operator"), include_in_schema=False, status_code=200)
async def create_collection(request: Request) -> Template:
    form = await read_form(request, CollectionForm)
    rag = request.app.state.platform.rag
    await anyio.to_thread.run_sync(
        lambda: rag.create_collection(
            form.name,
            _principal(request),
            description=form.description,
            read_roles=["user"] if form.shared == "on" else [],
        )
    )
    collections = await anyio.to_thread.run_sync(_collections, request)
    return page(request, "_collections.html", active=NAV.path, collections=collections, created=form.name)


@get("/console/documents/{name:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def collection_page(request: Request, name: FromPath[str]) -> Template:
    rag = request.app.state.platform.rag
    record = rag.collection(name, _principal(request))
    return page(
        request,
        "collection.html",
        active=NAV.path,
        collection=record,
        documents=rag.list_documents(name, _principal(request)),
        budget=rag.budget(record.settings),
        modes=MODES,
        max_upload=request.app.state.platform.settings.max_upload_bytes,
    )


@post("/console/documents/{name:str}/upload", opt=console("operator"), include_in_schema=False, status_code=200)
async def upload(request: Request, name: FromPath[str]) -> Template:
    """Needs the X-CSRF-Token header (the page's script sends it): a token in the form would make
    the session check read the body before this handler can stream it."""
    platform = request.app.state.platform
    principal = _principal(request)
    if request.headers.get("x-csrf-token") is None:
        raise InvalidInput("send uploads with the X-CSRF-Token header, as the Documents page does")
    await anyio.to_thread.run_sync(lambda: platform.rag.collection(name, principal, write=True))
    uploads = await read_uploads(request, platform.settings.max_upload_bytes)
    results = await anyio.to_thread.run_sync(lambda: platform.rag.ingest_many(name, principal, uploads))
    documents = await anyio.to_thread.run_sync(lambda: platform.rag.list_documents(name, principal))
    return page(
        request,
        "_documents.html",
        collection=platform.rag.collection_by_name(name),
        documents=documents,
        results=[(r.document.source, r.status) for r in results],
    )


@post(
    "/console/documents/{name:str}/documents/{document_id:str}/delete",
    opt=console("operator"),
    include_in_schema=False,
    status_code=200,
    sync_to_thread=True,
)
def delete_document(request: Request, name: FromPath[str], document_id: FromPath[str]) -> Template:
    rag = request.app.state.platform.rag
    rag.delete_document(name, document_id, _principal(request))
    return page(
        request,
        "_documents.html",
        collection=rag.collection_by_name(name),
        documents=rag.list_documents(name, _principal(request)),
        results=[],
    )


@post("/console/documents/{name:str}/search", opt=console("operator"), include_in_schema=False, status_code=200)
async def search(request: Request, name: FromPath[str]) -> Template:
    form = await read_form(request, SearchForm)
    rag = request.app.state.platform.rag
    chunks = await anyio.to_thread.run_sync(
        lambda: rag.search(name, _principal(request), form.query, k=form.k, mode=form.mode)
    )
    return page(request, "_search_results.html", chunks=chunks, query=form.query, mode=form.mode)


ROUTES = [documents_page, create_collection, collection_page, upload, delete_document, search]
