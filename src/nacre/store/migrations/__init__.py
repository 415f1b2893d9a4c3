"""Alembic migrations of the nacre store (run programmatically by :func:`nacre.store.open_store`)."""
