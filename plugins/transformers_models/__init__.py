"""Built-in plugin: local chat models through transformers (provider name ``transformers``).

Get the default model with::

    from espalier.plugins.transformers_models import DEFAULT_MODEL, TransformersProvider
    model = TransformersProvider().load(DEFAULT_MODEL, cache_dir=str(settings.home / "models"))
"""

from espalier import hookimpl
from espalier.plugins.common.model_sources import BUILTIN_MODELS, resolve_source
from espalier.plugins.transformers_models.engine import get_engine
from espalier.plugins.transformers_models.loader import pick_dtype, unload_all
from espalier.plugins.transformers_models.model import TransformersChatModel
from espalier.plugins.transformers_models.provider import DEFAULT_MODEL, TransformersProvider

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "TransformersChatModel",
    "TransformersProvider",
    "pick_dtype",
    "resolve_source",
    "unload_all",
]


@hookimpl
def register_model_providers(register):
    register(TransformersProvider())


@hookimpl
def register_models(register):
    register(DEFAULT_MODEL)


@hookimpl
def startup(platform):
    engine = get_engine()
    engine.prefix_cache_bytes = platform.settings.prefix_cache_mb * 2**20
    engine.pack_prefill_weights = platform.settings.pack_prefill_weights
