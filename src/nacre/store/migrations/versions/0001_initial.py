"""Initial schema: resources, policies, keys, sessions, nonces, audit.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nacre.store._schema import UtcDateTime

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_KEY_TYPES = "type IN ('AES-256', 'EC-P256', 'EC-P384', 'Ed25519', 'secp256k1', 'RSA-3072')"
_KEY_STATES = "state IN ('enabled', 'disabled', 'pending_deletion', 'destroyed')"


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.CheckConstraint("kind IN ('resource', 'appraisal')", name=op.f("ck_policies_kind")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_policies_version")),
    )
    op.create_table(
        "resources",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("repo", sa.String(128), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("policy_id", sa.String(128), nullable=True),
        sa.Column("current_version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policies.id"], name=op.f("fk_resources_policy_id_policies")
        ),
        sa.UniqueConstraint("repo", "type", "tag", name="uq_resources_name"),
        sa.CheckConstraint("current_version >= 1", name=op.f("ck_resources_current_version")),
    )
    op.create_table(
        "resource_versions",
        sa.Column("resource_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("aad", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "version", name=op.f("pk_resource_versions")),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_resource_versions_resource_id_resources"),
        ),
    )
    op.create_table(
        "keys",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("deletion_date", UtcDateTime, nullable=True),
        sa.Column("rotation_period_s", sa.BigInteger, nullable=True),
        sa.Column("next_rotation_at", UtcDateTime, nullable=True),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Column("exportable", sa.Boolean, nullable=False),
        sa.Column("policy_id", sa.String(128), nullable=True),
        sa.Column("current_version", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keys")),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policies.id"], name=op.f("fk_keys_policy_id_policies")
        ),
        sa.CheckConstraint(_KEY_TYPES, name=op.f("ck_keys_type")),
        sa.CheckConstraint(_KEY_STATES, name=op.f("ck_keys_state")),
        sa.CheckConstraint(
            "(state = 'pending_deletion') = (deletion_date IS NOT NULL)",
            name=op.f("ck_keys_deletion_date"),
        ),
        sa.CheckConstraint(
            "rotation_period_s IS NULL OR rotation_period_s > 0", name=op.f("ck_keys_rotation")
        ),
    )
    op.create_table(
        "key_versions",
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=True),
        sa.Column("kek_id", sa.String(32), nullable=True),
        sa.Column("nonce", sa.LargeBinary, nullable=True),
        sa.Column("aad", sa.LargeBinary, nullable=True),
        sa.Column("public_key", sa.LargeBinary, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "version", name=op.f("pk_key_versions")),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"], name=op.f("fk_key_versions_key_id_keys")),
        sa.CheckConstraint(
            "state IN ('enabled', 'disabled', 'destroyed')", name=op.f("ck_key_versions_state")
        ),
        sa.CheckConstraint(
            "(state = 'destroyed') = (ciphertext IS NULL AND wrapped_key IS NULL)",
            name=op.f("ck_key_versions_material"),
        ),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tee", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("tee_pubkey", sa.Text, nullable=True),
        sa.Column("token", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.CheckConstraint("state IN ('pending', 'attested')", name=op.f("ck_sessions_state")),
    )
    op.create_table(
        "nonces",
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("consumed_at", UtcDateTime, nullable=True),
        sa.PrimaryKeyConstraint("value", name=op.f("pk_nonces")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_nonces_session_id_sessions"),
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("time", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit")),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    for table in (
        "audit_head",
        "audit",
        "nonces",
        "sessions",
        "key_versions",
        "keys",
        "resource_versions",
        "resources",
        "policies",
    ):
        op.drop_table(table)
