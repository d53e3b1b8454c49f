"""Collections of documents for retrieval. Vectors live in the vector store; the chunk texts are kept
here too, so the keyword index can be rebuilt and results carry their source spans."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class CollectionRecord(SQLModel, table=True):
    """A named set of documents. ``read_roles`` lists roles (besides the owner and operators) that may read it."""

    __tablename__ = "rag_collections"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(unique=True, index=True, max_length=63)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    read_roles: list[str] = Field(default_factory=list, sa_type=JSON)
    description: str = Field(default="", sa_type=Text)
    settings: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # bumped on every change of the chunks, so each process knows when its keyword index is stale
    index_version: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DocumentRecord(SQLModel, table=True):
    __tablename__ = "rag_documents"
    __table_args__ = (UniqueConstraint("collection_id", "source", name="uq_rag_documents_source"),)

    id: str = Field(primary_key=True, max_length=40)
    collection_id: str = Field(foreign_key="rag_collections.id", index=True, max_length=40, ondelete="CASCADE")
    source: str = Field(max_length=1000)
    content_hash: str = Field(max_length=64, index=True)
    media_type: str = Field(max_length=20)
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    chunk_count: int = 0
    characters: int = 0
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ChunkRecord(SQLModel, table=True):
    """One chunk: its text and where it sits in the document's extracted text (``start``..``end``)."""

    __tablename__ = "rag_chunks"

    id: str = Field(primary_key=True, max_length=60)
    document_id: str = Field(foreign_key="rag_documents.id", index=True, max_length=40, ondelete="CASCADE")
    collection_id: str = Field(index=True, max_length=40)
    index: int
    start: int
    end: int
    text: str = Field(sa_type=Text)
