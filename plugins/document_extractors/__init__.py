"""Built-in plugin: document text from HTML (selectolax) and PDF (pypdf) files, for ingestion.

Core reads plain text and Markdown itself; every other format comes from an extractor, so a
plugin can add one (``register_document_extractors``) or replace these (disable this plugin).
"""

from __future__ import annotations

from espalier import hookimpl
from espalier.plugins.document_extractors.html import HtmlExtractor
from espalier.plugins.document_extractors.pdf import PdfExtractor

__all__ = ["HtmlExtractor", "PdfExtractor"]


@hookimpl(trylast=True)
def register_document_extractors(register) -> None:
    register(HtmlExtractor())
    register(PdfExtractor())
