"""Built-in plugin: the ``minilm`` embedder (all-MiniLM-L6-v2, 384 dimensions, shipped weights).

``MiniLMEmbedder().embed(texts)``; for chromadb collections use
:class:`espalier.plugins.minilm_embedder.chroma.MiniLMEmbeddingFunction` (imported on demand, so
loading the plugin does not import chromadb).
"""

from espalier import hookimpl
from espalier.plugins.minilm_embedder.embedder import DIMENSIONS, MODEL_NAME, MiniLMEmbedder

__all__ = ["DIMENSIONS", "MODEL_NAME", "MiniLMEmbedder"]


@hookimpl(trylast=True)
def register_embedders(register):
    register(MiniLMEmbedder(), default=True)  # the embedder collections use unless ESPALIER_EMBEDDER says
