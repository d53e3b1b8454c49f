"""guardrail flags: operators' labels on stored texts for the guardrail classifier trainers.

Revision ID: 0012
Revises: 0008
Create Date: 2026-11-27 00:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0012'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('guardrail_flags',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('category', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('completion_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('flagged_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('flagged_by_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('category', 'text_sha256', name='uq_guardrail_flags_category_text')
    )
    with op.batch_alter_table('guardrail_flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_guardrail_flags_category'), ['category'], unique=False)
        batch_op.create_index(batch_op.f('ix_guardrail_flags_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_guardrail_flags_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('guardrail_flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_guardrail_flags_created_at'))
        batch_op.drop_index(batch_op.f('ix_guardrail_flags_request_id'))
        batch_op.drop_index(batch_op.f('ix_guardrail_flags_category'))
    op.drop_table('guardrail_flags')
