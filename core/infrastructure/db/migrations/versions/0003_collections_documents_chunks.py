"""Retrieval: collections, documents and their chunks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 22:34:37.067288
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rag_collections',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('owner_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('read_roles', sa.JSON(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('index_version', sa.Integer(), nullable=False),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rag_collections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rag_collections_name'), ['name'], unique=True)
        batch_op.create_index(batch_op.f('ix_rag_collections_owner_key_id'), ['owner_key_id'], unique=False)

    op.create_table('rag_documents',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('collection_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('media_type', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('characters', sa.Integer(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['collection_id'], ['rag_collections.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('collection_id', 'source', name='uq_rag_documents_source')
    )
    with op.batch_alter_table('rag_documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rag_documents_collection_id'), ['collection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rag_documents_content_hash'), ['content_hash'], unique=False)

    op.create_table('rag_chunks',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('document_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('collection_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('end', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['rag_documents.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rag_chunks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rag_chunks_collection_id'), ['collection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rag_chunks_document_id'), ['document_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rag_chunks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rag_chunks_document_id'))
        batch_op.drop_index(batch_op.f('ix_rag_chunks_collection_id'))

    op.drop_table('rag_chunks')
    with op.batch_alter_table('rag_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rag_documents_content_hash'))
        batch_op.drop_index(batch_op.f('ix_rag_documents_collection_id'))

    op.drop_table('rag_documents')
    with op.batch_alter_table('rag_collections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rag_collections_owner_key_id'))
        batch_op.drop_index(batch_op.f('ix_rag_collections_name'))

    op.drop_table('rag_collections')
