"""Reading multipart/form-data uploads of documents: ``POST /api/collections/{c}/upload`` and the
console's Documents page share this reader, so both refuse the same things with the same errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from litestar import Request

from espalier.core.infrastructure.errors import InvalidInput, PayloadTooLarge
from espalier.core.sources.rag.service import Upload

#: room for multipart boundaries and part headers on top of the documents themselves
MULTIPART_OVERHEAD = 64 * 1024
MAX_FILES = 100

#: what a browser or client declares for a file without a known extension
CONTENT_TYPES = {"text/plain": "text", "text/markdown": "markdown", "text/html": "html", "application/pdf": "pdf"}


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """The documents of a multipart upload, each at most ``limit`` bytes (the whole request at
    most ``limit`` plus room for the multipart framing); one bad file refuses them all."""
    files, fields = await read_multipart(request, limit + MULTIPART_OVERHEAD)
    for filename, _type, data in files:
        if len(data) > limit:
            raise PayloadTooLarge(
                f"'{filename}' has {len(data)} bytes; the limit is {limit} (ESPALIER_MAX_UPLOAD_BYTES)"
            )
    return uploads_from(files, fields)


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
