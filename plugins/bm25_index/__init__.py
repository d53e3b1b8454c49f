"""Built-in plugin: the ``bm25`` keyword index of collections (bm25s), kept under
``ESPALIER_HOME/rag/bm25``. Offered as the default with ``trylast``, so an installed index that
offers itself (or ``ESPALIER_KEYWORD_INDEX``) takes its place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from espalier import hookimpl
from espalier.plugins.bm25_index.index import BM25Index

if TYPE_CHECKING:
    from espalier.core.infrastructure.settings import Settings

__all__ = ["BM25Index"]


@hookimpl(trylast=True)
def register_keyword_indexes(register, settings: Settings) -> None:
    register(BM25Index(settings.rag_dir / "bm25"), default=True)
