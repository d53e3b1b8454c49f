"""Every route declares who may call it, and the guard enforces it on every one."""

import hashlib
import re
from datetime import timedelta

import pytest
from litestar import get

from espalier import hookimpl
from espalier.api.app import create_app
from espalier.api.guards import _is_public
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import ROLE_RANK, ROLES
from espalier.core.infrastructure.settings import Settings
from espalier.core.interface.console_sessions.tables import ConsoleSession
from espalier.core.platform import Platform


@pytest.fixture
def espalier_settings():
    # The route walk sends hundreds of keyless requests from one address, by design; the limit on
    # failed authentications has its own tests (tests/api/test_rate_limits.py).
    return {"auth_failures_per_minute": 100_000}


def all_routes(app):
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            for method in sorted(handler.http_methods):
                yield route.path, method, handler


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_requires_its_role(espalier):
    app = espalier.client.app
    checked = 0
    for path, method, handler in all_routes(app):
        if _is_public(handler, path) or handler.opt.get("console"):
            continue  # console routes take a session cookie, not a key: checked below
        url = concrete(path)
        response = espalier.client.request(method, url)
        assert response.status_code == 401, f"{method} {path} without a key gave {response.status_code}"
        body = response.json()
        assert (body["error"]["code"] if path.startswith("/v1") else body["code"]) == "unauthenticated"
        minimum = handler.opt["min_role"]
        for role in ROLES[: ROLE_RANK[minimum]]:
            response = espalier.client.request(method, url, headers=espalier.headers(role))
            assert response.status_code == 403, f"{method} {path} as {role} gave {response.status_code}"
        checked += 1
    assert checked >= 8


def refused_without_console_session(response, method: str) -> bool:
    if method in ("GET", "HEAD"):
        return response.status_code == 303 and response.headers["location"].startswith("/console/sign-in")
    return response.status_code == 401 and response.json()["code"] == "unauthenticated"


def test_every_console_route_needs_an_operator_session(espalier):
    """Console routes ignore bearer keys (of any role) and refuse a user key's session, even one
    written straight into the database, before checking the CSRF token or the request."""
    app, client = espalier.client.app, espalier.client
    platform = espalier.platform
    sessions = {}
    for role in ("operator", "admin"):
        sessions[role] = platform.console_sessions.sign_in(espalier.keys[role]).token
    with pytest.raises(Exception, match="operator and admin keys"):
        platform.console_sessions.sign_in(espalier.keys["user"])
    user_id = next(k.id for k in platform.keys.list() if k.name == "test-user")
    with session_scope(platform.engine) as session:  # a user session that sign-in would never create
        session.add(
            ConsoleSession(
                token_hash=hashlib.sha256(b"user-session").hexdigest(),
                key_id=user_id,
                csrf_token="t",
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
    sessions["user"] = "user-session"
    checked = 0
    for path, method, handler in all_routes(app):
        if not handler.opt.get("console") or _is_public(handler, path):
            continue
        url = concrete(path)
        client.cookies.clear()
        assert refused_without_console_session(client.request(method, url, follow_redirects=False), method), url
        for role in ROLES:
            response = client.request(method, url, headers=espalier.headers(role), follow_redirects=False)
            assert refused_without_console_session(response, method), f"{method} {path} with a {role} bearer key"
        minimum = handler.opt["min_role"]
        for role in ROLES[: ROLE_RANK[minimum]]:
            client.cookies.set("espalier_console", sessions[role], path="/console")
            response = client.request(method, url, headers={"X-CSRF-Token": "t"}, follow_redirects=False)
            assert response.status_code == 403, f"{method} {path} with a {role} session gave {response.status_code}"
        checked += 1
    client.cookies.clear()
    assert checked >= 10


def test_public_routes_are_only_the_expected_ones(espalier):
    public = {
        path
        for path, method, handler in all_routes(espalier.client.app)
        if _is_public(handler, path) and method != "OPTIONS"
    }
    assert {p for p in public if not p.startswith("/schema")} == {
        "/healthz",
        "/readyz",
        "/console/sign-in",
        "/console/static/{file_path:path}",
    }


def test_unknown_malformed_and_revoked_keys_get_401(espalier):
    for header in ("Bearer esp_000000000000_nope", "Bearer garbage", "Basic abc", "Bearer "):
        response = espalier.client.get("/api/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["www-authenticate"] == "Bearer"
    created = espalier.client.post("/api/keys", json={"name": "temp", "role": "user"}, headers=espalier.headers())
    assert created.status_code == 201
    key = created.json()["key"]
    assert espalier.client.get("/api/me", headers={"Authorization": f"Bearer {key}"}).json()["name"] == "temp"
    revoked = espalier.client.delete(f"/api/keys/{created.json()['id']}", headers=espalier.headers())
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    response = espalier.client.get("/api/me", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401


def test_key_is_shown_once_and_never_listed(espalier):
    created = espalier.client.post("/api/keys", json={"name": "once", "role": "operator"}, headers=espalier.headers())
    key = created.json()["key"]
    listing = espalier.client.get("/api/keys", headers=espalier.headers())
    assert listing.status_code == 200
    assert key not in listing.text and key.split("_")[2] not in listing.text
    assert "secret_hash" not in listing.text


def test_admin_actions_are_audited_with_the_actor(espalier):
    created = espalier.client.post("/api/keys", json={"name": "audited", "role": "user"}, headers=espalier.headers())
    espalier.client.delete(f"/api/keys/{created.json()['id']}", headers=espalier.headers())
    events = espalier.client.get("/api/audit", headers=espalier.headers()).json()["events"]
    latest = [(e["action"], e["actor_name"], e["target"]) for e in events[:2]]
    assert latest == [
        ("key.revoke", "test-admin", created.json()["id"]),
        ("key.create", "test-admin", created.json()["id"]),
    ]


def test_a_plugin_route_without_an_access_rule_refuses_to_start(tmp_path):
    @get("/api/unguarded")
    async def unguarded() -> dict:
        return {}

    class Plugin:
        @hookimpl
        def register_routes(self, register):
            register(unguarded)

    platform = Platform(Settings(home=tmp_path), extra_plugins=[("careless", Plugin())], load_entry_points=False)
    with pytest.raises(RuntimeError, match="/api/unguarded"):
        create_app(platform.settings, platform=platform)


def test_secrets_never_reach_the_log(espalier, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="espalier")
    espalier.client.get("/api/me", headers=espalier.headers("user"))
    espalier.client.post("/api/keys", json={"name": "logged", "role": "user"}, headers=espalier.headers())
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for key in espalier.keys.values():
        assert key.split("_")[2] not in text
    assert any(getattr(r, "path", None) == "/api/me" and getattr(r, "key_id", None) for r in caplog.records)
