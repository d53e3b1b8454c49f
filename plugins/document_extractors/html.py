"""HTML pages to text with selectolax (lexbor): scripts, styles and the head dropped, block
elements ending paragraphs so the chunker can split on structure."""

from __future__ import annotations

from espalier.core.sources.rag.extract import decode_text


class HtmlExtractor:
    name = "html"
    media_types = ("html",)
    suffixes = {".html": "html", ".htm": "html"}

    def extract(self, data: bytes, filename: str) -> str:
        return html_text(decode_text(data, filename))


def html_text(raw: str) -> str:
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
