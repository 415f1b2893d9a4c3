"""Envelope encryption at rest: no plaintext or data key in the database, AAD binds rows, KEKs."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from nacre.errors import UsageError
from nacre.sim.platform import SimPlatform
from nacre.store import EnvelopeError, KekRing, Store, open_store
from nacre.store._schema import metadata
from nacre.store.envelope import KEK_FILE, envelope_aad, open_envelope, seal_envelope
from nacre.tee.backend import SealingError
from nacre.tee.sim import SimBackend
from test_store_support import make_sealer

PLAINTEXTS = [b"model-key-PLAINTEXT-0123456789abcdef", b"db-password-hunter2-PLAINTEXT"]
KEY_MATERIAL = b"-----PRIVATE-SCALAR-0xDEADBEEFCAFEBABE-----"


def _write_secrets(store: Store) -> None:
    for i, p in enumerate(PLAINTEXTS):
        store.put_resource(f"repo/secret/s{i}", p, actor="admin")
    store.put_resource("repo/secret/s0", PLAINTEXTS[1] + b"-v2", actor="admin")
    store.create_key("signer", "EC-P384", KEY_MATERIAL, public_key=b"PUBLIC", actor="admin")


def _data_keys(store: Store) -> list[bytes]:
    ring = store.kek_ring
    keys = []
    with store.engine.connect() as conn:
        for table in ("resource_versions", "key_versions"):
            for kek_id, wrapped in conn.execute(
                sa.text(f"SELECT kek_id, wrapped_key FROM {table}")
            ).all():
                keys.append(aes_key_unwrap(ring.key(kek_id), bytes(wrapped)))
    assert len(keys) == 4
    return keys


def _needles(store: Store) -> list[bytes]:
    return [
        *PLAINTEXTS,
        KEY_MATERIAL,
        *_data_keys(store),
        *(store.kek_ring.key(k) for k in store.kek_ring.ids),
    ]


def test_sqlite_file_and_wal_never_hold_a_secret(tmp_path: Path) -> None:
    db = tmp_path / "data" / "nacre.db"
    with open_store(f"sqlite:///{db}", sealer=make_sealer(tmp_path / "tee")) as store:
        _write_secrets(store)
        needles = _needles(store)
        wal = db.with_name("nacre.db-wal")
        assert wal.exists()
        assert wal.stat().st_size > 0
        raw = db.read_bytes() + wal.read_bytes()
        for needle in needles:
            assert needle not in raw
            assert base64.b64encode(needle) not in raw
            assert needle.hex().encode() not in raw
        # the test itself would see plaintext written in clear:
        assert b"repo" in raw
        assert b"PUBLIC" in raw
        assert store.get_resource("repo/secret/s1").data == PLAINTEXTS[1]
    # after close (checkpoint), the main file alone
    raw = b"".join(p.read_bytes() for p in db.parent.glob("nacre.db*"))
    for needle in needles:
        assert needle not in raw
    kek_file = (tmp_path / "data" / KEK_FILE).read_bytes()
    for needle in needles:
        assert needle not in kek_file
        assert base64.b64encode(needle) not in kek_file


def test_no_column_of_any_row_holds_a_secret(store: Store) -> None:
    _write_secrets(store)
    needles = _needles(store)
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)).all():
                for value in row:
                    blob = (
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
                    assert not any(n in blob for n in needles), table.name


def test_ciphertexts_swapped_between_rows_are_refused(store: Store) -> None:
    _write_secrets(store)
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.tag, v.version, v.ciphertext, v.wrapped_key, v.kek_id, v.nonce, v.aad "
                "FROM resource_versions v JOIN resources r ON r.id = v.resource_id "
                "ORDER BY r.tag, v.version"
            )
        ).all()
        by = {(r.tag, r.version): r for r in rows}
        donor = by[("s1", 1)]
        # Move s1's whole envelope (ciphertext, key, nonce, even its aad column) onto s0 v2.
        conn.execute(
            sa.text(
                "UPDATE resource_versions SET ciphertext = :c, wrapped_key = :w, kek_id = :k, "
                "nonce = :n, aad = :a WHERE version = 2"
            ),
            {
                "c": donor.ciphertext,
                "w": donor.wrapped_key,
                "k": donor.kek_id,
                "n": donor.nonce,
                "a": donor.aad,
            },
        )
    with pytest.raises(EnvelopeError) as info:
        store.get_resource("repo/secret/s0")
    assert info.value.field == "aad"
    # Keep the row's own aad but take the donor's ciphertext: GCM refuses it.
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE resource_versions SET aad = :a WHERE version = 2"),
            {"a": envelope_aad("resource_versions", "repo/secret/s0", 2)},
        )
    with pytest.raises(EnvelopeError) as info:
        store.get_resource("repo/secret/s0")
    assert info.value.field == "ciphertext"
    # Version 1 of the same row is untouched.
    assert store.get_resource("repo/secret/s0", version=1).data == PLAINTEXTS[0]


def test_key_version_swap_and_bit_flip_are_refused(store: Store) -> None:
    store.create_key("k", "AES-256", b"A" * 32, actor="admin")
    store.rotate_key("k", b"B" * 32, actor="admin")
    with store.engine.begin() as conn:
        v1 = conn.execute(
            sa.text("SELECT ciphertext, wrapped_key, nonce FROM key_versions WHERE version = 1")
        ).one()
        conn.execute(
            sa.text(
                "UPDATE key_versions SET ciphertext = :c, wrapped_key = :w, nonce = :n WHERE version = 2"
            ),
            {"c": v1.ciphertext, "w": v1.wrapped_key, "n": v1.nonce},
        )
    with pytest.raises(EnvelopeError):
        store.key_material("k")
    with store.engine.begin() as conn:
        wrapped = bytearray(v1.wrapped_key)
        wrapped[3] ^= 1
        conn.execute(
            sa.text("UPDATE key_versions SET wrapped_key = :w WHERE version = 1"),
            {"w": bytes(wrapped)},
        )
    with pytest.raises(EnvelopeError) as info:
        store.key_material("k", version=1)
    assert info.value.field == "wrapped_key"


def test_kek_file_is_sealed_and_private(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open_store(db_url, sealer=make_sealer(tmp_path / "tee"), data_dir=data) as store:
        store.put_resource("a/b/c", b"payload", actor="admin")
        kek_id = store.kek_ring.current_id
    path = data / KEK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["current"], list(doc["keks"])) == ("nacre-kek/v1", kek_id, [kek_id])
    # Another platform's sealing root cannot unseal the KEK, so it cannot open the store.
    with pytest.raises(SealingError):
        open_store(db_url, sealer=make_sealer(tmp_path / "other-tee"), data_dir=data)
    # The same platform reopens it.
    with open_store(db_url, sealer=make_sealer(tmp_path / "tee"), data_dir=data) as again:
        assert again.get_resource("a/b/c").data == b"payload"
    # A database without its KEK file is not readable (a fresh KEK does not unwrap old rows).
    with (
        open_store(
            db_url, sealer=make_sealer(tmp_path / "tee"), data_dir=tmp_path / "elsewhere"
        ) as lost,
        pytest.raises(EnvelopeError) as info,
    ):
        lost.get_resource("a/b/c")
    assert info.value.field == "kek_id"


def test_kek_rotation_rewrap_and_retire(db_url: str, tmp_path: Path) -> None:
    sealer = make_sealer(tmp_path / "tee")
    data = tmp_path / "data"
    with open_store(db_url, sealer=sealer, data_dir=data) as store:
        _write_secrets(store)
        old = store.kek_ring.current_id
        new = store.kek_ring.rotate()
        assert new != old
        store.put_resource("repo/secret/new", b"after-rotation", actor="admin")
        assert store.kek_usage() == {old: 4, new: 1}
        # Old rows stay readable before the rewrap (lazy), and retire refuses a used KEK... nothing
        assert store.retire_unused_keks() == []
        assert store.get_resource("repo/secret/s1").data == PLAINTEXTS[1]
        with store.engine.connect() as conn:
            before = (
                conn.execute(
                    sa.text(
                        "SELECT ciphertext FROM resource_versions ORDER BY resource_id, version"
                    )
                )
                .scalars()
                .all()
            )
        assert store.rewrap_all(batch=2) == 4
        assert store.rewrap_all() == 0
        with store.engine.connect() as conn:
            after = (
                conn.execute(
                    sa.text(
                        "SELECT ciphertext FROM resource_versions ORDER BY resource_id, version"
                    )
                )
                .scalars()
                .all()
            )
        assert [bytes(b) for b in before] == [
            bytes(a) for a in after
        ]  # only the wrapped keys moved
        assert store.kek_usage() == {old: 0, new: 5}
        assert store.retire_unused_keks() == [old]
        assert store.kek_ring.ids == (new,)
    with open_store(db_url, sealer=sealer, data_dir=data) as reopened:
        assert reopened.kek_ring.ids == (new,)
        assert reopened.get_resource("repo/secret/s0", version=1).data == PLAINTEXTS[0]
        assert reopened.key_material("signer")[1] == KEY_MATERIAL
        with pytest.raises(UsageError):
            reopened.kek_ring.retire(new)


def test_kek_file_damage_is_a_usage_error(tmp_path: Path) -> None:
    sealer = make_sealer(tmp_path / "tee")
    data = tmp_path / "data"
    KekRing.load_or_create(data, sealer)
    path = data / KEK_FILE
    doc = json.loads(path.read_text())
    for broken in (
        "not json",
        json.dumps({**doc, "format": "x"}),
        json.dumps({**doc, "current": "nope"}),
    ):
        path.write_text(broken)
        with pytest.raises(UsageError):
            KekRing.load_or_create(data, sealer)


def test_envelope_round_trip_and_aad(tmp_path: Path) -> None:
    ring = KekRing.load_or_create(tmp_path, make_sealer(tmp_path / "tee"))
    aad = envelope_aad("t", "row", 1)
    env = seal_envelope(ring, b"hello", aad)
    assert open_envelope(ring, env, aad) == b"hello"
    assert envelope_aad("t", "row", 1) != envelope_aad("t", "ro", 1)
    assert envelope_aad("t", "row/1", 1) != envelope_aad("t", "row", 11)
    with pytest.raises(EnvelopeError):
        open_envelope(ring, env, envelope_aad("t", "row", 2))


def test_sim_backend_seals_the_kek(tmp_path: Path, db_url: str) -> None:
    """The laptop case: the simulated SGX platform's sealing root protects the KEK."""
    backend = SimBackend(SimPlatform.init(tmp_path / "sim"), tee="sgx")
    with open_store(db_url, sealer=backend, data_dir=tmp_path / "data") as store:
        store.put_resource("a/b/c", b"sim-sealed", actor="admin")
    with open_store(db_url, sealer=backend, data_dir=tmp_path / "data") as store:
        assert store.get_resource("a/b/c").data == b"sim-sealed"
