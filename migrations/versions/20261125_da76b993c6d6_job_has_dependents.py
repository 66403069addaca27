"""job has_dependents

Revision ID: da76b993c6d6
Revises: 2c6f44ad1f8f
Create Date: 2026-11-25 14:18:35.247012
"""
from alembic import op
import sqlalchemy as sa
import app.models.base


revision = 'da76b993c6d6'
down_revision = '2c6f44ad1f8f'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('has_dependents', sa.Boolean(), server_default=sa.false(), nullable=False))

    


def downgrade() -> None:
    
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('has_dependents')

    
