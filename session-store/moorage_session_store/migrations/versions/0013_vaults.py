"""Vaults (issue 13 item 5): ``vaults`` and their ``vault_credentials`` (secrets sealed by the
service with ``MOORAGE_SECRET_KEY``; see service/moorage/vault_crypto.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import JSON_DOC, UTCDateTime

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create both tables. A vault's live credentials have distinct ``match_key``s (a partial
    unique index: archived ones may repeat a key)."""
    op.create_table(
        "vaults",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("display_name", sa.String(), nullable=False),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("archived_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_vaults_tenant_created", "vaults", ["tenant", "created_at", "id"])
    op.create_table(
        "vault_credentials",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("vault_id", sa.String(), sa.ForeignKey("vaults.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("match_key", sa.String(), nullable=False),
        sa.Column("public", JSON_DOC, nullable=False),
        sa.Column("sealed", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("archived_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_vault_credentials_vault_created", "vault_credentials", ["vault_id", "created_at", "id"])
    op.create_index(
        "ux_vault_credentials_live_key",
        "vault_credentials",
        ["vault_id", "match_key"],
        unique=True,
        sqlite_where=sa.text("archived_at IS NULL"),
        postgresql_where=sa.text("archived_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_vault_credentials_live_key", table_name="vault_credentials")
    op.drop_index("ix_vault_credentials_vault_created", table_name="vault_credentials")
    op.drop_table("vault_credentials")
    op.drop_index("ix_vaults_tenant_created", table_name="vaults")
    op.drop_table("vaults")
