"""Multipart uploads over the real API: several files in one request, the limit refused before the
body is read (a real server on loopback for the 100 MB case), bad files, nothing half-written."""

from __future__ import annotations

import json
import socket
import time

import pytest

from espalier.api.testing import RunningServer

pytestmark = pytest.mark.slow  # loads MiniLM and the SmolLM2 tokenizer


def create(app, name, role="user"):
    response = app.client.post("/api/collections", json={"name": name}, headers=app.headers(role))
    assert response.status_code == 201, response.text
    return response.json()


def send(app, collection, files, role="user", **data):
    return app.client.post(f"/api/collections/{collection}/upload", files=files, data=data, headers=app.headers(role))


def sources(app, collection):
    listed = app.client.get(f"/api/collections/{collection}/documents", headers=app.headers("user")).json()["documents"]
    return {d["source"]: d for d in listed}


def test_several_files_in_one_upload_are_ingested_and_searchable(rag_app, make_pdf):
    create(rag_app, "uploads")
    files = [
        ("file", ("lakes.md", b"# Lakes\n\nLake Baikal is the deepest lake on Earth.\n", "text/markdown")),
        ("file", ("deserts.html", b"<html><body><p>The Atacama is the driest desert.</p></body></html>", "text/html")),
        ("file", ("caves.pdf", make_pdf("Mammoth Cave is the longest known cave system."), "application/pdf")),
        ("file", ("notes", b"Plain text sent without an extension: its declared type counts.", "text/plain")),
    ]
    response = send(rag_app, "uploads", files, metadata=json.dumps({"batch": "one"}))
    assert response.status_code == 201, response.text
    documents = response.json()["documents"]
    assert [d["source"] for d in documents] == ["lakes.md", "deserts.html", "caves.pdf", "notes"]
    assert {d["status"] for d in documents} == {"created"} and all(d["metadata"] == {"batch": "one"} for d in documents)
    assert {d["format"] for d in documents} == {"markdown", "html", "pdf", "text"}
    for query, source in [
        ("deepest lake", "lakes.md"),
        ("driest desert", "deserts.html"),
        ("longest cave system", "caves.pdf"),
    ]:
        top = rag_app.client.post(
            "/api/collections/uploads/search", json={"query": query, "k": 1}, headers=rag_app.headers("user")
        ).json()["results"][0]
        assert top["source"] == source, (query, top)
    again = send(rag_app, "uploads", files[:1])
    assert again.status_code == 200 and again.json()["documents"][0]["status"] == "unchanged"


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([("file", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))], 400, "unsupported_type"),
        ([("file", ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf"))], 400, "invalid_pdf"),
        ([("file", ("empty.txt", b"", "text/plain"))], 400, "empty_document"),
        ([("file", ("blank.md", b"  \n\n  ", "text/markdown"))], 400, "empty_document"),
        # one good file and one bad: the whole upload is refused
        (
            [
                ("file", ("good.txt", b"Perfectly fine text.", "text/plain")),
                ("file", ("bad.pdf", b"%PDF-garbage", "application/pdf")),
            ],
            400,
            "invalid_pdf",
        ),
    ],
)
def test_bad_files_are_refused_and_nothing_is_stored(rag_app, files, status, code):
    if "strict-uploads" not in {
        c["name"] for c in rag_app.client.get("/api/collections", headers=rag_app.headers("user")).json()["collections"]
    }:
        create(rag_app, "strict-uploads")
    response = send(rag_app, "strict-uploads", files)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.json()
    assert sources(rag_app, "strict-uploads") == {}
    rag = rag_app.platform.rag
    assert rag.store.collection(rag.chroma_name(rag.collection_by_name("strict-uploads"))).count() == 0


def test_malformed_requests_and_access(rag_app):
    create(rag_app, "upload-rules")
    no_files = send(rag_app, "upload-rules", None, metadata="{}")  # a plain form, not multipart
    assert no_files.status_code == 415 and "multipart/form-data" in no_files.json()["detail"]
    json_body = rag_app.client.post(
        "/api/collections/upload-rules/upload", json={"filename": "a.txt"}, headers=rag_app.headers("user")
    )
    assert json_body.status_code == 415 and "multipart/form-data" in json_body.json()["detail"]
    bad_meta = send(rag_app, "upload-rules", [("file", ("a.txt", b"text", "text/plain"))], metadata="[1]")
    assert bad_meta.status_code == 400 and "metadata" in bad_meta.json()["detail"]
    other = {"Authorization": f"Bearer {rag_app.platform.keys.create(name='upload-other', role='user').key}"}
    denied = rag_app.client.post(
        "/api/collections/upload-rules/upload", files=[("file", ("a.txt", b"text", "text/plain"))], headers=other
    )
    assert denied.status_code == 403
    assert (
        rag_app.client.post(
            "/api/collections/upload-rules/upload", files=[("file", ("a.txt", b"x", "text/plain"))]
        ).status_code
        == 401
    )

    # over the limit (128 KiB in this app) while streaming, with no Content-Length announced
    def chunks():
        yield (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n"
        )
        for _ in range(64):
            yield b"word " * 1000

    big = rag_app.client.post(
        "/api/collections/upload-rules/upload",
        content=chunks(),
        headers={**rag_app.headers("user"), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert big.status_code == 413, big.text
    assert "ESPALIER_MAX_UPLOAD_BYTES" in big.json()["detail"]
    assert sources(rag_app, "upload-rules") == {}


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache_dir):
    running = RunningServer(
        tmp_path_factory.mktemp("upload-home"),
        env={"ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir), "ESPALIER_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024)},
    )
    yield running
    running.stop()


def test_the_cli_uploads_batches_and_names_a_bad_file(server, tmp_path):
    from espalier.api.cli.ingest import batches, files_under, ingest_via_server

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Alpha document about comets.")
    (folder / "sub" / "b.md").write_text("# Beta\n\nA document about asteroids.")
    (folder / "broken.pdf").write_bytes(b"%PDF-not really")
    files = files_under(folder)
    assert [len(part) for part in batches(files, max_files=2)] == [2, 1]
    assert [len(part) for part in batches(files, max_bytes=40)] == [1, 1, 1]
    key = server.create_key("user")
    results = {
        str(f.relative_to(folder)): status
        for f, status in ingest_via_server(server.base, key, "cli-batches", folder, files)
    }
    assert results["a.txt"] == "created" and results["sub/b.md"] == "created"
    assert results["broken.pdf"].startswith("failed:") and "PDF" in results["broken.pdf"]
    import httpx

    listed = httpx.get(
        server.base + "/api/collections/cli-batches/documents", headers=server.headers(key), timeout=30
    ).json()
    assert {d["source"] for d in listed["documents"]} == {"a.txt", "sub/b.md"}  # sources keep the folder path
    again = dict(ingest_via_server(server.base, key, "cli-batches", folder, [f for f in files if f.suffix != ".pdf"]))
    assert set(again.values()) == {"unchanged"}


def test_a_100_mb_upload_is_refused_before_the_body_is_sent(server):
    import httpx

    key = server.create_key("user")
    created = httpx.post(
        server.base + "/api/collections", json={"name": "big"}, headers=server.headers(key), timeout=180
    )
    assert created.status_code == 201, created.text
    size = 100 * 1024 * 1024
    head = (
        f"POST /api/collections/big/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"--b\r\n" + b"x" * 65536)  # 64 KiB of the announced 100 MB
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "limit" in body["detail"] and str(size) in body["detail"]
    assert time.monotonic() - started < 10  # answered without waiting for 100 MB that never came
    listed = httpx.get(server.base + "/api/collections/big/documents", headers=server.headers(key), timeout=30).json()
    assert listed["documents"] == []
