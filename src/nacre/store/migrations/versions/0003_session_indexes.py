"""Indexes for KBS sessions: a session's nonce by session id (the session read joins on it, a
session's deletion cascades by it), and both tables by expiry (the sweep). Without them each
handshake scanned every nonce row: the cost grew with the traffic.

Revision ID: 0003_session_indexes
Revises: 0002_server_state
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0003_session_indexes"
down_revision: str | None = "0002_server_state"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_nonces_session_id"), "nonces", ["session_id"])
    op.create_index(op.f("ix_nonces_expires_at"), "nonces", ["expires_at"])
    op.create_index(op.f("ix_sessions_expires_at"), "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sessions_expires_at"), table_name="sessions")
    op.drop_index(op.f("ix_nonces_expires_at"), table_name="nonces")
    op.drop_index(op.f("ix_nonces_session_id"), table_name="nonces")
