"""File bytes in an object store (issue 13 item 1): ``file_blob_deletions``, the outbox of files
whose rows were deleted and whose objects the service deletes (files.py).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import UTCDateTime

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the outbox (drained oldest first, by its key)."""
    op.create_table(
        "file_blob_deletions",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("file_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("queued_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    """Drop the outbox (objects it still names stay until the reconciliation sweep finds them)."""
    op.drop_table("file_blob_deletions")
