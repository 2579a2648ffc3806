"""calls: index the caller's recent calls

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 18:55:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index("ix_calls_caller", ["business_id", "from_number", "started_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index("ix_calls_caller")
