"""feedback, imported pairs, reward models

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 22:34:33.276084
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imported_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('chosen', sa.Text(), nullable=False),
    sa.Column('rejected', sa.Text(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('imported_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('imported_pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imported_pairs_source'), ['source'], unique=False)

    op.create_table('reward_models',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('data_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('pairs', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('decision', sa.Text(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    with op.batch_alter_table('reward_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reward_models_is_current'), ['is_current'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('completion_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('key_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('key_role', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('sampling', sa.JSON(), nullable=False),
    sa.Column('sources', sa.JSON(), nullable=True),
    sa.Column('tool_traces', sa.JSON(), nullable=True),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('body_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['completion_id'], ['completions.id'], ),
    sa.ForeignKeyConstraint(['request_id'], ['chat_requests.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_id', 'idempotency_key', name='uq_feedback_key_idempotency')
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_completion_id'), ['completion_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_request_id'))
        batch_op.drop_index(batch_op.f('ix_feedback_kind'))
        batch_op.drop_index(batch_op.f('ix_feedback_key_id'))
        batch_op.drop_index(batch_op.f('ix_feedback_created_at'))
        batch_op.drop_index(batch_op.f('ix_feedback_completion_id'))

    op.drop_table('feedback')
    with op.batch_alter_table('reward_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reward_models_is_current'))

    op.drop_table('reward_models')
    with op.batch_alter_table('imported_pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_imported_pairs_source'))

    op.drop_table('imported_pairs')
