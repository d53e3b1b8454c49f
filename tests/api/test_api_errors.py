"""Bad input answers 4xx with a clear JSON problem, never a 500."""

import pytest


@pytest.fixture
def espalier_settings():
    return {"max_body_bytes": 4096}


def test_malformed_json(espalier):
    response = espalier.client.post(
        "/api/keys", content=b'{"name": "x",', headers={**espalier.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["status"] == 400 and "JSON" in body["detail"] and body["request_id"]


def test_unknown_fields_are_refused(espalier):
    response = espalier.client.post("/api/keys", json={"name": "x", "rol": "user"}, headers=espalier.headers())
    assert response.status_code == 400
    assert "unknown field `rol`" in response.json()["detail"]


def test_wrong_types_and_values(espalier):
    response = espalier.client.post("/api/keys", json={"name": 5}, headers=espalier.headers())
    assert response.status_code == 400 and "Expected `str`" in response.json()["detail"]
    response = espalier.client.post("/api/keys", json={"name": "x", "role": "root"}, headers=espalier.headers())
    assert response.status_code == 400 and "admin" in response.json()["detail"]
    response = espalier.client.post("/api/keys", json={"name": ""}, headers=espalier.headers())
    assert response.status_code == 400
    response = espalier.client.get("/api/audit?limit=0", headers=espalier.headers())
    assert response.status_code == 400


def test_oversized_body_is_refused(espalier):
    response = espalier.client.post("/api/keys", json={"name": "x" * 10_000}, headers=espalier.headers())
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_unknown_route_and_method(espalier):
    assert espalier.client.get("/api/nothing-here", headers=espalier.headers()).status_code == 404
    assert espalier.client.put("/api/keys", headers=espalier.headers()).status_code == 405


def test_not_found_resources_say_what_is_missing(espalier):
    response = espalier.client.delete("/api/keys/abc", headers=espalier.headers())
    assert response.status_code == 404 and "abc" in response.json()["detail"]
    response = espalier.client.get("/api/jobs/job_nope", headers=espalier.headers("operator"))
    assert response.status_code == 404 and "job_nope" in response.json()["detail"]


def test_unexpected_errors_answer_500_without_details(tmp_path):
    from litestar import get

    from espalier import hookimpl
    from espalier.api.guards import access
    from espalier.api.testing import build_harness

    @get("/api/boom", opt=access("user"))
    async def boom() -> dict:
        raise RuntimeError("secret internal detail")

    class Plugin:
        @hookimpl
        def register_routes(self, register):
            register(boom)

    for harness in build_harness(tmp_path / "h", [Plugin()]):
        response = harness.client.get("/api/boom", headers=harness.headers("user"))
        assert response.status_code == 500
        assert "secret internal detail" not in response.text
        assert response.json()["request_id"]


def test_health_and_readiness(espalier):
    assert espalier.client.get("/healthz").json() == {"status": "ok"}
    ready = espalier.client.get("/readyz")
    checks = {"database": True, "plugins": True, "rate_limit_store": True}
    assert ready.status_code == 200 and ready.json()["checks"] == checks


def test_readiness_fails_when_the_database_is_gone(espalier):
    espalier.platform.engine.dispose()
    espalier.platform.engine.url = espalier.platform.engine.url.set(database="/nonexistent/dir/x.db")
    from espalier.core.infrastructure.db import create_db_engine

    espalier.platform.engine = create_db_engine("sqlite:////nonexistent/dir/x.db")
    response = espalier.client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"] is False


def test_openapi_schema_is_served(espalier):
    schema = espalier.client.get("/schema/openapi.json").json()
    assert "/api/keys" in schema["paths"] and schema["info"]["title"] == "Espalier"


def test_metrics_are_exposed_to_operators(espalier):
    espalier.client.get("/healthz")
    espalier.client.get("/api/me", headers=espalier.headers("user"))
    response = espalier.client.get("/metrics", headers=espalier.headers("operator"))
    assert response.status_code == 200
    assert "espalier_requests_total" in response.text
