"""job_event notify trigger (PostgreSQL only): the API's event hub LISTENs for new events

Revision ID: e7a41c9b05d3
Revises: 5b1e7c3a9d42
Create Date: 2026-11-29 12:05:00

Each insert into job_event sends NOTIFY tuneq_job_event with the job id (PostgreSQL folds repeats within a
transaction into one). A no-op on SQLite, where the hub tails job_event by id instead.
"""
from alembic import op


revision = 'e7a41c9b05d3'
down_revision = '5b1e7c3a9d42'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION tuneq_notify_job_event() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('tuneq_job_event', NEW.job_id);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
    """)
    op.execute("""
        CREATE TRIGGER job_event_notify AFTER INSERT ON job_event
        FOR EACH ROW EXECUTE FUNCTION tuneq_notify_job_event()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP TRIGGER IF EXISTS job_event_notify ON job_event")
    op.execute("DROP FUNCTION IF EXISTS tuneq_notify_job_event()")
