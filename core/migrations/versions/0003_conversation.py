"""conversation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 06:00:28.192753
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "notifications",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("business_id", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("target", sa.String(length=254), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("backup", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_target", ["business_id", "target", "id"], unique=False)

    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("convo_state", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("convo_data", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("intent", sa.String(length=24), nullable=True))
        batch_op.add_column(
            sa.Column("human_takeover", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("short_code", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("first_human_response_at", sa.DateTime(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_column("first_human_response_at")
        batch_op.drop_column("short_code")
        batch_op.drop_column("human_takeover")
        batch_op.drop_column("intent")
        batch_op.drop_column("convo_data")
        batch_op.drop_column("convo_state")

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_target")

    op.drop_table("notifications")
