"""Built-in plugin: the ``chroma`` vector store, where collections keep their vectors.

An embedded chromadb ``PersistentClient`` in ``ESPALIER_HOME/chroma``, or a Chroma server when
``ESPALIER_CHROMA_URL`` is set. It is offered as the default with ``trylast``, so an installed
store that offers itself (or ``ESPALIER_VECTOR_STORE``) takes its place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from espalier import hookimpl
from espalier.plugins.chroma_store.store import DEFAULT_BATCH, ChromaStore

if TYPE_CHECKING:
    from espalier.core.infrastructure.settings import Settings

__all__ = ["DEFAULT_BATCH", "ChromaStore"]


@hookimpl(trylast=True)
def register_vector_stores(register, settings: Settings) -> None:
    register(ChromaStore(path=settings.chroma_dir, url=settings.chroma_url), default=True)
