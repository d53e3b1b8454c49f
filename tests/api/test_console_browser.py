"""The console in a real browser: Playwright driving Debian's Chromium against a real server with
the real shipped model. Screenshots of each page go to test-artifacts/console/ (ignored by git);
every test fails on any browser console error or uncaught page error."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import create_engine, text

from espalier.api.testing import RunningServer
from tests.support import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache_dir):
    running = RunningServer(
        tmp_path_factory.mktemp("console-home"), env={"ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir)}
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser_errors():
    return []


@pytest.fixture(scope="module")
def dialogs():
    return []


@pytest.fixture(scope="module")
def page(server, browser_errors, dialogs):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=server.base, viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(30_000)
        tab.on(
            "console",
            lambda message: (
                browser_errors.append(f"console {message.type}: {message.text}") if message.type == "error" else None
            ),
        )
        tab.on("pageerror", lambda error: browser_errors.append(f"page error: {error}"))

        def on_dialog(dialog):  # hx-confirm on revoke and cancel; an alert would be injected script
            dialogs.append((dialog.type, dialog.message))
            dialog.accept()

        tab.on("dialog", on_dialog)
        yield tab
        context.close()
        browser.close()


@pytest.fixture(autouse=True)
def no_browser_errors(browser_errors):
    yield
    assert browser_errors == [], browser_errors


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_sign_in_with_an_admin_key_and_see_the_overview_charts(page, server):
    page.goto("/console")
    assert "/console/sign-in" in page.url
    shot(page, "01-sign-in")
    page.fill("input[name=key]", server.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console$"))
    assert page.locator("h1").inner_text().startswith("Overview")
    for chart in ("chart-requests", "chart-latency", "chart-tokens"):
        assert page.evaluate(f"Chart.getChart(document.getElementById('{chart}')) !== undefined"), chart
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["espalier_console"]["httpOnly"] and cookies["espalier_console"]["sameSite"] == "Strict"
    assert server.admin_key not in str(cookies)
    shot(page, "02-overview-empty")


def test_chat_in_the_playground_rank_and_see_it_stored(page, server):
    page.goto("/console/playground")
    page.fill("textarea[name=prompt]", "Name a colour of the sky.")
    page.fill("input[name=n]", "2")
    page.fill("input[name=max_tokens]", "12")
    page.click("#chat-form button[type=submit]")
    page.wait_for_selector(".candidate >> nth=1", timeout=180_000)
    texts = page.locator(".candidate pre.completion").all_inner_texts()
    assert len(texts) == 2 and all(t.strip() for t in texts)
    request_id = page.locator("input[name=request_id]").input_value()
    ranks = page.locator(".candidate input[type=number]")
    ranks.nth(0).fill("2")
    ranks.nth(1).fill("1")
    page.locator(".candidate input[name=unacceptable]").nth(0).check()
    shot(page, "03-playground-candidates")
    page.click("form.ranking button[type=submit]")
    page.wait_for_selector("#ranking-saved")
    shot(page, "04-playground-ranked")
    engine = create_engine(f"sqlite:///{server.home / 'espalier.db'}")
    with engine.connect() as connection:
        kind, payload = connection.execute(
            text("SELECT kind, payload FROM feedback WHERE request_id = :r"), {"r": request_id}
        ).one()
    engine.dispose()
    candidates = __import__("json").loads(payload)["candidates"]
    assert kind == "ranking" and sorted(c["rank"] for c in candidates) == [1, 2]
    assert [c["unacceptable"] for c in candidates].count(True) == 1
    page.goto("/console")
    assert page.locator(".card b").first.inner_text() == "1"  # the request now counts in the overview
    shot(page, "05-overview-with-traffic")

    # the ranking is on the Feedback page; open its request and flag a candidate for the trainers
    page.click("nav a[href='/console/feedback']")
    row = page.locator("#feedback-table tr", has_text=request_id)
    assert "ranking" in row.inner_text() and "unacceptable" in row.inner_text()
    assert page.locator("#pair-counts b").inner_text() == "1"
    shot(page, "05b-feedback")
    row.locator(f"a[href='/console/feedback/requests/{request_id}']").click()
    assert page.locator(".candidate").count() == 2 and page.locator(".feedback-on", has_text="rank 1").count() == 1
    first = page.locator(".candidate").nth(0)
    first.locator(".flag button", has_text="toxic").first.click()
    first.locator(".badge", has_text="flagged toxic").wait_for()
    shot(page, "05c-feedback-request-flagged")
    engine = create_engine(f"sqlite:///{server.home / 'espalier.db'}")
    with engine.connect() as connection:
        flagged = connection.execute(text("SELECT category, label, text FROM guardrail_flags")).all()
    engine.dispose()
    assert [(c, label) for c, label, _ in flagged] == [("toxicity", 1)] and flagged[0][2].strip() == texts[0].strip()


def test_create_a_key_see_it_once_and_revoke_it(page, server):
    page.goto("/console/keys")
    page.fill("input[name=name]", "browser-made")
    page.select_option("select[name=role]", "user")
    page.click("#keys form button[type=submit]")
    key = page.locator("#new-key").inner_text()
    assert re.fullmatch(r"esp_[0-9a-f]{12}_\S+", key)
    assert (
        httpx.get(server.base + "/api/me", headers={"Authorization": f"Bearer {key}"}).json()["name"] == "browser-made"
    )
    shot(page, "06-keys-created")
    page.reload()
    assert key not in page.content()  # shown once
    row = page.locator("tr", has_text="browser-made")
    row.locator("button", has_text="Revoke").click()
    page.locator("tr", has_text="browser-made").locator(".badge", has_text="revoked").wait_for()
    assert httpx.get(server.base + "/api/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    shot(page, "07-keys-revoked")


def test_stored_markup_shows_as_text_and_never_runs(page, dialogs):
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    page.goto("/console/keys")
    page.fill("input[name=name]", hostile)
    page.click("#keys form button[type=submit]")
    page.locator("#new-key").wait_for()
    for path in ("/console/keys", "/console/audit"):
        page.goto(path)
        assert page.locator("td", has_text=hostile).count() >= 1, path  # the markup is visible as text
        assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert [d for d in dialogs if d[0] == "alert"] == []


def test_a_job_appears_by_polling_and_shows_its_error(page, server):
    page.goto("/console/jobs")
    submitted = httpx.post(
        server.base + "/api/jobs", headers=server.headers(), json={"kind": "train:injection-classifier", "params": {}}
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    page.locator(f"a[href='/console/jobs/{job_id}']").wait_for(timeout=20_000)  # arrived through HTMX polling
    page.locator("tr", has_text=job_id).locator(".badge", has_text="failed").wait_for(timeout=30_000)
    shot(page, "08-jobs")
    page.click(f"a[href='/console/jobs/{job_id}']")
    assert page.locator("#job-status").inner_text() == "failed"
    assert "data_path" in page.locator("pre.error").inner_text()
    shot(page, "09-job-detail")


def test_a_reward_training_job_draws_its_curves_while_it_runs(page, server):
    pairs = (REPO.parent / "shared" / "data" / "hh_pairs_train.jsonl").read_text().splitlines()[:40]
    imported = httpx.post(server.base + "/api/pairs/import", headers=server.headers(), content="\n".join(pairs))
    assert imported.status_code == 200, imported.text
    submitted = httpx.post(
        server.base + "/api/jobs",
        headers=server.headers(),
        json={
            "kind": "train:reward",
            "params": {"kind": "cross-encoder", "epochs": 2, "batch_size": 4, "max_length": 48},
        },
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    page.goto(f"/console/jobs/{job_id}")
    points = (
        "(() => { const c = Chart.getChart(document.getElementById('chart-job-metrics'));"
        " const d = c.data.datasets.find((s) => s.label === 'loss'); return d ? d.data.length : 0; })()"
    )
    # functions, not expression strings: Playwright evals a string in the page, which the CSP forbids
    page.wait_for_function(f"() => {points} > 0", timeout=240_000)
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=300_000)
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('chart-job-metrics')).data.datasets"
        ".some((s) => s.label === 'eval_accuracy')",
        timeout=30_000,
    )
    steps = httpx.get(f"{server.base}/api/jobs/{job_id}/metrics", headers=server.headers()).json()["metrics"]
    assert page.evaluate(points) == len([row for row in steps if "loss" in row["values"]]) > 0
    assert page.locator("#job-metrics-empty").is_hidden()
    shot(page, "09b-job-curves")


def test_run_the_react_agent_and_watch_its_steps(page):
    page.goto("/console/agents")
    page.select_option("select[name=agent]", "react")
    page.fill("textarea[name=question]", "What is 17 * 23? Use the calculator.")
    page.fill("input[name=max_steps]", "2")
    page.click("#agent-form button[type=submit]")
    page.locator("#agent-steps li.step").first.wait_for(timeout=240_000)  # a step shows before the run ends
    page.wait_for_selector("#agent-trace[data-status]", timeout=240_000)
    assert page.locator("#agent-run-id").inner_text().startswith("run_")
    assert page.locator("#agent-status").inner_text().split()[0] in ("ok", "step_limit", "time_limit", "error")
    shot(page, "13-agent-run")
    run_id = page.locator("#agent-run-id").inner_text()
    assert page.locator(f"#agent-runs a[href='/console/agents/runs/{run_id}']").count() == 1  # listed at once
    page.goto("/console/agents")
    page.click(f"a[href='/console/agents/runs/{run_id}']")
    assert page.locator("h1").inner_text().startswith("react run")
    assert page.locator(".trace li.step").count() >= 1
    shot(page, "14-agent-trace")


@pytest.mark.parametrize(
    "path, name, heading",
    [
        ("/console/playground", "10a-playground", "Playground"),
        ("/console/feedback", "10b-feedback", "Feedback and data"),
        ("/console/agents", "10c-agents", "Agents"),
        ("/console/jobs", "10d-jobs", "Jobs"),
        ("/console/keys", "10e-keys", "API keys"),
        ("/console/models", "10-models", "Models"),
        ("/console/plugins", "11-plugins", "Plugins"),
        ("/console/audit", "12-audit", "Audit log"),
    ],
)
def test_each_page_renders(page, path, name, heading):
    page.goto(path)
    assert page.locator("h1").inner_text().startswith(heading)
    shot(page, name)
    if path == "/console/models":
        assert page.locator("tr", has_text="smollm2-135m-instruct").locator(".badge", has_text="serving").count() == 1
    if path == "/console/audit":
        for action in ("console.sign_in", "key.create", "key.revoke", "job.submit", "guardrail.flag", "agent.run"):
            assert page.locator("td", has_text=action).count() >= 1, action


def test_label_a_task_with_the_keyboard_and_see_its_agreement(page, server):
    import time

    admin_id = server.admin_key.split("_")[1]
    created = httpx.post(
        server.base + "/api/labeling/tasks",
        headers=server.headers(),
        timeout=30,
        json={
            "name": "browser labeling",
            "prompts": ["Say hello in French."],
            "n": 2,
            "max_tokens": 8,
            "rankings_required": 1,
            "labelers": [admin_id],
            "seed": 3,
        },
    )
    assert created.status_code == 202, created.text
    task_id, job_id = created.json()["task"]["id"], created.json()["job_id"]
    deadline = time.monotonic() + 240
    while httpx.get(f"{server.base}/api/jobs/{job_id}", headers=server.headers()).json()["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, "candidates were not generated in time"
        time.sleep(1)
    page.goto(f"/console/labeling/{task_id}/label")
    if "/console/sign-in" in page.url:
        page.fill("input[name=key]", server.admin_key)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/label$"))
    assert page.locator("article.candidate").count() == 2 and "Keyboard" in page.locator("#shortcuts").inner_text()
    page.keyboard.press("1")  # candidate 1: rank 1, then on to candidate 2
    page.keyboard.press("f")  # candidate 2: unacceptable
    page.keyboard.press("2")  # candidate 2: rank 2
    shot(page, "13-labeling-queue")
    page.keyboard.press("Enter")
    page.wait_for_selector("#ranking-saved")
    assert page.locator("#queue-empty").count() == 1
    stored = httpx.get(f"{server.base}/api/feedback", headers=server.headers()).json()["feedback"][0]
    assert [(c["rank"], c["unacceptable"]) for c in stored["payload"]["candidates"]] == [(1, False), (2, True)]
    page.goto(f"/console/labeling/{task_id}")
    assert "1/1 items done" in page.locator("#labeling-progress").inner_text()
    page.wait_for_function("() => document.querySelector('canvas[data-chart=agreement]').width > 0")
    shot(page, "14-labeling-task")


def test_upload_a_document_with_progress_and_find_it_in_search(page, tmp_path):
    page.goto("/console/documents")
    assert page.locator("h1").inner_text().startswith("Documents")
    page.fill("#collection-form input[name=name]", "field-notes")
    page.fill("#collection-form input[name=description]", "<b>notes</b> from the field")
    page.click("#collection-form button[type=submit]")
    page.wait_for_selector("#created-collection")
    assert page.locator("#collections-table td", has_text="<b>notes</b> from the field").count() == 1  # shown as text
    page.click("#collections-table a:text('field-notes')")
    page.wait_for_url(re.compile(r"/console/documents/field-notes$"))
    notes = tmp_path / "heron.md"
    notes.write_text(
        "# Herons\n\nThe grey heron stands motionless in shallow water before spearing a fish.\n\n"
        "# Kingfishers\n\nThe kingfisher dives from a perch <script>alert(1)</script> into the stream.\n"
    )
    page.set_input_files("#upload-form input[type=file]", str(notes))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-results", timeout=180_000)
    assert page.locator("#upload-status").inner_text() == "done"
    assert page.locator("#upload-progress").evaluate("bar => bar.value") == 100
    assert page.locator("#documents-table td", has_text="heron.md").count() == 1
    page.fill("#search-form input[name=query]", "what does the kingfisher dive from")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#chunks .chunk")
    first = page.locator("#chunks .chunk").first
    assert (
        "kingfisher dives" in first.inner_text() and "<script>alert(1)</script>" in first.inner_text()
    )  # escaped text
    assert float(first.locator(".score").inner_text()) > 0
    shot(page, "15-documents-search")
    page.click("#documents-table button:text('Delete')")  # hx-confirm accepted by the dialog handler
    page.wait_for_selector("#documents-table td:text('No documents yet: upload some above.')")


def test_sign_out_returns_to_the_sign_in_form(page):
    page.goto("/console")
    page.click("form.who button[type=submit]")
    page.wait_for_url(re.compile(r"/console/sign-in"))
    page.goto("/console/keys")
    assert "/console/sign-in" in page.url
