"""webhook_deliveries (placeholder: filled in by the work on this table)

Revision ID: b2d4f6a8c0e2
Revises: a1c3e5f7b9d1
Create Date: 2026-11-29 15:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b2d4f6a8c0e2'
down_revision = 'a1c3e5f7b9d1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
