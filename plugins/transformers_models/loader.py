"""Loading weights: dtype choice, the safetensors cache for GGUF files, one copy per process.

Dequantising a GGUF file takes seconds, so the first load writes a plain safetensors folder
(config, tokenizer, float32 weights) under the cache directory, keyed by the file's identity;
later loads read that folder, which is several times faster. Loaded models are shared by
everyone in the process: loading the same (source, dtype, adapter) again returns the same
object.
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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from espalier.core.errors import InvalidInput, NotFound

from espalier.plugins.transformers_models.attention import enable_row_attention
from espalier.plugins.transformers_models.packing import pack_linear_weights
from espalier.plugins.transformers_models.sources import ResolvedSource, resolve_source

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_COMPLETE_MARKER = "espalier-complete"

#: Held while weights are built in this process. ``from_pretrained`` creates modules on the meta
#: device by patching ``torch.nn.Module`` for the whole process, so two loads in two threads (a
#: request loading a model while a training job loads its own copy) can hand one of them
#: meta tensors. Anyone building a transformers model in the server process takes this lock.
LOAD_LOCK = threading.RLock()


@dataclass
class LoadedModel:
    """Weights and tokenizer of one model in memory, with the lock every user of it takes."""

    model: Any
    tokenizer: Any
    dtype: torch.dtype
    source: ResolvedSource
    load_seconds: float
    from_cache: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Batched decoding gives each row its own attention (see :mod:`.attention`); False keeps the
    #: model's own attention, and its sequences then decode one per forward pass.
    row_attention: bool = False
    #: The generation engine's cache of recent prompts' keys and values (:mod:`.prefix`), made
    #: on first use; it goes with the weights.
    prefixes: Any = None


@lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU has native bfloat16 instructions (AVX512-BF16 or AMX); bfloat16 without
    them is emulated and slower than float32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_dtype(requested: str | None) -> torch.dtype:
    """``auto`` (or empty) picks bfloat16 where the CPU computes it natively, float32 otherwise."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidInput(f"Unknown dtype {requested!r}; use auto, float32, bfloat16 or float16.") from None


def gguf_cache_folder(source: ResolvedSource, cache_dir: str | os.PathLike[str]) -> Path:
    stem = source.path.stem.lower().replace(" ", "-")
    return Path(cache_dir) / "gguf" / f"{stem}-{source.identity}"


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


def load_weights(spec_source: str, dtype: torch.dtype, adapter: str | None, cache_dir: str) -> LoadedModel:
    """Load a model from disk without consulting the process cache (see :func:`get_or_load`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = resolve_source(spec_source)
    from_cache = False
    if source.kind == "gguf":
        from_cache = (gguf_cache_folder(source, cache_dir) / _COMPLETE_MARKER).is_file()
        folder = convert_gguf(source, cache_dir)
    else:
        folder = source.path
    with LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        if adapter:
            model = _apply_adapter(model, adapter)
    model.eval()
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidInput(
            f"The model at {spec_source} has no chat template in its tokenizer; Espalier serves chat models only."
        )
    row_attention = enable_row_attention(model)
    from espalier.plugins.transformers_models.engine import get_engine

    engine = get_engine()
    if engine.pack_prefill_weights:  # on the engine thread (see GenerationEngine.call), a layer at a time
        pack_linear_weights(model, engine.call)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        source=source,
        load_seconds=time.perf_counter() - started,
        from_cache=from_cache,
        row_attention=row_attention,
    )


def _apply_adapter(model: Any, adapter: str) -> Any:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise NotFound(f"LoRA adapter folder {adapter} has no adapter_config.json; give a folder saved by peft.")
    try:
        from peft import PeftModel
    except ImportError:
        raise InvalidInput("Loading a LoRA adapter needs the peft package: `pip install peft`.") from None
    # This base copy belongs to this (source, dtype, adapter) alone, so the adapter is merged into
    # it: serving then costs what the base model costs, and concurrent requests on different
    # versions never share a module whose active adapter could be switched under them (peft's
    # multi-adapter switching is per module, not per request). Memory is bounded instead by the
    # model service unloading the least recently used versions (ESPALIER_MAX_LOADED_VERSIONS).
    return PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()


# One copy per process ------------------------------------------------------------------------

_loaded: dict[tuple[str, str, str | None], LoadedModel] = {}
_key_locks: dict[tuple[str, str, str | None], threading.Lock] = {}
_registry_lock = threading.Lock()


def get_or_load(spec_source: str, dtype: torch.dtype, adapter: str | None, cache_dir: str) -> LoadedModel:
    """The shared :class:`LoadedModel` for (source, dtype, adapter), loading it on first use.

    Two threads asking for the same model at once load it once; different models load in
    parallel.
    """
    resolved = resolve_source(spec_source)
    adapter_key = str(Path(adapter).expanduser().resolve()) if adapter else None
    key = (f"{resolved.kind}:{resolved.path.resolve()}", str(dtype), adapter_key)
    with _registry_lock:
        if key in _loaded:
            return _loaded[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _registry_lock:
            if key in _loaded:
                return _loaded[key]
        loaded = load_weights(spec_source, dtype, adapter, cache_dir)
        with _registry_lock:
            _loaded[key] = loaded
        return loaded


def release(spec_source: str, dtype: torch.dtype, adapter: str | None) -> bool:
    """Forget one shared model (it is freed once no :class:`ChatModel` refers to it any more, so
    requests still generating with it finish first). True when it was loaded."""
    resolved = resolve_source(spec_source)
    adapter_key = str(Path(adapter).expanduser().resolve()) if adapter else None
    key = (f"{resolved.kind}:{resolved.path.resolve()}", str(dtype), adapter_key)
    with _registry_lock:
        _key_locks.pop(key, None)
        return _loaded.pop(key, None) is not None


def unload_all() -> None:
    """Forget every shared model (they are freed once no :class:`ChatModel` refers to them)."""
    with _registry_lock:
        _loaded.clear()
        _key_locks.clear()


if __name__ == "__main__":  # the child of _convert_in_child: python -m ...loader GGUF_PATH TARGET
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))
