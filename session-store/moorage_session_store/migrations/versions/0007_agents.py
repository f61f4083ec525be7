"""Agents: ``agents`` (one row per agent of a tenant: current version, archived_at) and
``agent_versions`` (one immutable spec per version).

Revision ID: 0007
Revises: 0005 (re-chained onto 0006 when the branches merge)
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import JSON_DOC, UTCDateTime

revision = "0007"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``agents`` and ``agent_versions``."""
    op.create_table(
        "agents",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("archived_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_agents_tenant_created", "agents", ["tenant", "created_at", "id"])
    op.create_table(
        "agent_versions",
        sa.Column("agent_id", sa.String(), sa.ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("spec", JSON_DOC, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("agent_versions")
    op.drop_index("ix_agents_tenant_created", table_name="agents")
    op.drop_table("agents")
