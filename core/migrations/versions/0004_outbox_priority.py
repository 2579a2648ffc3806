"""outbox priority

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 06:17:09.152538
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("outbox_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch_op.create_index(
            "ix_outbox_claim", ["status", "priority", "next_attempt_at", "id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("outbox_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_claim")
        batch_op.drop_column("priority")
