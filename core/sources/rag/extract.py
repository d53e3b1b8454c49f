"""File bytes to plain text: text, Markdown, HTML, PDF. Everything else is refused by name."""

from __future__ import annotations

import io
from pathlib import PurePath

from espalier.core.infrastructure.errors import InvalidInput

MEDIA_TYPES = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
SUPPORTED = ", ".join(sorted(MEDIA_TYPES))


def media_type_for(filename: str, declared: str | None = None) -> str:
    if declared:
        if declared not in set(MEDIA_TYPES.values()):
            raise InvalidInput(
                f"format '{declared}' is not supported: use text, markdown, html or pdf", code="unsupported_type"
            )
        return declared
    suffix = PurePath(filename).suffix.lower()
    if suffix not in MEDIA_TYPES:
        raise InvalidInput(
            f"'{filename}' has an unsupported type ({suffix or 'no extension'}); supported: {SUPPORTED}",
            code="unsupported_type",
        )
    return MEDIA_TYPES[suffix]


def extract_text(data: bytes, media_type: str, filename: str = "document") -> str:
    """The document's text. Raises InvalidInput for corrupt or empty files (nothing is stored then)."""
    if not data:
        raise InvalidInput(f"'{filename}' is empty", code="empty_document")
    if media_type == "pdf":
        text = _pdf_text(data, filename)
    else:
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"'{filename}' is not UTF-8 text; convert it or upload a PDF", code="invalid_encoding"
            ) from None
        text = _html_text(raw) if media_type == "html" else raw
    text = text.replace("\r\n", "\n").replace("\x00", "")
    if not text.strip():
        raise InvalidInput(f"'{filename}' contains no text", code="empty_document")
    return text


def _pdf_text(data: bytes, filename: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput(f"'{filename}' is an encrypted PDF; upload it without a password", code="invalid_pdf")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidInput:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidInput(
            f"'{filename}' is not a readable PDF ({exc.__class__.__name__}); check the file", code="invalid_pdf"
        ) from None
    # pages become paragraphs, so chunking keeps them apart where it can
    return "\n\n".join(page.strip() for page in pages)


def _html_text(raw: str) -> str:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(raw)
    for node in tree.css("script, style, noscript, template, head"):
        node.decompose()
    body = tree.body or tree.root
    if body is None:
        return ""
    # block elements end paragraphs, so the chunker can split on structure
    for node in body.css("p, div, section, article, li, tr, br, h1, h2, h3, h4, h5, h6, pre, blockquote"):
        node.insert_after("\n\n")
    text = body.text(separator="", strip=False)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out, blank = [], False
    for line in lines:
        if line:
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    return "\n".join(out).strip()
