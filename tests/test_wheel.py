"""The built wheel is a complete `espalier` package: it installs into a fresh virtual environment
and runs outside the source tree (migrations and templates included, tests not)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from espalier.core.infrastructure.db.migrate import head_revision
from tests.support import REPO


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools would pack stale files from there
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    [wheel] = dist.glob("espalier-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "espalier/__init__.py" in names and "espalier/setup.py" not in names
    assert "espalier/core/infrastructure/db/migrations/versions/0001_foundation_keys_audit_jobs.py" in names
    assert "espalier/core/infrastructure/db/migrations/script.py.mako" in names
    for console_file in (
        "templates/base.html",
        "templates/_candidates.html",
        "static/htmx-2.0.4.min.js",
        "static/chart-4.4.9.umd.min.js",
        "static/console.js",
        "static/console.css",
    ):
        assert f"espalier/api/console/{console_file}" in names, console_file
    assert not any(
        name.startswith(("espalier/tests/", "tests/", "espalier/examples/", "espalier/bench/")) for name in names
    )

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # The fresh venv gets the wheel itself; its third-party dependencies come from this
    # environment's site-packages (not its editable espalier, whose finder a .pth line skips).
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {**os.environ, "ESPALIER_HOME": str(tmp_path / "home")}
    espalier = env_dir / "bin" / "espalier"
    version = subprocess.run([espalier, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("espalier ")
    where = subprocess.run(
        [
            python,
            "-c",
            "import espalier, espalier.core, espalier.api.app, espalier.plugins.calculator; print(espalier.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(env_dir)), where.stdout
    upgraded = subprocess.run([espalier, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {head_revision()}" in upgraded.stdout
