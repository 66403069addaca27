"""artifact labels, listing index, retention schedule

Labels on artifacts (uploads get them at upload or by PATCH; a job's outputs start with the job's labels), an
index for the team's list, newest first (team_id, created_at, id) that replaces the index on team_id alone, and
the `lock` row that schedules the retention sweep (app/services/retention.py).

Revision ID: c3e5a7b9d1f3
Revises: b2d4f6a8c0e2
Create Date: 2026-11-29 15:15:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 'c3e5a7b9d1f3'
down_revision = 'b2d4f6a8c0e2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('labels', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                       'postgresql'),
                                      server_default='{}', nullable=False))
        batch_op.create_index('ix_artifact_team_id_created_at_id', ['team_id', 'created_at', 'id'], unique=False)
        batch_op.drop_index('ix_artifact_team_id')
    op.get_bind().execute(sa.text("INSERT INTO lock (name) VALUES ('retention')"))


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM lock WHERE name = 'retention'"))
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.create_index('ix_artifact_team_id', ['team_id'], unique=False)
        batch_op.drop_index('ix_artifact_team_id_created_at_id')
        batch_op.drop_column('labels')
