"""Files (the Files API, issue 13): ``files`` (one row per file of a tenant: name, type, size,
expiry, the session it belongs to) and ``file_chunks`` (its bytes, in ordered chunks written while
the upload streams in, like ``workspace_chunks``).

Revision ID: 0011_files
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import UTCDateTime

revision = "0011_files"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create both tables. A session-scoped file goes with its session, chunks with their file
    (ON DELETE CASCADE); indexes serve a tenant's list (newest first), a session's files and the
    expiry sweep."""
    op.create_table(
        "files",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("filename", sa.String(), nullable=False),
        sa.Column("mime_type", sa.String(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("scope_session_id", sa.String(), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True),
        sa.Column("downloadable", sa.Boolean(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_files_tenant_created", "files", ["tenant", "created_at", "id"])
    op.create_index("ix_files_scope", "files", ["scope_session_id"])
    op.create_index("ix_files_expires", "files", ["expires_at"])
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    """Drop both tables (their files with them)."""
    op.drop_table("file_chunks")
    op.drop_index("ix_files_expires", table_name="files")
    op.drop_index("ix_files_scope", table_name="files")
    op.drop_index("ix_files_tenant_created", table_name="files")
    op.drop_table("files")
