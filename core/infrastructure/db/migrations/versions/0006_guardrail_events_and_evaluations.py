"""Guardrail events (every non-allow policy decision) and evaluation records (toxicity evaluations).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 22:34:53.432839
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('evaluations',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('models', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('artifacts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluations_kind'), ['kind'], unique=False)

    op.create_table('guardrail_events',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('owner_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('direction', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('route', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('policy', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('scorer', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('scorer_version', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('categories', sa.JSON(), nullable=False),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('guardrail_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_guardrail_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_guardrail_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_guardrail_events_owner_key_id'), ['owner_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_guardrail_events_request_id'), ['request_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('guardrail_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_guardrail_events_request_id'))
        batch_op.drop_index(batch_op.f('ix_guardrail_events_owner_key_id'))
        batch_op.drop_index(batch_op.f('ix_guardrail_events_at'))
        batch_op.drop_index(batch_op.f('ix_guardrail_events_action'))

    op.drop_table('guardrail_events')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_kind'))
        batch_op.drop_index(batch_op.f('ix_evaluations_created_at'))

    op.drop_table('evaluations')

