"""artifact_labels (placeholder: filled in by the work on this table)

Revision ID: c3e5a7b9d1f3
Revises: b2d4f6a8c0e2
Create Date: 2026-11-29 15:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'c3e5a7b9d1f3'
down_revision = 'b2d4f6a8c0e2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
