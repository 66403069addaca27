"""preemptions, dependencies, reaper lock

Revision ID: cf85c090d8f9
Revises: da76b993c6d6
Create Date: 2026-11-29 08:42:57.126418
"""
from alembic import op
import sqlalchemy as sa
import app.models.base


revision = 'cf85c090d8f9'
down_revision = 'da76b993c6d6'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lock',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=True),
    sa.Column('expires_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_lock'))
    )
    op.create_table('job_dependency',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('depends_on_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_job_dependency_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'depends_on_id', name=op.f('pk_job_dependency'))
    )
    with op.batch_alter_table('job_dependency', schema=None) as batch_op:
        batch_op.create_index('ix_job_dependency_depends_on_id', ['depends_on_id'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preemptions', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('preempted', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('stall_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('progress_at', app.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('not_before', app.models.base.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('job_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_token', sa.Integer(), nullable=True))

    # Dependencies move from the JSON column (kept for reading) into the indexed table.
    conn = op.get_bind()
    job = sa.table('job', sa.column('id', sa.String), sa.column('depends_on', sa.JSON))
    rows = [{'job_id': j.id, 'depends_on_id': d}
            for j in conn.execute(sa.select(job.c.id, job.c.depends_on)) for d in set(j.depends_on or [])]
    if rows:
        conn.execute(sa.table('job_dependency', sa.column('job_id'), sa.column('depends_on_id')).insert(), rows)
    conn.execute(sa.text("INSERT INTO lock (name) VALUES ('reaper')"))


def downgrade() -> None:
    with op.batch_alter_table('job_event', schema=None) as batch_op:
        batch_op.drop_column('lease_token')

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('not_before')
        batch_op.drop_column('progress_at')
        batch_op.drop_column('stall_seconds')
        batch_op.drop_column('preempted')
        batch_op.drop_column('preemptions')

    with op.batch_alter_table('job_dependency', schema=None) as batch_op:
        batch_op.drop_index('ix_job_dependency_depends_on_id')

    op.drop_table('job_dependency')
    op.drop_table('lock')
