"""team limits, api key rate limit

Revision ID: 5b1e7c3a9d42
Revises: cf85c090d8f9
Create Date: 2026-11-29 12:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '5b1e7c3a9d42'
down_revision = 'cf85c090d8f9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('team', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limits', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                       'postgresql'),
                                      server_default='{}', nullable=False))

    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_limit', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('rate_limit')

    with op.batch_alter_table('team', schema=None) as batch_op:
        batch_op.drop_column('limits')
