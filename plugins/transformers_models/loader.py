"""Loading weights: dtype choice, the safetensors cache for GGUF files, one copy per process.

Dequantising a GGUF file takes seconds, so the first load writes a plain safetensors folder
(config, tokenizer, float32 weights) under the cache directory, keyed by the file's identity;
later loads read that folder, which is several times faster. Loaded models are shared by
everyone in the process: loading the same (source, dtype, adapter) again returns the same
object.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.plugins.common.dtypes import cpu_has_fast_bfloat16
from espalier.plugins.common.gguf import LOAD_LOCK, convert_gguf, is_converted
from espalier.plugins.common.model_sources import ResolvedSource, resolve_source
from espalier.plugins.transformers_models.attention import enable_row_attention
from espalier.plugins.transformers_models.packing import pack_linear_weights

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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


def load_weights(spec_source: str, dtype: torch.dtype, adapter: str | None, cache_dir: str) -> LoadedModel:
    """Load a model from disk without consulting the process cache (see :func:`get_or_load`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = resolve_source(spec_source)
    from_cache = False
    if source.kind == "gguf":
        from_cache = is_converted(source, cache_dir)
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
