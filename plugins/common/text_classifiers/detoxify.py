"""Guardrail scorer for any detoxify-format checkpoint, run through detoxify's own code.

A detoxify checkpoint is ``torch.save({"config": ..., "state_dict": ...})``: ``config["arch"]
["args"]`` names the transformers model and tokenizer classes and ``model_type`` (a hub name or
a local folder), ``config["dataset"]["args"]["classes"]`` the output categories. detoxify's
published checkpoints name hub models and download at run time, so offline they need a local
config folder: ``huggingface_config_path`` (tokenizer and model config, saved with
``save_pretrained``). Checkpoints from :func:`~.training.train_toxicity_model` carry the
folder's absolute path in ``model_type`` and keep the folder beside them as ``hf_config/``.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.contracts import Direction, GuardrailScore
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.common.text_classifiers.training import CONFIG_DIR_NAME

# detoxify renames these classes when it loads a checkpoint; mirror it to know categories early.
_DETOXIFY_RENAMES = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


class DetoxifyScorer:
    """Guardrail that scores text with a detoxify checkpoint.

    :param checkpoint: the ``.ckpt`` file.
    :param config_dir: the offline config and tokenizer folder; defaults to ``hf_config/``
        beside the checkpoint when present.
    :param name: the guardrail's name (``detoxify`` by default).
    :param batch_size: texts per forward pass.

    The checkpoint is read once here (for its categories); the model loads on first ``score``.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        config_dir: str | Path | None = None,
        *,
        name: str = "detoxify",
        batch_size: int = 32,
        device: str = "cpu",
    ):
        self.name = name
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise InvalidInput(
                f"detoxify checkpoint {self.checkpoint} does not exist; train one with "
                "train_toxicity_model(...) or point ESPALIER_TOXICITY_CHECKPOINT at a .ckpt file"
            )
        if config_dir is None and (self.checkpoint.parent / CONFIG_DIR_NAME).is_dir():
            config_dir = self.checkpoint.parent / CONFIG_DIR_NAME
        self.config_dir = Path(config_dir).expanduser() if config_dir else None
        if self.config_dir is not None and not (self.config_dir / "config.json").is_file():
            raise InvalidInput(f"{self.config_dir} has no config.json; give the folder saved beside the checkpoint")
        self.batch_size = batch_size
        self.device = device
        self._lock = threading.Lock()
        self._detoxify: Any = None
        loaded = _read_checkpoint(self.checkpoint)
        model_type = str(loaded["config"]["arch"]["args"].get("model_type", ""))
        if self.config_dir is None and not Path(model_type).is_dir():
            raise InvalidInput(
                f"{self.checkpoint} builds its model from '{model_type}', which is not a local folder, and no config "
                "folder was given: set ESPALIER_TOXICITY_CONFIG_DIR (or config_dir) to a folder holding that "
                "model's config and tokenizer saved with save_pretrained; nothing is downloaded"
            )
        classes = loaded["config"]["dataset"]["args"]["classes"]
        self.categories = tuple(_DETOXIFY_RENAMES.get(c, c) for c in classes)
        card = loaded.get("espalier", {}).get("model_card", {})
        self.model_card: dict[str, Any] = dict(card)
        self.version = f"{card.get('name', self.checkpoint.stem)}@{_file_digest(self.checkpoint)[:12]}"

    def load(self) -> Any:
        """Load the model now (it otherwise loads on the first ``score``); returns the Detoxify object."""
        with self._lock:
            if self._detoxify is None:
                from detoxify import Detoxify

                source: Any = str(self.checkpoint)
                model_type = _read_checkpoint(self.checkpoint)["config"]["arch"]["args"].get("model_type", "")
                if self.config_dir is not None and not Path(model_type).is_dir():
                    # detoxify builds the config from model_type before it reads the config folder;
                    # a moved folder (or a hub name, offline) fails there, so point it at our folder.
                    source = _relocated(self.checkpoint, self.config_dir)
                self._detoxify = Detoxify(
                    checkpoint=source,
                    device=self.device,
                    huggingface_config_path=str(self.config_dir) if self.config_dir else None,
                )
        return self._detoxify

    def score(self, texts: Sequence[str], *, direction: Direction = "input") -> list[GuardrailScore]:
        if not texts:
            return []
        detoxify = self.load()
        results: list[GuardrailScore] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            with self._lock:  # one forward pass at a time; torch already uses every core
                predicted = detoxify.predict(chunk)
            columns = {c: v if isinstance(v, list) else [v] for c, v in predicted.items()}
            for i in range(len(chunk)):
                results.append(
                    GuardrailScore(
                        scorer=self.name,
                        scores={c: float(columns[c][i]) for c in self.categories},
                        version=self.version,
                    )
                )
        return results


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:
        raise InvalidInput(f"{path} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise InvalidInput(f"{path} is not a detoxify checkpoint: it needs 'config' and 'state_dict'")
    try:
        loaded["config"]["dataset"]["args"]["classes"]
        loaded["config"]["arch"]["args"]
    except (KeyError, TypeError):
        raise InvalidInput(f"{path}: config lacks dataset.args.classes or arch.args (detoxify's layout)") from None
    return loaded


def _relocated(checkpoint: Path, config_dir: Path) -> io.BytesIO:
    import torch

    loaded = _read_checkpoint(checkpoint)
    loaded["config"]["arch"]["args"]["model_type"] = str(config_dir.resolve())
    buffer = io.BytesIO()
    torch.save(loaded, buffer)
    buffer.seek(0)
    return buffer


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
