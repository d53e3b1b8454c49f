"""The operator console through the real app: sign-in, sessions, CSRF, roles, escaping, and each
page rendering real data. The browser tests (test_console_browser.py) drive the same pages."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from sqlmodel import select

from espalier import hookimpl
from espalier.core.infrastructure import contracts
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import Principal
from espalier.core.interface.console_sessions.tables import ConsoleSession
from tests.core.sources.labeling.echo import EchoPlugin as LabelingEchoPlugin

SCRIPT = "<script>alert('pwned')</script>"


class EchoPlugin(LabelingEchoPlugin):
    """The scripted echo model (candidate i of a prompt is "<prompt> #i"): only to prove escaping and
    the ranking form's plumbing (the browser test chats with the real shipped model); plus a job
    that waits to be cancelled."""

    @hookimpl
    def register_job_kinds(self, register):
        register(contracts.JobKind("wait", run=wait_until_cancelled, description="runs until cancelled"))


def wait_until_cancelled(job):
    job.progress(0.25, "waiting <b>politely</b>")
    job.log("started waiting")
    while not job.cancelled():
        time.sleep(0.05)
    return None


@pytest.fixture
def espalier_plugins():
    return [EchoPlugin()]


def sign_in(espalier, role="admin"):
    """Signs the test client in through the real form; returns the page's CSRF token."""
    client = espalier.client
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
    response = client.post(
        "/console/sign-in",
        data={"_csrf": token, "key": espalier.keys[role], "next": "/console"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/console").text)


def csrf_of(html: str) -> str:
    return re.search(r'"X-CSRF-Token": "([^"]+)"', html).group(1)


def test_sign_in_sets_a_strict_httponly_session_cookie(espalier):
    client = espalier.client
    form = client.get("/console/sign-in")
    token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
    response = client.post(
        "/console/sign-in", data={"_csrf": token, "key": espalier.keys["operator"]}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/console"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("espalier_console="))
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; on TLS the cookie is Secure
    assert espalier.keys["operator"] not in cookie
    page = client.get("/console")
    assert page.status_code == 200 and "Requests per hour" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_sign_in_refuses_user_keys_bad_keys_and_a_missing_form_token(espalier):
    client = espalier.client
    form = client.get("/console/sign-in")
    token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
    refused = client.post(
        "/console/sign-in", data={"_csrf": token, "key": espalier.keys["user"]}, follow_redirects=False
    )
    assert refused.status_code == 403 and "operator and admin keys" in refused.text
    assert "espalier_console=" not in "".join(refused.headers.get_list("set-cookie"))
    token = re.search(r'name="_csrf" value="([^"]+)"', refused.text).group(1)  # each form has a fresh token
    bad = client.post("/console/sign-in", data={"_csrf": token, "key": "esp_000000000000_nope"}, follow_redirects=False)
    assert bad.status_code == 401
    client.cookies.clear()
    forged = client.post(
        "/console/sign-in", data={"_csrf": "guess", "key": espalier.keys["admin"]}, follow_redirects=False
    )
    assert forged.status_code == 403 and "espalier_console=" not in "".join(forged.headers.get_list("set-cookie"))


def test_pages_without_a_session_redirect_to_sign_in_and_bearer_keys_do_not_count(espalier):
    response = espalier.client.get("/console/keys", headers=espalier.headers("admin"), follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/sign-in?next=/console/keys"
    htmx = espalier.client.get("/console/jobs", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/console/sign-in")
    post = espalier.client.post("/console/keys", data={"name": "x"}, follow_redirects=False)
    assert post.status_code == 401 and post.json()["code"] == "unauthenticated"


def test_the_sign_in_next_parameter_is_never_an_open_redirect(espalier):
    client = espalier.client
    for target, expected in (
        ("//evil.example/x", "/console"),
        ("https://evil.example", "/console"),
        ("/console/jobs", "/console/jobs"),
    ):
        form = client.get("/console/sign-in", params={"next": target})
        token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
        response = client.post(
            "/console/sign-in",
            data={"_csrf": token, "key": espalier.keys["admin"], "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == expected


def test_a_form_post_without_or_with_a_wrong_csrf_token_fails(espalier):
    csrf = sign_in(espalier)
    client = espalier.client
    missing = client.post("/console/keys", data={"name": "no-token", "role": "user"})
    wrong = client.post("/console/keys", data={"name": "wrong", "role": "user", "_csrf": "x" * 43})
    assert missing.status_code == 403 and wrong.status_code == 403 and missing.json()["code"] == "csrf_failed"
    names = [key.name for key in espalier.platform.keys.list()]
    assert "no-token" not in names and "wrong" not in names
    by_field = client.post("/console/keys", data={"name": "by-field", "role": "user", "_csrf": csrf})
    by_header = client.post("/console/keys", data={"name": "by-header", "role": "user"}, headers={"X-CSRF-Token": csrf})
    assert by_field.status_code == 200 and by_header.status_code == 200
    assert re.search(r"esp_[0-9a-f]{12}_\S+</code>", by_header.text)  # the new key, shown this once


def test_operators_get_operator_pages_but_not_admin_ones(espalier):
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    for path in ("/console", "/console/playground", "/console/models", "/console/jobs", "/console/plugins"):
        assert client.get(path).status_code == 200, path
    overview = client.get("/console").text
    assert 'href="/console/jobs"' in overview and 'href="/console/keys"' not in overview
    for path in ("/console/keys", "/console/audit"):
        assert client.get(path).status_code == 403, path
    denied = client.post("/console/keys", data={"name": "sneaky", "role": "admin"}, headers={"X-CSRF-Token": csrf})
    assert denied.status_code == 403 and "sneaky" not in [k.name for k in espalier.platform.keys.list()]


def test_sign_out_ends_the_session_on_the_server(espalier):
    csrf = sign_in(espalier)
    client = espalier.client
    cookie = client.cookies.get("espalier_console")
    response = client.post("/console/sign-out", data={"_csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/sign-in"
    client.cookies.set("espalier_console", cookie, path="/console")  # a stolen copy of the cookie
    assert client.get("/console", follow_redirects=False).status_code == 303
    actions = [e.action for e in espalier.platform.audit.list(limit=5)]
    assert "console.sign_out" in actions and "console.sign_in" in actions


def test_revoking_the_key_or_expiry_ends_its_sessions(espalier):
    sign_in(espalier, "operator")
    client = espalier.client
    assert client.get("/console/jobs", follow_redirects=False).status_code == 200
    with session_scope(espalier.platform.engine) as session:
        for record in session.exec(select(ConsoleSession)).all():
            record.expires_at = utcnow() - timedelta(seconds=1)
            session.add(record)
    assert client.get("/console/jobs", follow_redirects=False).status_code == 303
    sign_in(espalier, "operator")
    assert client.get("/console/jobs", follow_redirects=False).status_code == 200
    operator_id = next(k.id for k in espalier.platform.keys.list() if k.name == "test-operator")
    espalier.platform.keys.revoke(operator_id)
    assert client.get("/console/jobs", follow_redirects=False).status_code == 303


def test_playground_candidates_are_escaped_and_ranked(espalier):
    csrf = sign_in(espalier)
    client = espalier.client
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    response = client.post(
        "/console/playground/chat",
        headers=headers,
        data={"model": "echo", "prompt": SCRIPT, "n": "3", "max_tokens": "8"},
    )
    assert response.status_code == 200, response.text
    assert SCRIPT not in response.text and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; #2" in response.text
    request_id = re.search(r'name="request_id" value="([^"]+)"', response.text).group(1)
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', response.text)
    assert len(ids) == 3
    idempotency_key = re.search(r'name="idempotency_key" value="([^"]+)"', response.text).group(1)
    form = {
        "request_id": request_id,
        "idempotency_key": idempotency_key,
        f"rank_{ids[0]}": "2",
        f"rank_{ids[1]}": "1",
        f"rank_{ids[2]}": "2",
        "unacceptable": ids[2],
    }
    ranked = client.post("/console/playground/rank", headers=headers, data=form)
    assert ranked.status_code == 200
    assert "candidate 2 ranked 1; candidate 1 ranked 2; candidate 3 ranked 2 (unacceptable)" in ranked.text
    # a double submit of the same shown set stores it once
    assert client.post("/console/playground/rank", headers=headers, data=form).status_code == 200
    admin = next(k for k in espalier.platform.keys.list() if k.name == "test-admin")
    principal = Principal(admin.id, admin.name, admin.role)
    [stored] = espalier.platform.feedback.list(principal, request_id=request_id)
    ranks = {c["completion_id"]: (c["rank"], c["unacceptable"]) for c in stored.payload["candidates"]}
    assert ranks == {ids[0]: (2, False), ids[1]: (1, False), ids[2]: (2, True)}
    assert stored.kind == "ranking" and stored.key_id == admin.id
    # ... and it is a ranking like any other: it yields preference pairs
    assert len(espalier.platform.pairs.derived()) == 3
    # the request and its candidates are in the same store the API uses
    listing = client.get("/api/conversations", headers=espalier.headers("admin"))
    assert listing.status_code == 200


@pytest.mark.parametrize(
    "ranks, message",
    [
        ({0: "1", 1: "9"}, "from 1 to 2"),
        ({0: "1"}, "rank each exactly once"),
        ({0: "one", 1: "2"}, "must be a number"),
    ],
)
def test_bad_rankings_are_refused_with_a_clear_400(espalier, ranks, message):
    csrf = sign_in(espalier)
    client = espalier.client
    headers = {"X-CSRF-Token": csrf}
    response = client.post(
        "/console/playground/chat", headers=headers, data={"model": "echo", "prompt": "hi", "n": "2"}
    )
    request_id = re.search(r'name="request_id" value="([^"]+)"', response.text).group(1)
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', response.text)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', response.text).group(1)
    data = {"request_id": request_id, "idempotency_key": key, **{f"rank_{ids[i]}": value for i, value in ranks.items()}}
    refused = client.post("/console/playground/rank", headers=headers, data=data)
    assert refused.status_code == 400 and message in refused.json()["detail"]
    admin = next(k for k in espalier.platform.keys.list() if k.name == "test-admin")
    assert espalier.platform.feedback.list(Principal(admin.id, admin.name, admin.role), request_id=request_id) == []


def test_bad_playground_input_is_a_400_not_a_500(espalier):
    csrf = sign_in(espalier)
    headers = {"X-CSRF-Token": csrf}
    for data in (
        {"model": "echo", "prompt": "hi", "n": "99"},
        {"model": "echo", "prompt": ""},
        {"model": "no-such-model", "prompt": "hi"},
        {"model": "echo", "prompt": "hi", "extra": "1"},
    ):
        response = espalier.client.post("/console/playground/chat", headers=headers, data=data)
        assert 400 <= response.status_code < 500, (data, response.status_code, response.text)


def test_stored_text_is_escaped_on_every_page(espalier):
    csrf = sign_in(espalier)
    client = espalier.client
    created = client.post("/console/keys", data={"name": SCRIPT, "role": "user"}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 200 and SCRIPT not in created.text
    for path in ("/console/keys", "/console/audit"):
        text = client.get(path).text
        assert SCRIPT not in text and "&lt;script&gt;" in text, path


def test_overview_charts_count_the_stored_requests(espalier):
    csrf = sign_in(espalier)
    for _ in range(3):
        espalier.client.post(
            "/console/playground/chat",
            headers={"X-CSRF-Token": csrf},
            data={"model": "echo", "prompt": "count me", "n": "2"},
        )
    import json

    page = espalier.client.get("/console").text
    chart = json.loads(
        re.search(r'<script type="application/json" id="usage-data">(.*?)</script>', page, re.S).group(1)
    )
    assert sum(chart["requests"]) == 3 and sum(chart["completion_tokens"]) == 3 * 2 * 3
    assert chart["p50"][-1] is not None and len(chart["labels"]) == 24


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_jobs_pages_show_progress_logs_and_errors_and_stop_polling_when_done(espalier):
    sign_in(espalier)
    client = espalier.client
    failing = espalier.platform.jobs.submit("train:injection-classifier", {})
    wait_for(lambda: espalier.platform.jobs.get(failing.id).status == "failed")
    listing = client.get("/console/jobs", headers={"HX-Request": "true"})
    assert failing.id in listing.text and "<html" not in listing.text  # the polled fragment only
    detail = client.get(f"/console/jobs/{failing.id}")
    assert detail.status_code == 200 and "hx-trigger" not in detail.text  # a finished job is not polled
    assert "job params need &#39;data_path&#39;" in detail.text
    fragment = client.get(f"/console/jobs/{failing.id}", headers={"HX-Request": "true"})
    assert fragment.status_code == 286  # htmx stops a poll that gets this status
    assert client.get("/console/jobs/job_nope").status_code == 404


def test_a_running_job_is_polled_and_cancelled_from_its_page(espalier):
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    job = espalier.platform.jobs.submit("wait", {})
    # running, and past its first progress report and log line (status flips before the job body runs)
    wait_for(lambda: any(line.message == "started waiting" for line in espalier.platform.jobs.logs(job.id)))
    detail = client.get(f"/console/jobs/{job.id}")
    assert 'hx-trigger="every 2s"' in detail.text and "Cancel job" in detail.text
    assert "waiting &lt;b&gt;politely&lt;/b&gt;" in detail.text and "started waiting" in detail.text
    assert client.get(f"/console/jobs/{job.id}", headers={"HX-Request": "true"}).status_code == 200  # keep polling
    cancelled = client.post(f"/console/jobs/{job.id}/cancel", headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert cancelled.status_code == 200
    wait_for(lambda: espalier.platform.jobs.get(job.id).status == "cancelled")
    assert client.get(f"/console/jobs/{job.id}", headers={"HX-Request": "true"}).status_code == 286
    again = client.post(f"/console/jobs/{job.id}/cancel", headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert ("job.cancel", "test-operator") in [(e.action, e.actor_name) for e in espalier.platform.audit.list(limit=5)]


def test_static_files_are_public_and_vendored(espalier):
    for name in ("htmx-2.0.4.min.js", "chart-4.4.9.umd.min.js", "console.js", "console.css"):
        response = espalier.client.get(f"/console/static/{name}")
        assert response.status_code == 200 and len(response.content) > 500, name
    assert espalier.client.get("/console/static/../templates/base.html").status_code == 404


def test_console_services_persist_on_both_backends(database_url, tmp_path):
    """Sessions, hourly figures and rankings on SQLite and PostgreSQL, through migration 0007."""
    from espalier.core.infrastructure.errors import Forbidden, Unauthenticated
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform
    from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord, Conversation

    platform = Platform(Settings(home=tmp_path / "home", database_url=database_url), load_entry_points=False)
    platform.start(run_jobs=False)
    try:
        operator = platform.keys.create(name="op", role="operator")
        user = platform.keys.create(name="u", role="user")
        signed = platform.console_sessions.sign_in(operator.key)
        active = platform.console_sessions.resolve(signed.token)
        assert active.principal.name == "op" and active.csrf_token == signed.csrf_token
        with pytest.raises(Forbidden):
            platform.console_sessions.sign_in(user.key)
        platform.console_sessions.sign_out(signed.token)
        with pytest.raises(Unauthenticated):
            platform.console_sessions.resolve(signed.token)

        now = utcnow()
        with session_scope(platform.engine) as session:
            session.add(Conversation(id="conv_x", owner_key_id=operator.record.id))
            session.flush()
            for i, latency in enumerate([10.0, 20.0, 30.0, 40.0, 1000.0]):
                session.add(
                    ChatRequestRecord(
                        id=f"req_{i}",
                        conversation_id="conv_x",
                        owner_key_id=operator.record.id,
                        model="m",
                        latency_ms=latency,
                        prompt_tokens=5,
                        completion_tokens=7,
                        status="ok" if i else "failed",
                        created_at=now,
                    )
                )
            session.add(
                ChatRequestRecord(
                    id="req_old",
                    conversation_id="conv_x",
                    model="m",
                    latency_ms=1.0,
                    created_at=now - timedelta(hours=30),
                )
            )
            session.flush()
            for index in range(2):
                session.add(CompletionRecord(id=f"cmp_{index}", request_id="req_1", index=index, text="t"))
        [latest] = platform.usage.hourly(1, now=now)
        assert (latest.requests, latest.failed, latest.prompt_tokens, latest.completion_tokens) == (5, 1, 25, 35)
        assert (latest.latency_p50_ms, latest.latency_p95_ms) == (30.0, 1000.0)
        assert sum(bucket.requests for bucket in platform.usage.hourly(48, now=now)) == 6

        principal = platform.console_sessions.resolve(platform.console_sessions.sign_in(operator.key).token).principal
        assert principal.key_id == operator.record.id and principal.role == "operator"
    finally:
        platform.close()


def labeling_task(espalier, labelers, prompts=("Say <b>hi</b>", "Name a fruit")):
    from tests.core.sources.labeling.test_labeling import wait_for_generation

    response = espalier.client.post(
        "/api/labeling/tasks",
        headers=espalier.headers("operator"),
        json={
            "name": SCRIPT,
            "prompts": list(prompts),
            "model": "echo",
            "n": 3,
            "rankings_required": 1,
            "labelers": labelers,
        },
    )
    assert response.status_code == 202, response.text
    wait_for_generation(espalier, response.json()["job_id"])
    return response.json()["task"]["id"]


def test_labeling_pages_refuse_sessions_without_csrf_and_user_keys(espalier):
    task_id = labeling_task(espalier, [])
    client = espalier.client
    for path in ("/console/labeling", f"/console/labeling/{task_id}", f"/console/labeling/{task_id}/label"):
        anonymous = client.get(path, follow_redirects=False)
        assert anonymous.status_code in (302, 303) and "/console/sign-in" in anonymous.headers["location"]
        assert client.get(path, headers=espalier.headers("user"), follow_redirects=False).status_code in (302, 303)
    csrf = sign_in(espalier, "operator")
    no_token = client.post(f"/console/labeling/{task_id}/exclude", data={"key_id": "abc"})
    assert no_token.status_code == 403 and no_token.json()["code"] == "csrf_failed"
    assert espalier.platform.labeling.get(task_id).excluded_labelers == []
    toggled = client.post(
        f"/console/labeling/{task_id}/exclude", data={"key_id": "abc"}, headers={"X-CSRF-Token": csrf}
    )
    assert toggled.status_code == 200 and "Include again" in toggled.text
    assert espalier.platform.labeling.get(task_id).excluded_labelers == ["abc"]
    # not a labeler of the task: the queue says how to become one instead of handing out items
    queue = client.get(f"/console/labeling/{task_id}/label")
    assert queue.status_code == 409 and "not a labeler" in queue.text


def test_an_operator_labels_a_task_in_the_console_and_sees_agreement(espalier):
    operator_id = espalier.keys["operator"].split("_")[1]
    task_id = labeling_task(espalier, [operator_id])
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    listing = client.get("/console/labeling")
    assert listing.status_code == 200 and SCRIPT not in listing.text and "&lt;script&gt;" in listing.text
    assert f'href="/console/labeling/{task_id}/label"' in listing.text and 'href="/console/labeling"' in listing.text
    queue = client.get(f"/console/labeling/{task_id}/label")
    assert queue.status_code == 200 and "facts may be checked" in queue.text.lower() and "<kbd>f</kbd>" in queue.text
    assert "Say &lt;b&gt;hi&lt;/b&gt; #2" in queue.text and "<b>hi</b>" not in queue.text
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', queue.text)
    item_id = re.search(r"/items/(li_[0-9a-f]+)/rank", queue.text).group(1)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', queue.text).group(1)
    form = {
        "idempotency_key": key,
        f"rank_{ids[0]}": "1",
        f"rank_{ids[1]}": "1",
        f"rank_{ids[2]}": "3",
        "unacceptable": ids[2],
    }
    saved = client.post(
        f"/console/labeling/{task_id}/items/{item_id}/rank",
        data=form,
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert saved.status_code == 200, saved.text
    assert "Ranking saved as feedback fb_" in saved.text and "Name a fruit #0" in saved.text  # the next item
    record = espalier.platform.feedback.list(Principal(operator_id, "op", "operator"))[0]
    assert [c["rank"] for c in record.payload["candidates"]] == [1, 1, 3] and record.payload["candidates"][2][
        "unacceptable"
    ]
    page = client.get(f"/console/labeling/{task_id}")
    assert page.status_code == 200 and 'id="agreement-data"' in page.text and 'data-chart="agreement"' in page.text
    assert f'data-labeler="{operator_id}"' in page.text and "1/2 items done" in page.text


def _passed_evaluation(platform, version_id: str) -> str:
    """A stored policy-evaluation record for the echo model (the real evaluation of the shipped
    model runs in test_promotion.py; here only the page's plumbing is under test)."""
    from espalier.core.sources.learning.tables import EvaluationRecord

    side = {
        "model": "echo@base",
        "version": "base",
        "version_id": "x",
        "mean_reward": 0.1,
        "mean_toxicity": 0.2,
        "share_above_threshold": 0.0,
        "kl": 0.0,
        "kl_per_token": 0.0,
        "task_accuracy": 0.5,
    }
    record = EvaluationRecord(
        kind="policy",
        subject="echo",
        candidate=version_id,
        passed=True,
        models=["echo@base", "echo@v2"],
        settings={
            "prompts": 2,
            "threshold": 0.5,
            "toxicity_scorer": "detoxify",
            "toxicity_scorer_optimised": "profanity",
        },
        results={
            "current": side,
            "candidate": {**side, "model": "echo@v2", "version": "v2", "mean_reward": 0.4},
            "gate": {
                "passed": True,
                "failures": [],
                "checks": {
                    "text": {
                        "reward": {"mean": 0.3, "low": 0.1, "high": 0.5, "n": 2},
                        "toxicity": {"mean": -0.07, "low": -0.09, "high": -0.05, "n": 2},
                    }
                },
            },
        },
    )
    with session_scope(platform.engine) as session:
        session.add(record)
    return record.id


def test_models_page_shows_evaluations_and_promotes_and_rolls_back_with_csrf(espalier):
    platform, client = espalier.platform, espalier.client
    version = platform.models.add_version("echo", label="v2", adapter=None)
    evaluation = _passed_evaluation(platform, version.id)
    csrf = sign_in(espalier, "operator")
    page = client.get("/console/models").text
    assert "echo@v2" in page and evaluation in page and 'data-metric="reward"' in page
    assert "[-0.0900, -0.0500]" in page and "<code>profanity</code>" in page  # the gate's paired intervals
    assert 'hx-post="/console/models/echo/promote"' in page and "hx-confirm=" in page
    charts = json.loads(re.search(r'id="evaluation-data">(.*?)</script>', page, re.S).group(1))
    assert charts[evaluation]["reward"] == [0.1, 0.4] and charts[evaluation]["toxicity"] == [0.2, 0.2]

    missing = client.post("/console/models/echo/promote", data={"version": "v2"})
    assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
    assert platform.models.info("echo").serving_version == "base"
    promoted = client.post("/console/models/echo/promote", data={"version": "v2"}, headers={"X-CSRF-Token": csrf})
    assert promoted.status_code == 200 and "echo now serves v2" in promoted.text
    assert platform.models.info("echo").serving_version == "v2"
    again = client.post("/console/models/echo/promote", data={"version": "v2"}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409
    rolled = client.post("/console/models/echo/rollback", data={"_csrf": csrf})
    assert rolled.status_code == 200 and platform.models.info("echo").serving_version == "base"
    actions = [e.action for e in platform.audit.list(limit=20)]
    assert "model.promote" in actions and "model.rollback" in actions

    client.cookies.clear()  # a bearer key (even an admin's) is no console session
    bearer = client.post("/console/models/echo/rollback", headers=espalier.headers("admin"), follow_redirects=False)
    assert bearer.status_code == 401


def test_a_version_without_a_passed_evaluation_cannot_be_promoted_from_the_console(espalier):
    espalier.platform.models.add_version("echo", label="untested", adapter=None)
    csrf = sign_in(espalier, "operator")
    assert "needs a passed evaluation" in espalier.client.get("/console/models").text
    refused = espalier.client.post(
        "/console/models/echo/promote", data={"version": "untested"}, headers={"X-CSRF-Token": csrf}
    )
    assert refused.status_code == 409 and refused.json()["code"] == "evaluation_missing"


class TestDocumentsPage:
    """The Documents page on a collection sized for the scripted model's window (MiniLM is real)."""

    @pytest.fixture
    def espalier_settings(self):
        return {"default_model": "echo"}

    def test_routes_refuse_user_keys_and_sessions_without_csrf(self, espalier):
        client = espalier.client
        for role in ("user", "admin"):  # bearer keys never open console pages
            page = client.get("/console/documents", headers=espalier.headers(role), follow_redirects=False)
            assert page.status_code == 303 and page.headers["location"].startswith("/console/sign-in")
        post = client.post("/console/documents/collections", data={"name": "nope"}, headers=espalier.headers("user"))
        assert post.status_code == 401
        form = client.get("/console/sign-in")
        token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
        refused = client.post(
            "/console/sign-in", data={"_csrf": token, "key": espalier.keys["user"]}, follow_redirects=False
        )
        assert refused.status_code != 303 and "espalier_console" not in refused.cookies
        csrf = sign_in(espalier, "operator")
        for path, kwargs in [
            ("/console/documents/collections", {"data": {"name": "no-token"}}),
            ("/console/documents/no-token/upload", {"files": [("file", ("a.txt", b"x", "text/plain"))]}),
            ("/console/documents/no-token/search", {"data": {"query": "x"}}),
        ]:
            response = client.post(path, **kwargs)
            assert response.status_code == 403 and response.json()["code"] == "csrf_failed", path
        assert (
            client.post("/console/documents/collections", data={"name": "wrong", "_csrf": "x" * 43}).status_code == 403
        )
        operator = espalier.platform.keys.authenticate(espalier.keys["operator"])
        assert "no-token" not in {r.name for r in espalier.platform.rag.list_collections(operator)}
        assert (
            client.post(
                "/console/documents/collections", data={"name": "with-token"}, headers={"X-CSRF-Token": csrf}
            ).status_code
            == 200
        )

    def test_create_upload_search_and_delete_with_everything_escaped(self, espalier):
        csrf = sign_in(espalier, "operator")
        client = espalier.client
        headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
        created = client.post(
            "/console/documents/collections", data={"name": "console-docs", "description": SCRIPT}, headers=headers
        )
        assert created.status_code == 200, created.text
        assert "console-docs" in created.text and SCRIPT not in created.text and "&lt;script&gt;" in created.text
        assert "/console/documents" in client.get("/console").text  # the navigation links the page
        page = client.get("/console/documents/console-docs")
        assert page.status_code == 200 and 'id="upload-form"' in page.text and 'id="upload-progress"' in page.text
        body = f"Otters use stones as tools to open shellfish. {SCRIPT}".encode()
        files = [
            ("file", ("otters.txt", body, "text/plain")),
            ("file", (f"{SCRIPT}.md", b"# Badgers\n\nBadgers dig setts.", "text/markdown")),
        ]
        uploaded = client.post("/console/documents/console-docs/upload", files=files, headers=headers)
        assert uploaded.status_code == 200, uploaded.text
        assert "otters.txt: created" in uploaded.text and SCRIPT not in uploaded.text
        no_header = client.post("/console/documents/console-docs/upload", files=files, data={"_csrf": csrf})
        assert no_header.status_code == 400 and "X-CSRF-Token" in no_header.json()["detail"]
        bad = client.post(
            "/console/documents/console-docs/upload",
            files=[("file", ("x.exe", b"MZ", "application/octet-stream"))],
            headers=headers,
        )
        assert bad.status_code == 400 and bad.json()["code"] == "unsupported_type"

        found = client.post(
            "/console/documents/console-docs/search",
            data={"query": "otters stones tools", "mode": "keyword", "k": "3"},
            headers=headers,
        )
        assert found.status_code == 200 and "Otters use stones" in found.text
        assert SCRIPT not in found.text and "&lt;script&gt;alert" in found.text
        assert re.search(r'class="score">\d+\.\d{4}<', found.text)
        bad_mode = client.post(
            "/console/documents/console-docs/search", data={"query": "x", "mode": "telepathy"}, headers=headers
        )
        assert bad_mode.status_code == 400

        documents = espalier.platform.rag.list_documents(
            "console-docs", espalier.platform.keys.authenticate(espalier.keys["operator"])
        )
        otters = next(d for d in documents if d.source == "otters.txt")
        deleted = client.post(f"/console/documents/console-docs/documents/{otters.id}/delete", headers=headers)
        assert deleted.status_code == 200 and "otters.txt" not in deleted.text
        listing = client.get("/console/documents").text
        assert "console-docs" in listing and SCRIPT not in listing
