"""Environments: ``environments`` (one row per sandbox template of a tenant: its config, archived_at).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import JSON_DOC, UTCDateTime

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``environments``; a name is unique within its tenant."""
    op.create_table(
        "environments",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("spec", JSON_DOC, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("archived_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_environments_tenant_created", "environments", ["tenant", "created_at", "id"])
    op.create_index("ux_environments_tenant_name", "environments", ["tenant", "name"], unique=True)


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ux_environments_tenant_name", table_name="environments")
    op.drop_index("ix_environments_tenant_created", table_name="environments")
    op.drop_table("environments")
