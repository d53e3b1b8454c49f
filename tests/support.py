"""Paths the tests share: the repository, and the public data beside it (never copied in)."""

from pathlib import Path

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
SHARED_DATA = REPO.parent / "shared" / "data"
