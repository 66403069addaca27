"""pipelines: the pipeline table; job.pipeline_id, pipeline_step, has_refs, estimate, webhook_url

Revision ID: a1c3e5f7b9d1
Revises: e7a41c9b05d3
Create Date: 2026-11-29 15:10:00
"""
from alembic import op
import sqlalchemy as sa

import app.models.base
from sqlalchemy.dialects import postgresql


revision = 'a1c3e5f7b9d1'
down_revision = 'e7a41c9b05d3'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'pipeline',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('team_id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('labels', JSON, nullable=False),
        sa.Column('steps', JSON, nullable=False),
        sa.Column('webhook_url', sa.String(length=2048), nullable=True),
        sa.Column('estimate', JSON, nullable=True),
        sa.Column('idempotency_key', sa.String(length=255), nullable=True),
        sa.Column('request_hash', sa.String(length=64), nullable=True),
        sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['team_id'], ['team.id'], name=op.f('fk_pipeline_team_id_team')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pipeline')),
        sa.UniqueConstraint('team_id', 'idempotency_key', name=op.f('uq_pipeline_team_id_idempotency_key')),
    )
    op.create_index('ix_pipeline_team_id_id', 'pipeline', ['team_id', 'id'], unique=False)
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pipeline_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('pipeline_step', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('has_refs', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('estimate', JSON, nullable=True))
        batch_op.add_column(sa.Column('webhook_url', sa.String(length=2048), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_pipeline_id'), ['pipeline_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_job_pipeline_id_pipeline'), 'pipeline', ['pipeline_id'], ['id'],
                                    ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_job_pipeline_id_pipeline'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_pipeline_id'))
        for column in ('webhook_url', 'estimate', 'has_refs', 'pipeline_step', 'pipeline_id'):
            batch_op.drop_column(column)
    op.drop_index('ix_pipeline_team_id_id', table_name='pipeline')
    op.drop_table('pipeline')
