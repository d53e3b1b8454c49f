"""Web pages as documents: SSRF checks on every hop (loopback, link-local metadata address,
IPv4-mapped IPv6, redirects), the allow-list, caps on type and size, and a real page served on
loopback ingested and then found by search."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from espalier.core.sources.rag.web import UrlRefused, WebPolicy, check_url

PAGE = b"""<html><head><title>Tides</title><script>alert(1)</script></head><body>
<h1>Tides</h1><p>Spring tides happen when the Sun and Moon line up, at new and full moon.</p>
<p>Neap tides happen at the quarter moons.</p></body></html>"""


class Site(BaseHTTPRequestHandler):
    redirect_to = ""

    def do_GET(self):  # noqa: N802
        routes = {
            "/tides.html": (200, "text/html; charset=utf-8", PAGE),
            "/notes.txt": (200, "text/plain", b"Plain notes about glaciers calving into fjords."),
            "/image.png": (200, "image/png", b"\x89PNG\r\n\x1a\n"),
            "/big.html": (200, "text/html", b"<p>" + b"word " * 20_000 + b"</p>"),
        }
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        status, media, body = routes.get(self.path, (404, "text/plain", b"missing"))
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    """One server on 127.0.0.2 (allow-listed in the tests that need it), one on 127.0.0.1 (never)."""
    servers = [ThreadingHTTPServer((host, 0), Site) for host in ("127.0.0.2", "127.0.0.1")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    allowed, other = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers)
    yield allowed, other
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://127.0.0.1:8000/api/keys",
        "http://localhost/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible
        "http://[::a9fe:a9fe]/",  # IPv4-compatible 169.254.169.254, written in hex
        "http://[64:ff9b::7f00:1]/",  # NAT64 well-known prefix, 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64, 10.0.0.1
        "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64 local-use prefix, 169.254.169.254
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[2002:c0a8:1::1]/",  # 6to4 of 192.168.0.1
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",  # Teredo, client 10.0.0.1
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://[fe80::1]/",
        "http://240.0.0.1/",
    ],
)
def test_private_and_special_addresses_are_refused(url):
    with pytest.raises(UrlRefused, match="ESPALIER_WEB_ALLOW_HOSTS"):
        check_url(url, WebPolicy())


def test_schemes_credentials_dns_and_the_allow_list():
    for url in ("file:///etc/passwd", "ftp://example.com/x", "gopher://x/"):
        with pytest.raises(UrlRefused, match="only http and https"):
            check_url(url, WebPolicy())
    with pytest.raises(UrlRefused, match="credentials"):
        check_url("http://user:secret@example.com/", WebPolicy())
    # a public-looking name that resolves to a private address is refused (any of its addresses)
    pinned = {"intranet.example": ["93.184.215.14", "10.0.0.5"], "public.example": ["93.184.215.14"]}
    policy = WebPolicy(resolve=lambda host, port: pinned[host])
    with pytest.raises(UrlRefused, match="10.0.0.5"):
        check_url("http://intranet.example/", policy)
    # the address that was checked is the one connected to
    parsed, address = check_url("https://public.example/page", policy)
    assert address == "93.184.215.14" and parsed.host == "public.example"
    assert check_url("http://127.0.0.5/", WebPolicy(allow_hosts=["127.0.0.0/8"]))[1] == "127.0.0.5"
    assert check_url("http://localhost/", WebPolicy(allow_hosts=["localhost"]))[0].host == "localhost"
    with pytest.raises(UrlRefused):
        check_url("http://93.184.215.14/", WebPolicy(public=False))
    # an IPv6 form of a public IPv4 is judged by that IPv4, so it passes
    assert check_url("http://[64:ff9b::5db8:d70e]/", WebPolicy())[1] == "64:ff9b::5db8:d70e"
    assert check_url("http://[2002:5db8:d70e::1]/", WebPolicy())[1] == "2002:5db8:d70e::1"


def ingest(app, collection, urls, role="user"):
    return app.client.post(f"/api/collections/{collection}/urls", json={"urls": urls}, headers=app.headers(role))


def test_pages_are_fetched_only_when_allowed_and_then_searchable(rag_app, site, monkeypatch):
    allowed, other = site
    assert (
        rag_app.client.post("/api/collections", json={"name": "web"}, headers=rag_app.headers("user")).status_code
        == 201
    )
    refused = ingest(rag_app, "web", [allowed + "/tides.html"])
    assert refused.status_code == 400 and refused.json()["code"] == "url_not_allowed", refused.text
    assert ingest(rag_app, "web", ["http://169.254.169.254/latest/meta-data/"]).json()["code"] == "url_not_allowed"

    monkeypatch.setattr(rag_app.platform.settings, "web_allow_hosts", ["127.0.0.2"])
    response = ingest(rag_app, "web", [allowed + "/tides.html", allowed + "/notes.txt"])
    assert response.status_code == 201, response.text
    documents = response.json()["documents"]
    assert [d["source"] for d in documents] == [allowed + "/tides.html", allowed + "/notes.txt"]
    assert [d["format"] for d in documents] == ["html", "text"]
    for query, source in [("when do spring tides happen", "/tides.html"), ("glaciers calving", "/notes.txt")]:
        top = rag_app.client.post(
            "/api/collections/web/search", json={"query": query, "k": 1}, headers=rag_app.headers("user")
        ).json()["results"][0]
        assert top["source"] == allowed + source and "alert" not in top["text"]
    assert ingest(rag_app, "web", [allowed + "/tides.html"]).json()["documents"][0]["status"] == "unchanged"

    # a redirect from the allowed host to a loopback address that is not allowed is refused
    monkeypatch.setattr(Site, "redirect_to", other + "/tides.html")
    redirected = ingest(rag_app, "web", [allowed + "/redirect"])
    assert redirected.status_code == 400 and redirected.json()["code"] == "url_not_allowed", redirected.text
    monkeypatch.setattr(Site, "redirect_to", "http://169.254.169.254/latest/meta-data/")
    assert ingest(rag_app, "web", [allowed + "/redirect"]).json()["code"] == "url_not_allowed"
    monkeypatch.setattr(Site, "redirect_to", allowed + "/notes.txt")  # an allowed target is followed
    followed = ingest(rag_app, "web", [allowed + "/redirect"])
    assert followed.status_code == 201 and followed.json()["documents"][0]["source"] == allowed + "/redirect"

    image = ingest(rag_app, "web", [allowed + "/image.png"])
    assert image.status_code == 400 and image.json()["code"] == "unsupported_type"
    monkeypatch.setattr(rag_app.platform.settings, "web_max_bytes", 10_000)
    assert ingest(rag_app, "web", [allowed + "/big.html"]).status_code == 413
    missing = ingest(rag_app, "web", [allowed + "/missing"])
    assert missing.status_code == 400 and "404" in missing.json()["detail"]
    # one refused URL in a batch: nothing from the batch is stored
    before = {
        d["source"]
        for d in rag_app.client.get("/api/collections/web/documents", headers=rag_app.headers("user")).json()[
            "documents"
        ]
    }
    batch = ingest(rag_app, "web", [allowed + "/tides.html?v=2", other + "/notes.txt"])
    assert batch.status_code == 400
    after = {
        d["source"]
        for d in rag_app.client.get("/api/collections/web/documents", headers=rag_app.headers("user")).json()[
            "documents"
        ]
    }
    assert after == before
