"""GGUF files as transformers loads them: dequantised once into a safetensors folder.

Dequantising a GGUF file takes seconds, so the first load writes a plain safetensors folder
(config, tokenizer, float32 weights) under the cache directory, keyed by the file's identity;
later loads read that folder, which is several times faster. The serving engine and the policy
trainer both load models this way, under one process-wide lock.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.common.model_sources import ResolvedSource

log = logging.getLogger(__name__)

_COMPLETE_MARKER = "espalier-complete"


#: Held while weights are built in this process. ``from_pretrained`` creates modules on the meta
#: device by patching ``torch.nn.Module`` for the whole process, so two loads in two threads (a
#: request loading a model while a training job loads its own copy) can hand one of them
#: meta tensors. Anyone building a transformers model in the server process takes this lock.
LOAD_LOCK = threading.RLock()


def gguf_cache_folder(source: ResolvedSource, cache_dir: str | os.PathLike[str]) -> Path:
    stem = source.path.stem.lower().replace(" ", "-")
    return Path(cache_dir) / "gguf" / f"{stem}-{source.identity}"


def is_converted(source: ResolvedSource, cache_dir: str | os.PathLike[str]) -> bool:
    """Whether the safetensors copy of this GGUF file is already in the cache."""
    return (gguf_cache_folder(source, cache_dir) / _COMPLETE_MARKER).is_file()


def convert_gguf(source: ResolvedSource, cache_dir: str | os.PathLike[str]) -> Path:
    """Dequantise a GGUF file once into a safetensors folder and return that folder.

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights move into a model
    built from the config (without its quantisation entry) and that one is saved. The folder is
    written under a temporary name and renamed when complete, so a crash or a second process
    never leaves a half-written cache behind.
    """
    target = gguf_cache_folder(source, cache_dir)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with LOAD_LOCK:
        if not (target / _COMPLETE_MARKER).is_file():
            _convert_in_child(source.path, target)
    return target


def _convert_in_child(path: Path, target: Path) -> None:
    """Run :func:`_convert` in a child process. A process that dequantised a GGUF file itself
    decoded at about half speed afterwards, with the very same weights (measured: 35 against 65
    tokens/s for SmolLM2-135M in bfloat16, whatever memory was handed back). Most likely the
    cause found later for packing (see :meth:`.engine.GenerationEngine.call`: torch work in a
    thread other than the engine's leaves more OpenMP threads than cores, and decode steps stop
    spinning between parallel regions); not measured apart. The child also keeps the float32
    copies out of the server's memory."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", __name__, str(path), str(target)], capture_output=True, text=True)
    if done.returncode != 0 or not (target / _COMPLETE_MARKER).is_file():
        reason = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), "no output")
        raise InvalidInput(f"could not convert the GGUF file {path} to safetensors: {reason[:300]}")
    log.info("Converted %s to safetensors in %.1fs (%s)", path, time.perf_counter() - started, target)


def _convert(path: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / _COMPLETE_MARKER).is_file():
        return target
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    del gguf_model

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(str(path))
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":  # the child of _convert_in_child: python -m ...loader GGUF_PATH TARGET
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))
