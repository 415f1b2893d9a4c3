"""The cold-path shortcuts in collateral parsing decide exactly as the field-by-field readers do.

TCB info and QE identity levels are read with plain lookups when well-formed, and PEM chains skip
the zero-serial warning filter when every serial is visibly positive. Each shortcut is compared
here with the path it short-cuts, on the real vector files and on damaged copies of them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral import certs, qe_identity, tcb_info
from nacre.collateral.certs import load_pem_chain, load_pem_chain_der
from nacre.errors import CollateralError
from nacre.evidence import parse_quote
from vectors import VECTORS_DIR

DCAP_DIRS = sorted(p for p in VECTORS_DIR.iterdir() if (p / "quote.bin").exists())
TCB_BODIES = [(p / "tcb_info.json").read_bytes() for p in DCAP_DIRS]
QE_BODIES = [(p / "qe_identity.json").read_bytes() for p in DCAP_DIRS]


def _outcome(parse: Callable[[bytes], object], body: bytes) -> object:
    try:
        return ("ok", parse(body))
    except CollateralError as exc:
        return ("error", exc.code, exc.field, exc.expected, exc.actual, exc.message)


def _slow_tcb(body: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as m:
        m.setattr(tcb_info, "_level_fast", lambda raw, is_tdx, bools: None)
        return _outcome(tcb_info.parse_tcb_info, body)


def _slow_qe(body: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as m:
        m.setattr(qe_identity, "_level_fast", lambda raw: None)
        return _outcome(qe_identity.parse_qe_identity, body)


def _resign(doc: dict[str, Any], name: str) -> bytes:
    """A body with the same envelope (the signature is not checked by the parsers)."""
    return json.dumps({name: doc[name], "signature": doc["signature"]}).encode()


#: Replacement values that probe each acceptance rule of a level field.
ODD_VALUES: list[object] = [
    None,
    True,
    False,
    -1,
    0,
    255,
    256,
    65535,
    65536,
    1.0,
    "1",
    "UpToDate",
    "Revoked",
    "NotAStatus",
    [],
    ["INTEL-SA-00001"],
    [1],
    {},
    {"svn": 1},
    [{"svn": 1}] * 16,
    [{"svn": True}] * 16,
    [{"svn": 300}] * 16,
    [{"svn": 1}] * 15,
]


def _paths(level: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside one level (to damage it there)."""
    out = [prefix]
    if isinstance(level, dict):
        for k, v in level.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(level, list):
        for i, v in enumerate(level):
            out += _paths(v, (*prefix, i))
    return out


def _damaged(body: bytes, name: str, path: tuple[Any, ...], value: object) -> bytes:
    doc = json.loads(body)
    target: Any = doc[name]["tcbLevels"]
    *head, last = path
    for key in head:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return _resign(doc, name)


_DELETE = object()


@pytest.mark.parametrize("body", TCB_BODIES, ids=[p.name for p in DCAP_DIRS])
def test_tcb_levels_fast_path_matches_field_reader(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _outcome(tcb_info.parse_tcb_info, body)
    assert fast[0] == "ok"  # type: ignore[index]
    assert fast == _slow_tcb(body, monkeypatch)


@pytest.mark.parametrize("body", QE_BODIES, ids=[p.name for p in DCAP_DIRS])
def test_qe_levels_fast_path_matches_field_reader(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _outcome(qe_identity.parse_qe_identity, body)
    assert fast[0] == "ok"  # type: ignore[index]
    assert fast == _slow_qe(body, monkeypatch)


def _one_per_kind() -> list[tuple[str, int]]:
    """One TCB info per (id, version) in the vectors, and two QE identities."""
    seen: dict[tuple[str, int], int] = {}
    for i, body in enumerate(TCB_BODIES):
        info = json.loads(body)["tcbInfo"]
        seen.setdefault((info.get("id", "SGX"), info["version"]), i)
    return [("tcb", i) for i in seen.values()] + [("qe", 0), ("qe", len(QE_BODIES) - 1)]


@pytest.mark.parametrize(("kind", "index"), _one_per_kind())
def test_damaged_levels_agree_field_by_field(
    kind: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field of the first level replaced by each odd value, or deleted."""
    body = (TCB_BODIES if kind == "tcb" else QE_BODIES)[index]
    name = "tcbInfo" if kind == "tcb" else "enclaveIdentity"
    parse = tcb_info.parse_tcb_info if kind == "tcb" else qe_identity.parse_qe_identity
    slow = _slow_tcb if kind == "tcb" else _slow_qe
    doc = json.loads(body)
    levels = doc[name]["tcbLevels"]
    verdicts = set()
    for path in _paths(levels[0], (0,))[1:]:
        for value in [*ODD_VALUES, _DELETE]:
            damaged = _damaged(body, name, path, value)
            got = _outcome(parse, damaged)
            assert got == slow(damaged, monkeypatch), (path, value)
            verdicts.add(got[0])  # type: ignore[index]
    assert verdicts == {"ok", "error"}


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, len(TCB_BODIES) - 1),
    pos=st.integers(0, 10_000),
    byte=st.sampled_from(b'0129:,{}[]"-tfn .e'),
)
def test_tcb_byte_damage_agrees(which: int, pos: int, byte: int) -> None:
    body = bytearray(TCB_BODIES[which])
    body[pos % len(body)] = byte
    with pytest.MonkeyPatch.context() as m:
        got = _outcome(tcb_info.parse_tcb_info, bytes(body))
        assert got == _slow_tcb(bytes(body), m)


# --------------------------------------------------------------------------- zero-serial shortcut


def _vector_ders() -> list[bytes]:
    out: list[bytes] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for path in sorted(VECTORS_DIR.glob("*/*")):
            data = path.read_bytes()
            if path.name == "quote.bin":
                chain = load_pem_chain(parse_quote(data).pck_chain_pem, field=path.name)
            elif path.suffix == ".pem" and b"BEGIN CERTIFICATE" in data:
                chain = load_pem_chain(data, field=path.name)
            elif path.suffix == ".der" and "crl" not in path.name:
                chain = (x509.load_der_x509_certificate(data),)
            else:
                continue
            out += [c.public_bytes(Encoding.DER) for c in chain]
    return out


VECTOR_DERS = _vector_ders()


def test_positive_serial_is_never_wrong() -> None:
    """Whenever the shortcut says "positive", cryptography agrees; AMD's zero serials are "not
    known" (they are loaded under the filter)."""
    said_positive = 0
    for der in VECTOR_DERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            serial = x509.load_der_x509_certificate(der).serial_number
        if certs._positive_serial(der):
            said_positive += 1
            assert serial > 0
        else:
            assert serial <= 0 or der[1] != 0x82 or der[5] != 0x82
    assert said_positive >= len(VECTOR_DERS) // 2


@pytest.mark.parametrize("serial", [0, 1, 0x7F, 0x80, 2**64, 2**159 - 1])
def test_positive_serial_on_generated_certificates(serial: int) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x" * 64)])
    now = datetime.now(UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(max(serial, 1))
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
        )
        der = bytearray(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    if serial == 0:  # cryptography refuses to build it: set the one-byte serial to 0 in place
        assert der[13:16] == b"\x02\x01\x01"
        der[15] = 0
    assert certs._positive_serial(bytes(der)) is (serial > 0)


def test_zero_serial_chain_loads_without_a_warning() -> None:
    """AMD VCEKs (serial 0) through the DER chain loader: loaded, and no warning escapes."""
    amd = [d for d in VECTOR_DERS if not certs._positive_serial(d)]
    assert amd, "the vectors hold AMD certificates with serial number 0"
    pem = _quiet_load(amd[0]).public_bytes(Encoding.PEM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (loaded,) = load_pem_chain_der(pem, field="vcek")
    assert loaded.der == amd[0]


def _quiet_load(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


def test_known_anchor_blocks_are_reused() -> None:
    from nacre.collateral.trust import TrustRoots

    anchors = TrustRoots.default().intel_der
    pem = parse_quote((DCAP_DIRS[0] / "quote.bin").read_bytes()).pck_chain_pem
    chain = load_pem_chain_der(pem, field="pck", known=anchors)
    assert chain[-1] is anchors[0]
    plain = load_pem_chain_der(pem, field="pck")
    assert [c.der for c in chain] == [c.der for c in plain]
