"""File bytes to plain text. Core reads plain text and Markdown itself; other formats (the
built-ins: HTML and PDF) come from document extractors that plugins register
(``register_document_extractors``). A format nothing reads is refused by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath

from espalier.core.infrastructure.contracts import DocumentExtractor
from espalier.core.infrastructure.errors import InvalidInput

#: the formats core reads itself (UTF-8 text), by file name ending
TEXT_MEDIA_TYPES: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
}


def decode_text(data: bytes, filename: str) -> str:
    """UTF-8 text, or InvalidInput saying what to do (extractors of text formats use it too)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"'{filename}' is not UTF-8 text; convert it or upload a PDF", code="invalid_encoding"
        ) from None


def suffixes_of(extractor: DocumentExtractor) -> dict[str, str]:
    """The file name endings an extractor reads: its ``suffixes``, else ``.<type>`` per media type."""
    declared: Mapping[str, str] | None = getattr(extractor, "suffixes", None)
    if declared is None:
        return {f".{kind}": kind for kind in extractor.media_types}
    return {suffix.lower(): kind for suffix, kind in declared.items() if kind in extractor.media_types}


class DocumentTypes:
    """The formats ingestion accepts: core's own and those of the registered extractors (the first
    extractor registered for a media type reads it)."""

    def __init__(self, extractors: Iterable[DocumentExtractor] = ()):
        self.media_types: dict[str, str] = dict(TEXT_MEDIA_TYPES)  # file name ending -> media type
        self._kinds = list(dict.fromkeys(TEXT_MEDIA_TYPES.values()))
        self._extractors: dict[str, DocumentExtractor] = {}
        for extractor in extractors:
            for kind in extractor.media_types:
                if kind not in self._kinds:
                    self._kinds.append(kind)
                    self._extractors[kind] = extractor
            for suffix, kind in suffixes_of(extractor).items():
                if self._extractors.get(kind) is extractor:
                    self.media_types.setdefault(suffix, kind)

    @property
    def kinds(self) -> list[str]:
        """The media types, core's first, then the extractors' in the order they were registered."""
        return list(self._kinds)

    @property
    def supported(self) -> str:
        return ", ".join(sorted(self.media_types))

    def media_type_for(self, filename: str, declared: str | None = None) -> str:
        if declared:
            if declared not in self._kinds:
                raise self._unsupported(declared)
            return declared
        suffix = PurePath(filename).suffix.lower()
        if suffix not in self.media_types:
            raise InvalidInput(
                f"'{filename}' has an unsupported type ({suffix or 'no extension'}); supported: {self.supported}",
                code="unsupported_type",
            )
        return self.media_types[suffix]

    def _unsupported(self, media_type: str) -> InvalidInput:
        named = " or ".join([", ".join(self._kinds[:-1]), self._kinds[-1]])
        return InvalidInput(f"format '{media_type}' is not supported: use {named}", code="unsupported_type")

    def extract(self, data: bytes, media_type: str, filename: str = "document") -> str:
        """The document's text. Raises InvalidInput for corrupt or empty files (nothing is stored then)."""
        if not data:
            raise InvalidInput(f"'{filename}' is empty", code="empty_document")
        if media_type in self._extractors:
            text = self._extractors[media_type].extract(data, filename)
        elif media_type in TEXT_MEDIA_TYPES.values():
            text = decode_text(data, filename)
        else:
            raise self._unsupported(media_type)
        text = text.replace("\r\n", "\n").replace("\x00", "")
        if not text.strip():
            raise InvalidInput(f"'{filename}' contains no text", code="empty_document")
        return text
