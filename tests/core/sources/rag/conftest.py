"""A real app with collections (SQLite, embedded chromadb, the shipped MiniLM and SmolLM2 tokenizer),
built once per module: loading the models is the expensive part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from espalier.api.testing import build_harness
from tests.support import SHARED_DATA


@pytest.fixture(scope="module")
def rag_app(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path):
    yield from build_harness(
        tmp_path_factory.mktemp("rag-home"),
        [],
        model_cache_dir=model_cache_dir,
        max_body_bytes=256 * 1024,
        max_upload_bytes=128 * 1024,
    )


def hotpot_rows(limit: int | None = None) -> list[dict]:
    path = SHARED_DATA / "hotpot_dev_sample.jsonl"
    if not path.exists():
        pytest.fail(f"shared data missing: {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def paragraphs(rows: list[dict]) -> dict[str, str]:
    """Every context paragraph of ``rows`` by title (titles repeat across questions: first wins)."""
    out: dict[str, str] = {}
    for row in rows:
        for title, sentences in row["context"]:
            out.setdefault(title, "".join(sentences).strip())
    return out


def text_pdf(text: str) -> bytes:
    """A minimal valid one-page PDF showing ``text`` (Helvetica), built by hand with a correct xref."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="session")
def make_pdf():
    return text_pdf


@pytest.fixture(scope="session")
def hotpot():
    """``(rows, paragraphs_by_title)`` of the shared HotpotQA sample."""
    rows = hotpot_rows()
    return rows, paragraphs(rows)
