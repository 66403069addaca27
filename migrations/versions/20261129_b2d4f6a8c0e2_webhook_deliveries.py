"""webhook_deliveries: the webhook outbox, one row per terminal state of a job or pipeline with a webhook_url

Revision ID: b2d4f6a8c0e2
Revises: a1c3e5f7b9d1
Create Date: 2026-11-29 15:15:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.models.base

revision = 'b2d4f6a8c0e2'
down_revision = 'a1c3e5f7b9d1'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
UTC = app.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'webhook_delivery',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('team_id', sa.String(length=40), nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=True),
        sa.Column('pipeline_id', sa.String(length=40), nullable=True),
        sa.Column('event_key', sa.String(length=200), nullable=False),
        sa.Column('event_type', sa.String(length=40), nullable=False),
        sa.Column('payload', JSON, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', UTC, nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('last_attempt_at', UTC, nullable=True),
        sa.Column('delivered_at', UTC, nullable=True),
        sa.ForeignKeyConstraint(['team_id'], ['team.id'], name=op.f('fk_webhook_delivery_team_id_team')),
        sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_webhook_delivery_job_id_job'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['pipeline_id'], ['pipeline.id'],
                                name=op.f('fk_webhook_delivery_pipeline_id_pipeline'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_delivery')),
        sa.UniqueConstraint('event_key', name=op.f('uq_webhook_delivery_event_key')),
    )
    op.create_index('ix_webhook_delivery_job_id', 'webhook_delivery', ['job_id'], unique=False)
    op.create_index('ix_webhook_delivery_pipeline_id', 'webhook_delivery', ['pipeline_id'], unique=False)
    op.create_index('ix_webhook_delivery_status_next_attempt_at', 'webhook_delivery',
                    ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_webhook_delivery_status_next_attempt_at', table_name='webhook_delivery')
    op.drop_index('ix_webhook_delivery_pipeline_id', table_name='webhook_delivery')
    op.drop_index('ix_webhook_delivery_job_id', table_name='webhook_delivery')
    op.drop_table('webhook_delivery')
