"""eval samples

One row per (evaluation job, held-out conversation, model): the per-example scoring numbers, the sampled reply
and the judge's verdict, so a re-run resumes per example and the samples can be paged.

Revision ID: e5a7c9d1f3b5
Revises: d4f6b8c0e2a4
Create Date: 2026-11-29 18:40:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.models.base

revision = 'e5a7c9d1f3b5'
down_revision = 'd4f6b8c0e2a4'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('eval_sample',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('row', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('model', sa.String(length=1024), nullable=False),
    sa.Column('scoring', sa.String(length=16), nullable=True),
    sa.Column('nll', sa.Float(), nullable=True),
    sa.Column('weight', sa.Float(), nullable=True),
    sa.Column('sampled', sa.Boolean(), nullable=False),
    sa.Column('messages', JSON, nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('opponent', sa.String(length=1024), nullable=True),
    sa.Column('verdict', sa.String(length=8), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_eval_sample_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'row', 'model', name=op.f('pk_eval_sample'))
    )


def downgrade() -> None:
    op.drop_table('eval_sample')
