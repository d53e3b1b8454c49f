"""The command line, run as a real process; `espalier serve` as a real server on loopback."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from espalier.core.infrastructure.db.migrate import head_revision


def run(*args, home, check=True, env=None):
    environment = {**os.environ, "ESPALIER_HOME": str(home), "ESPALIER_LOG_JSON": "false", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "espalier.api.cli", *args], env=environment, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"espalier {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def test_version(tmp_path):
    from espalier import __version__

    assert run("--version", home=tmp_path).stdout.strip() == f"espalier {__version__}"


def test_db_upgrade_and_current(tmp_path):
    assert f"revision {head_revision()}" in run("db", "upgrade", home=tmp_path).stdout
    assert "(up to date)" in run("db", "current", home=tmp_path).stdout
    assert (tmp_path / "espalier.db").exists()


def test_keys_create_list_revoke(tmp_path):
    created = run("keys", "create", "--name", "ci-bot", "--role", "operator", home=tmp_path)
    key = created.stdout.strip()
    assert re.fullmatch(r"esp_[0-9a-f]{12}_[A-Za-z0-9-]+", key)
    listing = json.loads(run("keys", "list", "--json", home=tmp_path).stdout)["keys"]
    assert [(k["name"], k["role"]) for k in listing] == [("ci-bot", "operator")]
    assert key.split("_")[2] not in json.dumps(listing) and "secret_hash" not in json.dumps(listing)
    key_id = listing[0]["id"]
    assert "revoked" in run("keys", "revoke", key_id, home=tmp_path).stdout
    assert json.loads(run("keys", "list", "--json", home=tmp_path).stdout)["keys"][0]["revoked_at"]


def test_bad_input_gives_clear_errors(tmp_path):
    result = run("keys", "create", "--name", "x", "--role", "root", home=tmp_path, check=False)
    assert result.returncode == 2 and "unknown role 'root'" in result.stderr
    result = run("keys", "revoke", "nope", home=tmp_path, check=False)
    assert result.returncode == 2 and "no API key with id 'nope'" in result.stderr
    result = run("jobs", "show", "job_x", home=tmp_path, check=False)
    assert result.returncode == 2 and "no job" in result.stderr


def test_models_promote_and_rollback_refuse_clearly_on_a_fresh_database(tmp_path):
    model = "smollm2-135m-instruct"
    result = run("models", "promote", model, "nope", home=tmp_path, check=False)
    assert result.returncode == 2 and f"model '{model}' has no version 'nope'" in result.stderr
    result = run("models", "promote", model, "base", home=tmp_path, check=False)
    assert result.returncode == 2 and "already serves" in result.stderr
    result = run("models", "rollback", model, home=tmp_path, check=False)
    assert result.returncode == 2 and "no earlier serving version" in result.stderr
    assert "action" in run("models", "history", model, home=tmp_path).stdout


def test_jobs_list_empty(tmp_path):
    assert json.loads(run("jobs", "list", "--json", home=tmp_path).stdout) == {"jobs": []}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home):
    port = free_port()
    env = {**os.environ, "ESPALIER_HOME": str(home), "ESPALIER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "espalier.api.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Serving on" in line:
            break
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return base, "".join(lines), process


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_serve_writes_the_bootstrap_key_to_a_private_file_not_the_log(tmp_path):
    home = tmp_path / "home"
    base, output, process = start_server(home)
    try:
        # stdout is a pipe here, as under a container runtime or a service manager: no key in it
        key_file = home / "bootstrap-admin.key"
        assert "esp_" not in output and str(key_file) in output, output
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert re.fullmatch(r"esp_[0-9a-f]{12}_[A-Za-z0-9-]+", key)
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.get(base + "/api/plugins", headers=headers)
        assert response.status_code == 200
        assert "calculator" in {p["name"] for p in response.json()["plugins"]}
        assert httpx.get(base + "/api/plugins").status_code == 401
    finally:
        stop(process)
    base, output, process = start_server(home)
    try:
        assert "Serving on" in output and "bootstrap-admin.key" not in output  # the first start only
        # ESPALIER_HOME and what is in it are this user's alone
        assert home.stat().st_mode & 0o777 == 0o700
        for path in [home / "espalier.db", *home.glob("espalier.db-*"), *(home / "artifacts").rglob("*")]:
            assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
        assert httpx.get(base + "/api/me", headers=headers).json()["role"] == "admin"
    finally:
        stop(process)


def test_labeling_create_and_status(tmp_path):
    key = run("keys", "create", "--name", "ann", "--role", "user", home=tmp_path).stdout.strip()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I reset my password?\n\nCan I get a refund?\n")
    created = json.loads(
        run(
            "labeling",
            "create",
            "support",
            "--prompts",
            str(prompts),
            "--n",
            "2",
            "--labeler",
            key.split("_")[1],
            home=tmp_path,
        ).stdout
    )
    task_id = created["task_id"]
    assert created["job_id"].startswith("job_") and created["progress"]["items"] == 2
    assert created["progress"]["rankings_total"] == 4 and created["progress"]["labelers"] == {
        key.split("_")[1]: {"done": 0, "leased": 0}
    }
    listing = run("labeling", "status", home=tmp_path).stdout
    assert task_id in listing and "generating" in listing
    status = json.loads(run("labeling", "status", task_id, "--json", home=tmp_path).stdout)
    assert status["progress"]["items_generated"] == 0 and status["agreement"]["alpha"] is None  # a server generates
    bad = run("labeling", "create", "x", "--labeler", "nokey", "--prompts", str(prompts), home=tmp_path, check=False)
    assert bad.returncode == 2 and "no active API key with id nokey" in bad.stderr


def test_reward_train_checks_like_the_api_and_is_audited(tmp_path):
    """`espalier reward train` goes through the same service as POST /api/reward/train: too few
    pairs are refused before a job exists, and a queued training is audited."""
    refused = run("reward", "train", home=tmp_path, check=False)
    assert refused.returncode == 2 and "training needs at least" in refused.stderr, refused.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(f'{{"prompt": "q{i}", "chosen": "good answer {i}", "rejected": "bad {i}"}}\n' for i in range(12))
    )
    run("pairs", "import", str(pairs), home=tmp_path)
    queued = run("reward", "train", "--max-steps", "1", home=tmp_path)
    assert "queued job_" in queued.stdout and "on 12 pairs" in queued.stdout
    from espalier.core.infrastructure.audit import AuditLog
    from espalier.core.infrastructure.db.engine import create_db_engine

    engine = create_db_engine(f"sqlite:///{tmp_path / 'espalier.db'}")
    try:
        actions = [(e.action, e.details.get("via")) for e in AuditLog(engine).list(limit=10)]
    finally:
        engine.dispose()
    assert ("reward.train", "cli") in actions and ("pairs.import", None) in actions


def test_serving_on_is_printed_only_when_the_server_answers(tmp_path):
    # A port someone else holds: start-up fails, and no "Serving on" line says otherwise.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "ESPALIER_HOME": str(tmp_path / "home"), "ESPALIER_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "espalier.api.cli", "serve"], env=env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode != 0
    assert "Serving on" not in result.stdout + result.stderr
