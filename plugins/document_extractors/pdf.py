"""PDF files to text with pypdf: one paragraph per page. Encrypted or unreadable files are
refused with a message saying what to do (nothing is stored then)."""

from __future__ import annotations

import io

from espalier import InvalidInput


class PdfExtractor:
    name = "pdf"
    media_types = ("pdf",)
    suffixes = {".pdf": "pdf"}

    def extract(self, data: bytes, filename: str) -> str:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise InvalidInput(
                    f"'{filename}' is an encrypted PDF; upload it without a password", code="invalid_pdf"
                )
            pages = [page.extract_text() or "" for page in reader.pages]
        except InvalidInput:
            raise
        except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
            raise InvalidInput(
                f"'{filename}' is not a readable PDF ({exc.__class__.__name__}); check the file", code="invalid_pdf"
            ) from None
        # pages become paragraphs, so chunking keeps them apart where it can
        return "\n\n".join(page.strip() for page in pages)
