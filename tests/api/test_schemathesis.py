"""A bounded schemathesis pass against a real `espalier serve`: every operation but those that
start model work, generated from the OpenAPI document, with an admin key. No server error and no
response that the document does not describe."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from espalier.api.testing import RunningServer

#: Operations left out: each starts model inference or training (minutes of CPU per example), or
#: fetches the network. They have their own tests.
EXCLUDED = (
    r"^/(v1/chat/completions|v1/completions"
    r"|api/agents/[^/]+/runs|api/chains/.*|api/policy/.*|api/reward/train|api/guardrails/train"
    r"|api/jobs|api/labeling/tasks/[^/]+/generate|api/models/[^/]+/evaluations|api/collections/[^/]+/urls)$"
)


@pytest.mark.slow
def test_generated_requests_get_no_server_error_and_documented_answers(tmp_path):
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is a dev dependency (pip install -e .[dev])"
    server = RunningServer(
        tmp_path / "home",
        env={"ESPALIER_RATE_LIMIT_PER_MINUTE": "100000", "ESPALIER_AUTH_FAILURES_PER_MINUTE": "100000"},
    )
    try:
        command = [
            binary,
            "run",
            server.base + "/schema/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--header",
            f"Authorization: Bearer {server.admin_key}",
            "--max-examples",
            "5",
            "--phases",
            "examples,fuzzing",
            "--exclude-path-regex",
            EXCLUDED,
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--seed",
            "1",
            "--no-color",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-2000:]
    assert "Tested:" in done.stdout
