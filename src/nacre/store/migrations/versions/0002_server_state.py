"""Server state shared by replicas: signing keyrings (envelope-encrypted) and admin keys.

Revision ID: 0002_server_state
Revises: 0001_initial
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nacre.store._schema import UtcDateTime

revision = "0002_server_state"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keyrings",
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("aad", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("purpose", name=op.f("pk_signing_keyrings")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_signing_keyrings_version")),
    )
    op.create_table(
        "admin_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("jwk", sa.Text, nullable=False),
        sa.Column("roles", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("revoked_at", UtcDateTime, nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_admin_keys")),
    )


def downgrade() -> None:
    op.drop_table("admin_keys")
    op.drop_table("signing_keyrings")
