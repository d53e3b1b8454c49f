"""Collections and documents over the real API: access rules, ingestion of each format, content
hashes, replacement and deletion (vectors included), search modes, filters and spans, bad input."""

from __future__ import annotations

import base64

import pytest

pytestmark = pytest.mark.slow  # loads MiniLM and the SmolLM2 tokenizer


def create(app, name, role="user", **body):
    response = app.client.post("/api/collections", json={"name": name, **body}, headers=app.headers(role))
    assert response.status_code == 201, response.text
    return response.json()


def upload(app, collection, filename, *, text=None, data=None, role="user", **extra):
    body = {"filename": filename, **extra}
    if text is not None:
        body["text"] = text
    else:
        body["content_base64"] = base64.b64encode(data).decode()
    return app.client.post(f"/api/collections/{collection}/documents", json=body, headers=app.headers(role))


def search(app, collection, query, role="user", **body):
    return app.client.post(
        f"/api/collections/{collection}/search", json={"query": query, **body}, headers=app.headers(role)
    )


def chroma_count(app, collection):
    rag = app.platform.rag
    record = rag.collection_by_name(collection)
    return rag.store.collection(rag.chroma_name(record)).count()


def test_each_format_is_ingested_and_found_with_its_span(rag_app, make_pdf):
    create(rag_app, "formats")
    markdown = "# Owls\n\nThe barn owl hunts mice at night.\n\n# Bees\n\nHoney bees make honey from nectar.\n"
    html = (
        "<html><head><title>x</title><script>var secret=1</script></head>"
        "<body><h1>Rivers</h1><p>The Danube flows through Vienna.</p></body></html>"
    )
    cases = [
        ("owls.md", {"text": markdown}),
        ("rivers.html", {"text": html}),
        ("volcano.txt", {"text": "Mount Etna is an active volcano on Sicily."}),
        ("glacier.pdf", {"data": make_pdf("The Aletsch Glacier is the largest glacier in the Alps.")}),
    ]
    for filename, content in cases:
        response = upload(rag_app, "formats", filename, **content)
        assert response.status_code == 201, (filename, response.text)
        assert response.json()["status"] == "created"
    listed = rag_app.client.get("/api/collections/formats/documents", headers=rag_app.headers("user")).json()[
        "documents"
    ]
    assert {d["source"] for d in listed} == {"owls.md", "rivers.html", "volcano.txt", "glacier.pdf"}
    assert next(d for d in listed if d["source"] == "owls.md")["chunks"] == 2  # split at the headings

    for query, source, expected in [
        ("Which glacier is the largest in the Alps?", "glacier.pdf", "Aletsch"),
        ("What flows through Vienna?", "rivers.html", "Danube"),
        ("what do honey bees make", "owls.md", "nectar"),
    ]:
        for mode in ("vector", "keyword", "hybrid"):
            results = search(rag_app, "formats", query, mode=mode, k=2).json()["results"]
            assert results[0]["source"] == source, (query, mode, results)
            assert expected in results[0]["text"]
    # spans point into the document's extracted text
    top = search(rag_app, "formats", "barn owl mice", mode="keyword", k=1).json()["results"][0]
    start, end = top["span"]
    assert markdown[start:end] == top["text"]
    assert "secret" not in search(rag_app, "formats", "Danube", k=1).json()["results"][0]["text"]  # scripts dropped

    get = rag_app.client.get(
        "/api/collections/formats/search",
        params={"q": "Etna", "k": 1, "mode": "keyword"},
        headers=rag_app.headers("user"),
    )
    assert get.status_code == 200 and get.json()["results"][0]["source"] == "volcano.txt"


def test_same_content_is_a_no_op_changed_content_replaces_and_delete_removes_vectors(rag_app):
    create(rag_app, "versions")
    first = upload(rag_app, "versions", "notes.txt", text="The meeting is on Monday in room four.")
    assert first.status_code == 201
    before = chroma_count(rag_app, "versions")
    again = upload(rag_app, "versions", "notes.txt", text="The meeting is on Monday in room four.")
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    assert again.json()["id"] == first.json()["id"] and chroma_count(rag_app, "versions") == before

    changed = upload(rag_app, "versions", "notes.txt", text="The meeting moved to Friday in room nine.")
    assert changed.json()["status"] == "replaced" and changed.json()["id"] == first.json()["id"]
    assert chroma_count(rag_app, "versions") == before  # old vectors gone, new ones in
    for mode in ("vector", "keyword", "hybrid"):
        texts = [r["text"] for r in search(rag_app, "versions", "when is the meeting", mode=mode).json()["results"]]
        assert texts == ["The meeting moved to Friday in room nine."], mode

    doc_id = first.json()["id"]
    deleted = rag_app.client.delete(f"/api/collections/versions/documents/{doc_id}", headers=rag_app.headers("user"))
    assert deleted.status_code == 200
    assert chroma_count(rag_app, "versions") == 0
    assert search(rag_app, "versions", "meeting", mode="keyword").json()["results"] == []
    missing = rag_app.client.get(f"/api/collections/versions/documents/{doc_id}", headers=rag_app.headers("user"))
    assert missing.status_code == 404


def test_metadata_filters_and_updates(rag_app):
    create(rag_app, "filtered")
    upload(rag_app, "filtered", "a.txt", text="Quarterly revenue grew in Europe.", metadata={"region": "eu"})
    upload(rag_app, "filtered", "b.txt", text="Quarterly revenue grew in Asia.", metadata={"region": "asia"})
    for mode in ("vector", "keyword", "hybrid"):
        results = search(rag_app, "filtered", "quarterly revenue", mode=mode, filters={"region": "asia"}).json()[
            "results"
        ]
        assert [r["source"] for r in results] == ["b.txt"], mode
    doc = next(
        d
        for d in rag_app.client.get("/api/collections/filtered/documents", headers=rag_app.headers("user")).json()[
            "documents"
        ]
        if d["source"] == "a.txt"
    )
    updated = rag_app.client.patch(
        f"/api/collections/filtered/documents/{doc['id']}",
        json={"metadata": {"region": "asia"}},
        headers=rag_app.headers("user"),
    )
    assert updated.status_code == 200 and updated.json()["metadata"] == {"region": "asia"}
    results = search(rag_app, "filtered", "quarterly revenue", mode="vector", filters={"region": "asia"}).json()[
        "results"
    ]
    assert {r["source"] for r in results} == {"a.txt", "b.txt"}


def test_access_rules(rag_app):
    other_user = rag_app.platform.keys.create(name="other-user", role="user").key
    other = {"Authorization": f"Bearer {other_user}"}
    create(rag_app, "private-notes")
    upload(rag_app, "private-notes", "p.txt", text="The vault code is kept here.")
    assert (
        rag_app.client.post("/api/collections/private-notes/search", json={"query": "vault"}, headers=other).status_code
        == 403
    )
    assert rag_app.client.get("/api/collections/private-notes/documents", headers=other).status_code == 403
    assert "private-notes" not in {
        c["name"] for c in rag_app.client.get("/api/collections", headers=other).json()["collections"]
    }
    assert (
        rag_app.client.post(
            "/api/collections/private-notes/documents", json={"filename": "x.txt", "text": "x"}, headers=other
        ).status_code
        == 403
    )
    # sharing with every user lets them read, not write
    shared = rag_app.client.patch(
        "/api/collections/private-notes", json={"read_roles": ["user"]}, headers=rag_app.headers("user")
    )
    assert shared.status_code == 200
    assert (
        rag_app.client.post("/api/collections/private-notes/search", json={"query": "vault"}, headers=other).status_code
        == 200
    )
    assert rag_app.client.delete("/api/collections/private-notes", headers=other).status_code == 403
    # operators manage every collection
    assert (
        rag_app.client.delete("/api/collections/private-notes", headers=rag_app.headers("operator")).status_code == 200
    )
    assert rag_app.client.get("/api/collections/private-notes", headers=rag_app.headers("user")).status_code == 404
    audit = rag_app.client.get("/api/audit", headers=rag_app.headers("admin")).json()
    assert "collection.delete" in str(audit)


def test_bad_input_is_refused_and_nothing_is_stored(rag_app):
    create(rag_app, "strict")
    cases = [
        (upload(rag_app, "strict", "tool.exe", data=b"MZ\x90\x00"), 400, "unsupported"),
        (upload(rag_app, "strict", "broken.pdf", data=b"%PDF-1.4\nthis is not a pdf at all"), 400, "PDF"),
        (upload(rag_app, "strict", "empty.txt", text=""), 400, "empty"),
        (upload(rag_app, "strict", "blank.md", text="   \n\n  "), 400, "no text"),
        (upload(rag_app, "strict", "big.txt", text="word " * 30_000), 413, "limit"),  # over the upload limit
        (upload(rag_app, "strict", "latin1.txt", data="caf\xe9".encode("latin-1")), 400, "UTF-8"),
        (
            rag_app.client.post("/api/collections", json={"name": "a b"}, headers=rag_app.headers("user")),
            400,
            "collection name",
        ),
        (
            rag_app.client.post("/api/collections", json={"name": "strict"}, headers=rag_app.headers("user")),
            409,
            "exists",
        ),
        (
            rag_app.client.post(
                "/api/collections",
                json={"name": "huge", "settings": {"chunk_tokens": 4000, "k": 10}},
                headers=rag_app.headers("user"),
            ),
            400,
            "do not fit",
        ),
        (search(rag_app, "strict", "x", mode="telepathy"), 400, "retriever"),
        (search(rag_app, "strict", "x", k=500), 400, "k must"),
        (search(rag_app, "nowhere", "x"), 404, "no collection"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words.lower() in response.json()["detail"].lower(), response.text
    # a body over the server's limit never reaches the handler
    too_big = rag_app.client.post(
        "/api/collections/strict/documents",
        headers=rag_app.headers("user"),
        json={"filename": "huge.txt", "text": "x" * (300 * 1024)},
    )
    assert too_big.status_code == 413
    assert (
        rag_app.client.get("/api/collections/strict/documents", headers=rag_app.headers("user")).json()["documents"]
        == []
    )
    assert chroma_count(rag_app, "strict") == 0


def test_collection_reports_its_budget(rag_app):
    create(rag_app, "budgeted", settings={"chunk_tokens": 128})
    budget = rag_app.client.get("/api/collections/budgeted", headers=rag_app.headers("user")).json()["budget"]
    assert budget["chunk_tokens"] == 128 and budget["context_window"] == 8192
    assert budget["k"] >= 1


def test_collections_on_sqlite_and_postgresql(database_url, tmp_path, model_cache_dir):
    from espalier.core.infrastructure.identity import Principal
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    platform = Platform(
        Settings(home=tmp_path / "home", database_url=database_url, model_cache_dir=model_cache_dir),
        load_entry_points=False,
    ).start(run_jobs=False)
    try:
        owner = Principal(key_id="owner", name="owner", role="user")
        rag = platform.rag
        rag.create_collection("persisted", owner, settings={"chunk_tokens": 64})
        created = rag.ingest(
            "persisted",
            owner,
            b"# End\n\nThe end of the line is at the harbour.",
            filename="end.md",
            metadata={"kind": "note"},
        )
        assert created.status == "created" and created.document.meta == {"kind": "note"}
        hits = rag.search("persisted", owner, "harbour", mode="hybrid", filters={"kind": "note"})
        assert [h.source for h in hits] == ["end.md"] and hits[0].span == (
            0,
            len("# End\n\nThe end of the line is at the harbour."),
        )
        assert (
            rag.ingest("persisted", owner, b"# End\n\nThe end of the line is at the harbour.", filename="end.md").status
            == "unchanged"
        )
        rag.delete_collection("persisted", owner)
        assert rag.list_collections(owner) == []
    finally:
        platform.close()
