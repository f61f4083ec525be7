"""Workspace chunks: a workspace archive is stored as ordered chunks of one generation, written
while it streams in (never held whole in memory); ``workspaces`` keeps which generation is current.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``workspace_chunks``, move each stored archive into it as generation 0, then drop
    ``workspaces.data`` and add ``workspaces.generation``."""
    op.create_table(
        "workspace_chunks",
        sa.Column("session_id", sa.String(), sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("generation", sa.BigInteger(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.execute(
        "INSERT INTO workspace_chunks (session_id, generation, seq, size, data) "
        "SELECT session_id, 0, 0, size, data FROM workspaces"
    )
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("data")
        batch.add_column(sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    """Put each current archive back into ``workspaces.data`` (joined in Python, one session at a
    time), then drop ``workspace_chunks``."""
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=False, server_default=""))
    bind = op.get_bind()
    current = bind.execute(sa.text("SELECT session_id, generation FROM workspaces")).all()
    for session_id, generation in current:
        parts = bind.execute(
            sa.text("SELECT data FROM workspace_chunks WHERE session_id = :s AND generation = :g ORDER BY seq"),
            {"s": session_id, "g": generation},
        ).scalars()
        data = b"".join(bytes(p) for p in parts)
        bind.execute(
            sa.text("UPDATE workspaces SET data = :d, size = :n WHERE session_id = :s"),
            {"d": data, "n": len(data), "s": session_id},
        )
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("generation")
    op.drop_table("workspace_chunks")
