"""Sealing: identity policies, SGX's SVN rule, tamper and AAD detection, header checks."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from nacre.errors import UsageError
from nacre.sim.measure import Manifest
from nacre.sim.platform import SimPlatform
from nacre.tee import SealingError, SealPolicy, SgxIdentity
from nacre.tee.gramine import GramineBackend
from nacre.tee.sealing import HEADER_SIZE, MAGIC, Sealer, parse_header
from nacre.tee.sim import SimBackend
from tee_fakes import fake_gramine

ROOT = bytes(range(32))
V1 = SgxIdentity(mrenclave=b"\xaa" * 32, mrsigner=b"\x55" * 32, isv_prod_id=3, isv_svn=1)
V2 = dataclasses.replace(V1, mrenclave=b"\xbb" * 32, isv_svn=2)  # next release, same signer


def sealer(identity: SgxIdentity, root: bytes = ROOT) -> Sealer:
    return Sealer(identity, lambda _policy: root)


def _flip(blob: bytes, offset: int, mask: int = 0x01) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ mask]) + blob[offset + 1 :]


def _unseal_error(identity: SgxIdentity, blob: bytes, aad: bytes = b"") -> SealingError:
    with pytest.raises(SealingError) as info:
        sealer(identity).unseal(blob, aad=aad)
    return info.value


@pytest.mark.parametrize("policy", ["mrenclave", "mrsigner"])
def test_round_trip(policy: SealPolicy) -> None:
    blob = sealer(V1).seal(b"secret", policy=policy, aad=b"ctx")
    assert sealer(V1).unseal(blob, aad=b"ctx") == b"secret"
    assert parse_header(blob).policy == policy
    assert b"secret" not in blob


def test_every_blob_has_its_own_key_and_nonce() -> None:
    a, b = (sealer(V1).seal(b"same") for _ in range(2))
    assert a != b
    assert parse_header(a).key_id != parse_header(b).key_id


def test_another_mrenclave_cannot_unseal_mrenclave_policy() -> None:
    blob = sealer(V1).seal(b"secret", policy="mrenclave")
    err = _unseal_error(V2, blob)
    assert err.code == "SEAL_IDENTITY_MISMATCH"
    assert (err.field, err.expected, err.actual) == ("mrenclave", "aa" * 32, "bb" * 32)
    assert f"sealed to MRENCLAVE {'aa' * 32}, this enclave is {'bb' * 32}" in str(err)


def test_same_signer_higher_svn_unseals_mrsigner_data() -> None:
    blob = sealer(V1).seal(b"carried over", policy="mrsigner")
    assert sealer(V2).unseal(blob) == b"carried over"


def test_lower_svn_cannot_unseal_higher_svn_data() -> None:
    blob = sealer(V2).seal(b"new", policy="mrsigner")
    err = _unseal_error(V1, blob)
    assert err.code == "SEAL_SVN_TOO_HIGH"
    assert (err.field, err.expected, err.actual) == ("isv_svn", ">= 2", "1")
    assert "sealed at ISVSVN 2" in str(err)


def test_lowering_the_recorded_svn_does_not_help_an_old_enclave() -> None:
    # The old enclave edits the header down to its own SVN: the key (derived for SVN 1) and the
    # authenticated header no longer match what was sealed.
    blob = sealer(V2).seal(b"new", policy="mrsigner")
    svn_offset = 0x2A
    forged = blob[:svn_offset] + struct.pack("<H", 1) + blob[svn_offset + 2 :]
    assert _unseal_error(V1, forged).code == "SEALED_BLOB_AUTH_FAILED"


@pytest.mark.parametrize(
    ("change", "field"),
    [({"mrsigner": b"\x66" * 32}, "mrsigner"), ({"isv_prod_id": 4}, "isv_prod_id")],
)
def test_another_signer_or_product_cannot_unseal(change: dict[str, object], field: str) -> None:
    blob = sealer(V1).seal(b"x", policy="mrsigner")
    other = dataclasses.replace(V2, **change)  # type: ignore[arg-type]
    err = _unseal_error(other, blob)
    assert (err.code, err.field) == ("SEAL_IDENTITY_MISMATCH", field)


def test_another_platform_cannot_unseal() -> None:
    blob = sealer(V1).seal(b"x")
    with pytest.raises(SealingError) as info:
        sealer(V1, root=b"\x01" * 32).unseal(blob)
    assert info.value.code == "SEALED_BLOB_AUTH_FAILED"


def test_every_flipped_bit_is_refused() -> None:
    blob = sealer(V1).seal(b"0123456789", policy="mrsigner", aad=b"a")
    for offset in range(len(blob)):
        for mask in (0x01, 0x80):
            with pytest.raises(SealingError):
                sealer(V1).unseal(_flip(blob, offset, mask), aad=b"a")


@pytest.mark.parametrize("offset", [0x2C, 0x3C, HEADER_SIZE, -1])  # key id, nonce, data, tag
def test_flipped_bit_says_modified(offset: int) -> None:
    blob = sealer(V1).seal(b"0123456789")
    err = _unseal_error(V1, _flip(blob, offset % len(blob)))
    assert err.code == "SEALED_BLOB_AUTH_FAILED"
    assert "the sealed blob was modified or the associated data differs" in str(err)


@pytest.mark.parametrize("aad", [b"", b"ctx2", b"ctx\x00"])
def test_wrong_associated_data_is_refused(aad: bytes) -> None:
    blob = sealer(V1).seal(b"x", aad=b"ctx")
    assert _unseal_error(V1, blob, aad=aad).code == "SEALED_BLOB_AUTH_FAILED"


def test_bad_magic() -> None:
    blob = b"XXXX" + sealer(V1).seal(b"x")[4:]
    err = _unseal_error(V1, blob)
    assert (err.code, err.field, err.expected) == ("SEALED_BLOB_MALFORMED", "magic", MAGIC.hex())


def test_unknown_version() -> None:
    blob = sealer(V1).seal(b"x")
    err = _unseal_error(V1, blob[:4] + b"\x02" + blob[5:])
    assert (err.code, err.field, err.expected, err.actual) == (
        "SEALED_BLOB_VERSION",
        "version",
        "1",
        "2",
    )


@pytest.mark.parametrize(("offset", "value", "field"), [(5, 7, "policy"), (6, 1, "reserved")])
def test_malformed_header_fields(offset: int, value: int, field: str) -> None:
    blob = sealer(V1).seal(b"x")
    err = _unseal_error(V1, blob[:offset] + bytes([value]) + blob[offset + 1 :])
    assert (err.code, err.field) == ("SEALED_BLOB_MALFORMED", field)


def test_truncated_blob() -> None:
    err = _unseal_error(V1, sealer(V1).seal(b"")[: HEADER_SIZE + 15])
    assert (err.code, err.field) == ("SEALED_BLOB_MALFORMED", "sealed blob size")


def test_policy_swap_in_header_is_refused() -> None:
    # mrenclave -> mrsigner in the header: the identity check on MRSIGNER fails first.
    blob = sealer(V1).seal(b"x", policy="mrenclave")
    err = _unseal_error(V1, blob[:5] + b"\x02" + blob[6:])
    assert (err.code, err.field) == ("SEAL_IDENTITY_MISMATCH", "mrsigner")


def test_unknown_policy_and_short_root_are_usage_errors() -> None:
    with pytest.raises(UsageError) as info:
        sealer(V1).seal(b"x", policy="mrsomething")  # type: ignore[arg-type]
    assert info.value.field == "policy"
    with pytest.raises(UsageError, match="too short"):
        sealer(V1, root=b"\x01" * 8).seal(b"x")


# --------------------------------------------------------------------------- through backends


def _manifest(tmp_path: Path, name: str, svn: int, content: str, signer: Path | None) -> Manifest:
    d = tmp_path / name
    d.mkdir()
    (d / "app.py").write_text(content)
    lines = [f'entrypoint = "app.py"\nisv_prod_id = 9\nisv_svn = {svn}\n']
    if signer is not None:
        lines.append(f'signer_key = "{signer}"\n')
    lines.append('[[files]]\npath = "app.py"\n')
    (d / "m.toml").write_text("".join(lines))
    return Manifest.load(d / "m.toml")


def _signer(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "other-signer.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("seal") / "platform")


def test_sim_backend_follows_the_sgx_rules(tmp_path: Path, platform: SimPlatform) -> None:
    v1 = SimBackend(platform, manifest=_manifest(tmp_path, "v1", 1, "print(1)\n", None))
    v2 = SimBackend(platform, manifest=_manifest(tmp_path, "v2", 2, "print(2)\n", None))
    other = SimBackend(
        platform, manifest=_manifest(tmp_path, "o", 5, "print(1)\n", _signer(tmp_path))
    )
    by_v1 = v1.seal(b"state", policy="mrsigner", aad=b"db")
    assert v1.unseal(by_v1, aad=b"db") == b"state"
    assert v2.unseal(by_v1, aad=b"db") == b"state"
    with pytest.raises(SealingError) as info:
        v1.unseal(v2.seal(b"newer", policy="mrsigner"))
    assert info.value.code == "SEAL_SVN_TOO_HIGH"
    with pytest.raises(SealingError) as info:
        v2.unseal(v1.seal(b"pinned", policy="mrenclave"))
    assert info.value.field == "mrenclave"
    with pytest.raises(SealingError) as info:
        other.unseal(by_v1, aad=b"db")
    assert info.value.field == "mrsigner"


def test_gramine_backend_seals_with_the_gramine_keys(tmp_path: Path, platform: SimPlatform) -> None:
    m1 = _manifest(tmp_path, "g1", 1, "print(1)\n", None)
    m2 = _manifest(tmp_path, "g2", 1, "print(2)\n", None)
    with fake_gramine(tmp_path / "enclave1", platform, m1):
        g1 = GramineBackend(tmp_path / "enclave1")
        pinned = g1.seal(b"pinned", policy="mrenclave")
        shared = g1.seal(b"shared", policy="mrsigner")
        assert g1.unseal(pinned) == b"pinned"
        assert g1.identity().mrenclave == platform.measure(m1).mr_enclave
    with fake_gramine(tmp_path / "enclave2", platform, m2):
        g2 = GramineBackend(tmp_path / "enclave2")
        assert g2.unseal(shared) == b"shared"  # same signer, product and SVN
        with pytest.raises(SealingError) as info:
            g2.unseal(pinned)
    assert info.value.field == "mrenclave"
    # The Gramine key is the root: sealing with the simulator's root instead does not unseal.
    with pytest.raises(SealingError) as info:
        SimBackend(platform, manifest=m1).unseal(pinned)
    assert info.value.code == "SEALED_BLOB_AUTH_FAILED"
