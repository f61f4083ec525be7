"""Tenant spend: ``tenant_spend`` holds each tenant's model spend per UTC day, shared by every replica.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``tenant_spend`` (one row per tenant and day)."""
    op.create_table(
        "tenant_spend",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("day", sa.String(), primary_key=True),
        sa.Column("usd", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    """Drop ``tenant_spend``."""
    op.drop_table("tenant_spend")
