"""responses: /v1/responses answers, for GET and previous_response_id

Revision ID: 0013
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0013'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('responses',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('owner_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('conversation_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
    sa.Column('previous_response_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('messages', sa.JSON(), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_responses_owner_key_id'), ['owner_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_responses_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_responses_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_responses_created_at'))
        batch_op.drop_index(batch_op.f('ix_responses_conversation_id'))
        batch_op.drop_index(batch_op.f('ix_responses_owner_key_id'))
    op.drop_table('responses')
