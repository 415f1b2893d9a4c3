"""Shortcuts on the cold verification path decide exactly as the code they short-cut.

Each is run beside its reference on the real certificates and collateral of the vectors and on
damaged or generated inputs: the DER header's direct long-form lengths, the commonName read of
a Name that starts with it, extension lookups that start after the subject and read the extnID
inline, PEM blocks whose lines end in "\\n" or that spell a trust anchor, the boolean screen of
TCB levels, and the exact-type test for EC keys.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral import certs, der, tcb_info, x509_der
from nacre.collateral.certs import load_pem_chain_der
from nacre.collateral.trust import TrustRoots
from nacre.collateral.x509_der import CertDer, cert_der, cert_extension_value, name_cn
from nacre.errors import CollateralError
from nacre.verify.chain import is_ec_key
from vectors import VECTORS_DIR, vector_certs

_DER = serialization.Encoding.DER


CERTS = vector_certs()
PARTS = [cert_der(c, c.public_bytes(_DER)) for c in CERTS]
NAMES = sorted({p.subject for p in PARTS} | {p.issuer for p in PARTS})


def _outcome(fn: Any, *args: Any) -> object:
    try:
        return ("ok", fn(*args))
    except CollateralError as exc:
        return ("error", exc.code, exc.field, exc.expected, exc.actual, exc.message)


# --------------------------------------------------------------------------- DER header


def _header_reference(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """der.header as it was: every long-form length through int.from_bytes."""
    if pos + 2 > limit:
        raise der._bad("DER header", "tag and length", f"{limit - pos} bytes")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise der._bad("DER tag", "single-byte tag", f"{tag:#x}")
    length = data[pos + 1]
    pos += 2
    if length >= 0x80:
        nbytes = length & 0x7F
        if nbytes == 0 or nbytes > 4 or pos + nbytes > limit:
            raise der._bad("DER length", "1-4 length bytes", f"{nbytes}")
        length = int.from_bytes(data[pos : pos + nbytes], "big")
        pos += nbytes
    if pos + length > limit:
        raise der._bad("DER length", f"<= {limit - pos}", str(length))
    return tag, pos, pos + length


@settings(max_examples=500, deadline=None)
@given(
    st.binary(min_size=0, max_size=8),
    st.sampled_from([0x81, 0x82, 0x83, 0x84, 0x80, 0x85, 0x10, 0x7F]),
    st.integers(0, 600),
)
def test_header_long_forms_read_as_before(head: bytes, length_byte: int, pad: int) -> None:
    data = b"\x30" + bytes((length_byte,)) + head + bytes(pad)
    for limit in (len(data), min(len(data), 5), 2):
        assert _outcome(der.header, data, 0, limit) == _outcome(_header_reference, data, 0, limit)


# --------------------------------------------------------------------------- commonName


def _mutations(name: bytes) -> list[bytes]:
    out = [name, name[:-1], name[:13], name + b"\x00"]
    for i in range(min(len(name), 16)):
        for b in (0x00, 0x7F, 0x80, 0x81, 0xFF, name[i] ^ 0x01):
            out.append(name[:i] + bytes((b,)) + name[i + 1 :])
    return out


def test_vector_names_start_with_their_cn() -> None:
    """The shortcut is taken for the names verification meets (else it would buy nothing)."""
    intel = [n for n in NAMES if b"Intel" in n]
    assert intel
    assert all(n[6:11] == b"\x06\x03\x55\x04\x03" for n in intel)


@pytest.mark.parametrize("index", range(len(NAMES)))
def test_cn_shortcut_equals_the_walk(index: int) -> None:
    for name in _mutations(NAMES[index]):
        assert name_cn(name) == x509_der._name_cn_walk(name), name.hex()


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, 10_000),
    pos=st.integers(0, 40),
    value=st.integers(0, 255),
    cn=st.binary(max_size=4),
)
def test_cn_shortcut_equals_the_walk_on_damage(which: int, pos: int, value: int, cn: bytes) -> None:
    name = bytearray(NAMES[which % len(NAMES)])
    if pos < len(name):
        name[pos] = value
    damaged = bytes(name[:13]) + cn + bytes(name[13:])
    for candidate in (bytes(name), damaged):
        assert name_cn(candidate) == x509_der._name_cn_walk(candidate)


# --------------------------------------------------------------------------- extension lookup


def _extension_reference(cert: CertDer, oid: bytes) -> bytes | None:
    """cert_extension_value as it was: from the first TBS field, extnID through der.header."""
    data, header = cert.tbs, der.header
    what = "certificate"
    try:
        _, pos, end = header(data, 0, len(data))
        found: bytes | None = None
        while pos < end:
            tag, start, field_end = header(data, pos, end)
            pos = field_end
            if tag != 0xA3:
                continue
            tag, ext_pos, exts_end = header(data, start, field_end)
            if tag != der.TAG_SEQUENCE:
                raise x509_der._bad(what, "extensions are not a SEQUENCE")
            while ext_pos < exts_end:
                tag, e_start, e_end = header(data, ext_pos, exts_end)
                if tag != der.TAG_SEQUENCE:
                    raise x509_der._bad(what, "an extension is not a SEQUENCE")
                otag, ostart, oend = header(data, e_start, e_end)
                if otag == der.TAG_OID and data[ostart:oend] == oid:
                    if found is not None:
                        raise x509_der._bad(what, "an extension appears twice")
                    vtag, vstart, vend = header(data, oend, e_end)
                    if vtag == der.TAG_BOOLEAN:
                        vtag, vstart, vend = header(data, vend, e_end)
                    if vtag != 0x04 or vend != e_end:
                        raise x509_der._bad(what, "extnValue is not an OCTET STRING")
                    found = data[vstart:vend]
                ext_pos = e_end
        return found
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise x509_der._bad(what, exc.message) from exc


OIDS = [
    der.oid_der("1.2.840.113741.1.13.1"),  # SGX extensions
    der.oid_der("2.5.29.19"),  # basicConstraints
    der.oid_der("2.5.29.15"),  # keyUsage
    der.oid_der("1.2.3.4"),  # absent
]


@pytest.mark.parametrize("index", range(len(PARTS)))
def test_extension_lookup_equals_the_reference(index: int) -> None:
    parts = PARTS[index]
    assert parts.spki_at > 0
    for oid in OIDS:
        expected = _outcome(_extension_reference, parts, oid)
        assert _outcome(cert_extension_value, parts, oid) == expected
        assert _outcome(cert_extension_value, parts._replace(spki_at=0), oid) == expected


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 10_000), pos=st.integers(0, 2000), value=st.integers(0, 255))
def test_extension_lookup_on_damaged_extensions(which: int, pos: int, value: int) -> None:
    """Bytes of the extensions (after subjectPublicKeyInfo) damaged: same value or same error."""
    parts = PARTS[which % len(PARTS)]
    tbs = bytearray(parts.tbs)
    at = parts.spki_at + pos % max(1, len(tbs) - parts.spki_at)
    tbs[at] = value
    damaged = parts._replace(tbs=bytes(tbs))
    for oid in OIDS:
        assert _outcome(cert_extension_value, damaged, oid) == _outcome(
            _extension_reference, damaged, oid
        )


# --------------------------------------------------------------------------- PEM blocks


def _pem(ders: list[bytes], newline: bytes = b"\n", width: int = 64) -> bytes:
    out = b""
    for d in ders:
        b64 = base64.b64encode(d)
        lines = [b64[i : i + width] for i in range(0, len(b64), width)]
        out += b"-----BEGIN CERTIFICATE-----" + newline
        out += b"".join(line + newline for line in lines)
        out += b"-----END CERTIFICATE-----" + newline
    return out


def _slow_blocks(text: bytes) -> list[bytes] | None:
    """_pem_blocks as it was: every block stripped of all whitespace, then decoded."""
    out: list[bytes] = []
    pos = 0
    while (begin := text.find(certs._PEM_BEGIN, pos)) >= 0:
        if text[pos:begin].strip():
            return None
        end = text.find(certs._PEM_END, begin)
        if end < 0:
            return None
        body = text[begin + len(certs._PEM_BEGIN) : end].translate(None, certs._ASCII_WHITESPACE)
        try:
            out.append(binascii.a2b_base64(body, strict_mode=True))
        except binascii.Error:
            return None
        pos = end + len(certs._PEM_END)
    return out if not text[pos:].strip() else None


ANCHORS = TrustRoots.default().intel_der
ANCHOR_DERS = [a.der for a in ANCHORS]
CHAIN_DERS = [p.der for p in PARTS[:3]]


@pytest.mark.parametrize(
    ("newline", "width"),
    [(b"\n", 64), (b"\r\n", 64), (b"\n", 76), (b" \n", 64), (b"\t\n", 64), (b"\n\n", 64)],
)
def test_pem_blocks_decode_as_before(newline: bytes, width: int) -> None:
    text = _pem(CHAIN_DERS + ANCHOR_DERS, newline, width)
    known = [(certs._base64(a.der), a) for a in ANCHORS]
    got = certs._pem_blocks(text, known)
    slow = _slow_blocks(text)
    assert got is not None
    assert slow is not None
    assert [g.der if isinstance(g, CertDer) else g for g in got] == slow
    if newline == b"\n":  # the anchor block is recognised without decoding it
        assert isinstance(got[-1], CertDer)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 10_000), byte=st.sampled_from(b" \t\r\n\x0b\x0c=A/+-!\x00\xff"))
def test_damaged_pem_blocks_agree(pos: int, byte: int) -> None:
    text = bytearray(_pem(CHAIN_DERS[:1] + ANCHOR_DERS))
    text[pos % len(text)] = byte
    known = [(certs._base64(a.der), a) for a in ANCHORS]
    got = certs._pem_blocks(bytes(text), known)
    slow = _slow_blocks(bytes(text))
    assert (None if got is None else [g.der if isinstance(g, CertDer) else g for g in got]) == slow


def test_chain_with_anchor_loads_the_same_either_way() -> None:
    pem = _pem(CHAIN_DERS + ANCHOR_DERS, b"\r\n")  # CRLF: no shortcut, decoded and matched
    with_anchor = load_pem_chain_der(pem, field="chain", known=ANCHORS)
    plain = load_pem_chain_der(_pem(CHAIN_DERS + ANCHOR_DERS), field="chain", known=ANCHORS)
    assert [c.der for c in with_anchor] == [c.der for c in plain]
    assert with_anchor[-1] is ANCHORS[0]
    assert plain[-1] is ANCHORS[0]


# --------------------------------------------------------------------------- TCB levels


_SVN_VALUES = st.one_of(
    st.integers(-3, 300), st.floats(allow_nan=False), st.text(max_size=2), st.none()
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.fixed_dictionaries({"svn": _SVN_VALUES}), st.none()), max_size=18))
def test_bool_screen_changes_no_svn_verdict_without_bools(comps: list[Any]) -> None:
    """Without booleans in the JSON, skipping the type test gives the same components."""
    assert tcb_info._byte_svns(comps, False) == tcb_info._byte_svns(comps, True)


def test_bool_screen() -> None:
    assert tcb_info.may_hold_bools(b'{"a":true}')
    assert tcb_info.may_hold_bools(b'{"a":[false]}')
    assert not tcb_info.may_hold_bools(b'{"a":1,"b":"x"}')
    # A bool among the svns is refused when the screen says booleans may be present.
    comps = [{"svn": 1}] * 15 + [{"svn": True}]
    assert tcb_info._byte_svns(comps, True) is None


# --------------------------------------------------------------------------- EC key test


def test_is_ec_key_equals_isinstance() -> None:
    keys: list[object] = [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP256R1()),
        None,
        b"key",
    ]
    keys += [c.public_key() for c in CERTS[:5]]
    for key in keys:
        assert is_ec_key(key) == isinstance(key, ec.EllipticCurvePublicKey)


# --------------------------------------------------------------------------- TDX module levels

_TDX_BODIES = [
    (p / "tcb_info.json").read_bytes()
    for p in sorted(VECTORS_DIR.iterdir())
    if (p / "tcb_info.json").exists()
    and b'"tdxModuleIdentities"' in (p / "tcb_info.json").read_bytes()
]
_ODD: list[object] = [
    None,
    True,
    -1,
    0,
    255,
    256,
    1.0,
    "1",
    "UpToDate",
    "NotAStatus",
    [],
    ["A"],
    [1],
    {},
]


def _parse_slow_modules(body: bytes) -> object:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tcb_info, "_module_level_fast", lambda raw: None)
        return _outcome(tcb_info.parse_tcb_info, body)


def test_tdx_vectors_have_module_levels() -> None:
    assert _TDX_BODIES


@pytest.mark.parametrize("index", range(len(_TDX_BODIES)))
def test_module_levels_fast_path_equals_field_readers(index: int) -> None:
    import json

    body = _TDX_BODIES[index]
    assert _outcome(tcb_info.parse_tcb_info, body) == _parse_slow_modules(body)
    doc = json.loads(body)
    level = doc["tcbInfo"]["tdxModuleIdentities"][0]["tcbLevels"][0]
    verdicts = set()
    for key in [*level, "tcb.isvsvn", "advisoryIDs"]:
        for value in [*_ODD, "delete"]:
            damaged = json.loads(body)
            target = damaged["tcbInfo"]["tdxModuleIdentities"][0]["tcbLevels"][0]
            field = key
            if key == "tcb.isvsvn":
                target, field = target["tcb"], "isvsvn"
            if value == "delete":
                target.pop(field, None)
            else:
                target[field] = value
            data = json.dumps(damaged, separators=(",", ":")).encode()
            got = _outcome(tcb_info.parse_tcb_info, data)
            assert got == _parse_slow_modules(data), (key, value)
            verdicts.add(got[0])  # type: ignore[index]
    assert verdicts == {"ok", "error"}
