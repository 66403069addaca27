"""generation items

Revision ID: 2c6f44ad1f8f
Revises: 8e299862240a
Create Date: 2026-11-25 13:46:58.125436
"""
from alembic import op
import sqlalchemy as sa
import app.models.base
from sqlalchemy.dialects import postgresql

revision = '2c6f44ad1f8f'
down_revision = '8e299862240a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('generation_item',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('output', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('error', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_generation_item_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'index', name=op.f('pk_generation_item'))
    )
    with op.batch_alter_table('generation_item', schema=None) as batch_op:
        batch_op.create_index('ix_generation_item_job_id_status', ['job_id', 'status'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('generation_item', schema=None) as batch_op:
        batch_op.drop_index('ix_generation_item_job_id_status')

    op.drop_table('generation_item')
    
