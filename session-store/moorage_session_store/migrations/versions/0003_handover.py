"""Handover: ``sessions.handover_requested_at``, set by a replica that wants a session another one holds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import UTCDateTime

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the nullable request timestamp (existing rows: no request)."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("handover_requested_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    """Drop the column again."""
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("handover_requested_at")
