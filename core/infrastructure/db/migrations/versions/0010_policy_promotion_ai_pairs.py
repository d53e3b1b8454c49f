"""Serving history (promotion and rollback), policy-evaluation columns, AI preference pairs.

Revision ID: 0010
Revises: 0011
Create Date: 2026-11-27 00:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0010'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('serving_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('label', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('evaluation_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('actor_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model'], ['models.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('serving_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_serving_history_model'), ['model'], unique=False)
        batch_op.create_index(batch_op.f('ix_serving_history_at'), ['at'], unique=False)

    op.create_table('ai_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('chosen', sa.Text(), nullable=False),
    sa.Column('rejected', sa.Text(), nullable=False),
    sa.Column('principle', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('critique', sa.Text(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('constitution', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('ai_pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ai_pairs_principle'), ['principle'], unique=False)
        batch_op.create_index(batch_op.f('ix_ai_pairs_job_id'), ['job_id'], unique=False)

    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.add_column(sa.Column('candidate', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('passed', sa.Boolean(), nullable=True))
        batch_op.create_index(batch_op.f('ix_evaluations_subject'), ['subject'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_subject'))
        batch_op.drop_column('passed')
        batch_op.drop_column('candidate')
        batch_op.drop_column('subject')
    with op.batch_alter_table('ai_pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ai_pairs_job_id'))
        batch_op.drop_index(batch_op.f('ix_ai_pairs_principle'))
    op.drop_table('ai_pairs')
    with op.batch_alter_table('serving_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_serving_history_at'))
        batch_op.drop_index(batch_op.f('ix_serving_history_model'))
    op.drop_table('serving_history')
