"""sampler checkpoints with their losses

A checkpoint row lists the sampler weights saved at its step next to its state (`sampler_uri`), and the
training loss, validation loss and auto-evaluation score at that step.

Revision ID: d4f6b8c0e2a4
Revises: c3e5a7b9d1f3
Create Date: 2026-11-29 18:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = 'd4f6b8c0e2a4'
down_revision = 'c3e5a7b9d1f3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('checkpoint', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sampler_uri', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('val_loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('eval_loss', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoint', schema=None) as batch_op:
        batch_op.drop_column('eval_loss')
        batch_op.drop_column('val_loss')
        batch_op.drop_column('loss')
        batch_op.drop_column('sampler_uri')
