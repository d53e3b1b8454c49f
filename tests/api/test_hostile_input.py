"""Hostile input answers 4xx, never a 500 with a traceback: deep nesting, out-of-range integers,
absurd paths, and bodies that are not declared JSON on JSON routes."""

import pytest

DEEP_ARRAY = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


@pytest.mark.parametrize("path", ["/api/keys", "/api/feedback", "/v1/chat/completions", "/api/collections"])
@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_json_nested_a_thousand_deep_is_a_400(espalier, path, body):
    headers = {**espalier.headers("admin"), "content-type": "application/json"}
    response = espalier.client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    payload = response.json()
    code = payload["error"]["code"] if path.startswith("/v1") else payload["code"]
    assert code == "json_too_deep"


def test_integers_past_64_bits_are_refused_at_the_schema(espalier):
    admin = espalier.headers("admin")
    chat = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for seed in (2**64, 2**70, -(2**63) - 1):
        response = espalier.client.post("/v1/chat/completions", json={**chat, "seed": seed}, headers=admin)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    huge = str(10**30)
    for path, params in [
        ("/api/audit", {"before_id": huge}),
        ("/api/jobs/x/logs", {"after_id": huge}),
        ("/api/jobs/x/metrics", {"after_step": huge}),
        ("/api/collections/c/search", {"q": "x", "k": huge}),
    ]:
        response = espalier.client.get(path, params=params, headers=admin)
        assert response.status_code == 400, (path, response.text)
    response = espalier.client.post("/api/policy/train", json={"steps": 10**30}, headers=admin)
    assert response.status_code == 400 and "steps" in response.json()["detail"]


def test_a_model_source_the_system_cannot_look_at_is_a_400(espalier):
    admin = espalier.headers("admin")
    response = espalier.client.post("/api/models", json={"name": "long", "source": "/tmp/" + "a" * 300}, headers=admin)
    assert response.status_code == 400 and "cannot be read: File name too long" in response.json()["detail"]
    response = espalier.client.post("/api/models", json={"name": "longer", "source": "a" * 5000}, headers=admin)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data; boundary=x"],
)
def test_json_routes_refuse_bodies_not_declared_json(espalier, content_type):
    headers = espalier.headers("admin")
    if content_type:
        headers["content-type"] = content_type
    body = '{"name": "sneaky", "role": "admin"}'
    response = espalier.client.post("/api/keys", content=body, headers=headers)
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert "sneaky" not in {key.name for key in espalier.platform.keys.list()}
    response = espalier.client.post("/v1/chat/completions", content="{}", headers=headers)
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_declared_json_and_the_routes_that_read_other_bodies_still_work(espalier):
    admin = espalier.headers("admin")
    for media in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        body = '{"name": "ok-' + media.split(";")[0].replace("/", "-") + '", "role": "user"}'
        response = espalier.client.post("/api/keys", content=body, headers={**admin, "content-type": media})
        assert response.status_code == 201, response.text
    # JSON Lines import: its own media types, or none at all
    line = '{"prompt": "p", "chosen": "a", "rejected": "b"}'
    for headers in ({}, {"content-type": "application/x-ndjson"}, {"content-type": "text/plain"}):
        response = espalier.client.post("/api/pairs/import", content=line, headers={**admin, **headers})
        assert response.status_code == 200, response.text
    response = espalier.client.post(
        "/api/pairs/import", content=line, headers={**admin, "content-type": "application/xml"}
    )
    assert response.status_code == 415
    # multipart uploads
    espalier.client.post("/api/collections", json={"name": "docs"}, headers=admin)
    upload = espalier.client.post(
        "/api/collections/docs/upload", files={"file": ("a.txt", b"hello there", "text/plain")}, headers=admin
    )
    assert upload.status_code in (200, 201), upload.text
    refused = espalier.client.post("/api/collections/docs/upload", json={"file": "x"}, headers=admin)
    assert refused.status_code == 415
