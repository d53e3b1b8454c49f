"""Built-in tools every agent needs: ``finish`` (the answer), ``search`` and ``lookup`` (passages
from a collection through the registered retrievers).

``search`` and ``lookup`` are written against the ``Retriever`` protocol only: they work with
whichever retrievers plugins register, and answer "no retriever" until one is. Each is made for
the platform whose ``register_tools`` call it answers (a tool object belongs to one platform's
registry). They read with the rights of the key that started the run
(:func:`espalier.core.tools.toolbox.caller`): a collection that key may not read, or a source
retriever it may not use, is an error observation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import RetrievedChunk, ToolResult
from espalier.core.infrastructure.errors import Forbidden, NotFound
from espalier.core.tools.grounding import authorize_search
from espalier.core.tools.toolbox import caller

if TYPE_CHECKING:
    from espalier.core.platform import Platform

MAX_K = 20
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class Finish:
    name = "finish"
    trusted_output = True  # computed from the caller's own arguments, never outside text
    description = "Give the final answer to the question and stop."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "The final answer, short."}},
        "required": ["answer"],
        "additionalProperties": False,
    }

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        answer = str(arguments.get("answer", "")).strip()
        return ToolResult(output=answer, data={"answer": answer})


class _RetrievalTool:
    """Shared by ``search`` and ``lookup``: pick a retriever and a collection, run the query."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def _retrieve(self, arguments: Mapping[str, Any], query: str, k: int) -> list[RetrievedChunk] | ToolResult:
        retrievers = self.platform.retrievers
        names = retrievers.names()
        if not names:
            return ToolResult(output="No retriever is installed, so there is nothing to search.", is_error=True)
        default = self.platform.settings.default_retriever
        wanted = arguments.get("retriever") or (default if default in names else names[0])
        if wanted not in names:
            return ToolResult(output=f"Unknown retriever '{wanted}'; use one of {', '.join(names)}.", is_error=True)
        collection = arguments.get("collection")
        if not collection:
            return ToolResult(output="Name the collection to search in `collection`.", is_error=True)
        searcher = retrievers.get(wanted)
        principal = caller()  # the key that started the run: it reads only what that key may read
        if principal is not None:
            try:
                authorize_search(self.platform.rag, searcher, collection, principal)
            except (Forbidden, NotFound) as exc:
                return ToolResult(output=exc.message, is_error=True)
        return searcher.search(query, collection=collection, k=k)  # type: ignore[attr-defined]


_COMMON_PROPERTIES = {
    "collection": {"type": "string", "minLength": 1, "maxLength": 512, "description": "Collection to search."},
    "retriever": {"type": "string", "description": "Retriever to use (default: the configured default retriever)."},
}


class Search(_RetrievalTool):
    name = "search"
    description = "Search a document collection; returns the most relevant passages with their ids."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "What to look for."},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "description": "How many passages (default 3)."},
            **_COMMON_PROPERTIES,
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        chunks = self._retrieve(arguments, arguments["query"], int(arguments.get("k", 3)))
        if isinstance(chunks, ToolResult):
            return chunks
        if not chunks:
            return ToolResult(output="No passage matched.", data=[])
        lines = [f"[{c.chunk_id}] {c.text.strip()}" for c in chunks]
        data = [
            {"document_id": c.document_id, "chunk_id": c.chunk_id, "score": c.score, "source": c.source} for c in chunks
        ]
        return ToolResult(output="\n".join(lines), data=data)


class Lookup(_RetrievalTool):
    """ReAct's Lookup: the sentences that contain a term, within the passages about it."""

    name = "lookup"
    description = "Find the sentences that mention a term in a document collection."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "term": {"type": "string", "minLength": 1, "maxLength": 200, "description": "Word or phrase to find."},
            **_COMMON_PROPERTIES,
        },
        "required": ["term"],
        "additionalProperties": False,
    }

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        term = arguments["term"].strip()
        chunks = self._retrieve(arguments, term, 10)
        if isinstance(chunks, ToolResult):
            return chunks
        found = []
        for chunk in chunks:
            for sentence in _SENTENCE.split(chunk.text):
                if term.lower() in sentence.lower():
                    found.append(f"[{chunk.chunk_id}] {sentence.strip()}")
        if not found:
            return ToolResult(output=f"No sentence mentions '{term}'.", data=[])
        return ToolResult(output="\n".join(found[:10]), data=found[:10])


@hookimpl(trylast=True)
def register_tools(register, platform):
    register(Finish())
    register(Search(platform))
    register(Lookup(platform))
