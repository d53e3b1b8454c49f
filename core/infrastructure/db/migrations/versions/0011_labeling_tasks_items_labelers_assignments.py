"""Labeling tasks, their items, labelers and assignments (leases of ranking slots)

Revision ID: 0011
Revises: 0012
Create Date: 2026-11-27 00:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import espalier.core.infrastructure.db.base


revision = '0011'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('labeling_tasks',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('instructions', sa.Text(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('rankings_required', sa.Integer(), nullable=False),
    sa.Column('sampling', sa.JSON(), nullable=False),
    sa.Column('lease_seconds', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('excluded_labelers', sa.JSON(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('created_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('labeling_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labeling_tasks_status'), ['status'], unique=False)

    op.create_table('labeling_items',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('task_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('messages', sa.JSON(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['chat_requests.id'], ),
    sa.ForeignKeyConstraint(['task_id'], ['labeling_tasks.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('labeling_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labeling_items_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_labeling_items_task_id'), ['task_id'], unique=False)

    op.create_table('labeling_labelers',
    sa.Column('task_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('added_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('added_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['labeling_tasks.id'], ),
    sa.PrimaryKeyConstraint('task_id', 'key_id')
    )

    op.create_table('labeling_assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('item_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('leased_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('feedback_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('done_at', espalier.core.infrastructure.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['item_id'], ['labeling_items.id'], ),
    sa.ForeignKeyConstraint(['task_id'], ['labeling_tasks.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'key_id', name='uq_labeling_assignment_labeler'),
    sa.UniqueConstraint('item_id', 'slot', name='uq_labeling_assignment_slot')
    )
    with op.batch_alter_table('labeling_assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labeling_assignments_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_labeling_assignments_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_labeling_assignments_task_id'), ['task_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('labeling_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labeling_assignments_task_id'))
        batch_op.drop_index(batch_op.f('ix_labeling_assignments_key_id'))
        batch_op.drop_index(batch_op.f('ix_labeling_assignments_item_id'))
    op.drop_table('labeling_assignments')
    op.drop_table('labeling_labelers')
    with op.batch_alter_table('labeling_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labeling_items_task_id'))
        batch_op.drop_index(batch_op.f('ix_labeling_items_request_id'))
    op.drop_table('labeling_items')
    with op.batch_alter_table('labeling_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labeling_tasks_status'))
    op.drop_table('labeling_tasks')
