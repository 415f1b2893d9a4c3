"""The SGX PCK extension's fast path agrees with the general reader on every input.

`parse_pck_extension_value` tries `_parse_fast` (one pattern for Intel's usual layout) and falls
back to `_parse_generic`. Whatever the fast path accepts must be what the general reader returns,
and every input must give the same result or the same error (code, field, expected, actual).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral import der, pck
from nacre.collateral.certs import load_pem_chain_der
from nacre.collateral.pck import (
    PckExtensions,
    _parse_fast,
    _parse_generic,
    parse_pck_extension_value,
    parse_pck_extensions,
    parse_pck_extensions_der,
)
from nacre.collateral.x509_der import cert_extension_value
from nacre.errors import CollateralError
from nacre.evidence import parse_quote
from vectors import VectorCase, load_cases

CASES = [c for c in load_cases(tee=("sgx", "tdx")) if c.evidence_path.name == "quote.bin"]


@cache
def _ext_value(case_id: str) -> bytes:
    case = next(c for c in CASES if c.id == case_id)
    leaf = load_pem_chain_der(parse_quote(case.evidence).pck_chain_pem, field="chain")[0]
    value = cert_extension_value(leaf, pck._SGX_EXT_OID_DER)
    assert value is not None
    return value


def _outcome(value: bytes, parse: Any) -> tuple[Any, ...]:
    try:
        return ("ok", parse(value))
    except CollateralError as exc:
        return ("error", exc.code, exc.field, exc.expected, exc.actual, exc.message, exc.hint)


def _check(value: bytes) -> tuple[Any, ...]:
    """Public path == general reader; a fast result is the general reader's result."""
    want = _outcome(value, _parse_generic)
    assert _outcome(value, parse_pck_extension_value) == want
    fast = _parse_fast(value)
    if fast is not None:
        assert want == ("ok", fast)
    return want


# -- the vectors --------------------------------------------------------------------------------


def test_there_are_vectors() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_vector_certificates_take_the_fast_path(case: VectorCase) -> None:
    value = _ext_value(case.id)
    fast = _parse_fast(value)
    assert fast is not None, "Intel's layout should not need the general reader"
    assert fast == _parse_generic(value)
    assert type(fast.tcb_components) is tuple
    assert all(type(x) is int for x in (*fast.tcb_components, fast.pce_svn, fast.sgx_type))
    assert all(type(x) is bytes for x in (fast.ppid, fast.cpu_svn, fast.pce_id, fast.fmspc))
    # ... and both agree with `cryptography`'s view of the certificate.
    chain = load_pem_chain_der(parse_quote(case.evidence).pck_chain_pem, field="chain")
    assert parse_pck_extensions_der(chain[0]) == fast == parse_pck_extensions(chain[0].cert)


def test_both_layouts_are_in_the_vectors() -> None:
    """Processor CA (no Configuration) and Platform CA (with it) certificates both occur."""
    parsed = [_parse_fast(_ext_value(c.id)) for c in CASES]
    assert any(p is not None and p.dynamic_platform is None for p in parsed)
    assert any(p is not None and p.dynamic_platform is not None for p in parsed)
    assert any(p is not None and max(p.tcb_components) >= 0x80 for p in parsed)  # 02 02 00 b


_VALUES = st.sampled_from([c.id for c in CASES]).map(_ext_value)


@settings(max_examples=400, deadline=None)
@given(_VALUES, st.data())
def test_byte_mutations_agree(value: bytes, data: st.DataObject) -> None:
    out = bytearray(value)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.integers(0, 255))
    _check(bytes(out))


@settings(max_examples=200, deadline=None)
@given(_VALUES, st.data())
def test_truncations_and_extensions_agree(value: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(value)))
    _check(value[:cut])
    _check(value + data.draw(st.binary(max_size=8)))


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.data())
def test_insertions_and_deletions_agree(value: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(value)))
    j = data.draw(st.integers(i, min(len(value), i + 4)))
    _check(value[:i] + data.draw(st.binary(max_size=4)) + value[j:])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_single_byte_change_at_structural_offsets_agrees(case: VectorCase) -> None:
    """Each byte position, set to a few telling values (tags, lengths, 0x00, 0x80, 0xff)."""
    value = _ext_value(case.id)
    for i in range(len(value)):
        for b in {0x00, 0x01, 0x02, 0x04, 0x0A, 0x30, 0x7F, 0x80, 0x81, 0x82, 0xFF, value[i] ^ 1}:
            _check(value[:i] + bytes((b,)) + value[i + 1 :])


# -- hand-built extension values ----------------------------------------------------------------


def _tlv(tag: int, content: bytes, form: str = "min") -> bytes:
    n = len(content)
    if form == "min":
        form = "short" if n < 0x80 else "long1" if n < 0x100 else "long2"
    if form == "short" and n < 0x80:
        head = bytes((n,))
    elif form == "long1" and n < 0x100:
        head = bytes((0x81, n))
    elif form == "long3":
        head = b"\x83" + n.to_bytes(3, "big")
    else:
        head = b"\x82" + n.to_bytes(2, "big")
    return bytes((tag,)) + head + content


def _pair(oid: bytes, value_tlv: bytes, form: str = "min") -> bytes:
    return _tlv(der.TAG_SEQUENCE, _tlv(der.TAG_OID, oid) + value_tlv, form)


def _int(n: int, *, pad: bool = False, tag: int = der.TAG_INTEGER) -> bytes:
    size = max(1, (n + (n < 0)).bit_length() // 8 + 1)
    return _tlv(tag, (b"\x00" if pad else b"") + n.to_bytes(size, "big", signed=True))


def _octets(size: int, fill: int = 0xAB) -> bytes:
    return _tlv(der.TAG_OCTET_STRING, bytes([fill]) * size)


def _intel_pairs(
    svns: list[int],
    pce_svn: int,
    *,
    pid: bool,
    flags: list[bytes] | None,
) -> tuple[list[bytes], list[bytes]]:
    """(top-level pairs, TCB pairs) in Intel's order."""
    tcb = [_pair(oid, _int(v)) for oid, v in zip(pck._TCB_COMPONENTS, svns, strict=True)]
    tcb += [_pair(pck._PCESVN, _int(pce_svn)), _pair(pck._CPUSVN, _octets(16, 0x11))]
    top = [
        _pair(pck._PPID, _octets(16, 0x22)),
        b"TCB",  # placeholder, filled by _build
        _pair(pck._PCEID, _octets(2, 0x33)),
        _pair(pck._FMSPC, _octets(6, 0x44)),
        _pair(pck._SGX_TYPE, _tlv(der.TAG_ENUMERATED, b"\x01")),
    ]
    if pid:
        top.append(_pair(pck._PLATFORM_INSTANCE_ID, _octets(16, 0x55)))
    if flags is not None:
        config = b"".join(
            _pair(oid, _tlv(der.TAG_BOOLEAN, f))
            for oid, f in zip(pck._CONFIG_FLAGS, flags, strict=False)
        )
        top.append(_pair(pck._CONFIGURATION, _tlv(der.TAG_SEQUENCE, config)))
    return top, tcb


def _build(top: list[bytes], tcb: list[bytes], forms: tuple[str, str, str] = ("min",) * 3) -> bytes:
    tcb_pair = _pair(pck._TCB, _tlv(der.TAG_SEQUENCE, b"".join(tcb), forms[2]), forms[1])
    return _tlv(
        der.TAG_SEQUENCE,
        b"".join(tcb_pair if p == b"TCB" else p for p in top),
        forms[0],
    )


_SVN = st.one_of(st.integers(0, 255), st.integers(-300, 70000))
_FLAG_BYTES = st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x02", b"", b"\x00\x00"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 255), min_size=16, max_size=16),
    st.integers(0, 255),
    st.booleans(),
    st.one_of(
        st.none(), st.lists(st.sampled_from([b"\x00", b"\x01", b"\xff"]), min_size=3, max_size=3)
    ),
)
def test_intel_layout_takes_the_fast_path(
    svns: list[int], pce_svn: int, pid: bool, flags: list[bytes] | None
) -> None:
    value = _build(*_intel_pairs(svns, pce_svn, pid=pid, flags=flags))
    fast = _parse_fast(value)
    assert fast is not None
    assert _check(value) == ("ok", fast)
    assert fast.tcb_components == tuple(svns)
    assert fast.pce_svn == pce_svn
    assert fast.platform_instance_id == (b"\x55" * 16 if pid else None)
    want_flags = (None,) * 3 if flags is None else tuple(f != b"\x00" for f in flags)
    assert (fast.dynamic_platform, fast.cached_keys, fast.smt_enabled) == want_flags


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_SVN, min_size=16, max_size=16),
    _SVN,
    st.booleans(),
    st.one_of(st.none(), st.lists(_FLAG_BYTES, min_size=0, max_size=3)),
    st.tuples(*[st.sampled_from(["min", "short", "long1", "long2", "long3"])] * 3),
    st.data(),
)
def test_varied_layouts_agree(
    svns: list[int],
    pce_svn: int,
    pid: bool,
    flags: list[bytes] | None,
    forms: tuple[str, str, str],
    data: st.DataObject,
) -> None:
    top, tcb = _intel_pairs(svns, pce_svn, pid=pid, flags=flags)
    edits = data.draw(st.lists(st.sampled_from(["shuffle", "drop", "dup", "unknown", "pad"])))
    for edit in edits:
        target = data.draw(st.sampled_from([top, tcb]))
        i = data.draw(st.integers(0, len(target) - 1))
        if edit == "shuffle":
            target[:] = data.draw(st.permutations(target))
        elif edit == "drop" and len(target) > 1:
            del target[i]
        elif edit == "dup":
            target.insert(data.draw(st.integers(0, len(target))), target[i])
        elif edit == "unknown":
            oid = der.oid_der(data.draw(st.sampled_from(["1.2.840.113741.1.13.1.99", "1.2.3"])))
            target.insert(i, _pair(oid, _int(7)))
        elif edit == "pad" and target is tcb and i < 17:  # non-minimal 02 02 00 0b / 02 03 00 ..
            target[i] = _pair((*pck._TCB_COMPONENTS, pck._PCESVN)[i], _int(11, pad=True))
    _check(_build(top, tcb, forms))


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("reordered TCB", lambda top, tcb: tcb.reverse()),
        ("reordered top", lambda top, tcb: top.reverse()),
        ("duplicate comp01", lambda top, tcb: tcb.insert(1, tcb[0])),
        ("duplicate PPID", lambda top, tcb: top.append(top[0])),
        ("missing comp07", lambda top, tcb: tcb.pop(6)),
        ("missing PCESVN", lambda top, tcb: tcb.pop(16)),
        ("missing CPUSVN", lambda top, tcb: tcb.pop(17)),
        ("missing PPID", lambda top, tcb: top.pop(0)),
        ("missing FMSPC", lambda top, tcb: top.pop(3)),
        ("unknown OID", lambda top, tcb: top.append(_pair(b"\x2a\x03", _int(1)))),
        ("unknown TCB OID", lambda top, tcb: tcb.append(_pair(b"\x2a\x03", _int(1)))),
        (
            "negative comp02",
            lambda top, tcb: tcb.__setitem__(1, _pair(pck._TCB_COMPONENTS[1], _int(-1))),
        ),
        ("big PCESVN", lambda top, tcb: tcb.__setitem__(16, _pair(pck._PCESVN, _int(300)))),
        (
            "ENUMERATED comp03",
            lambda top, tcb: tcb.__setitem__(
                2, _pair(pck._TCB_COMPONENTS[2], _int(3, tag=der.TAG_ENUMERATED))
            ),
        ),
        (
            "OCTET STRING comp04",
            lambda top, tcb: tcb.__setitem__(3, _pair(pck._TCB_COMPONENTS[3], _octets(1))),
        ),
        (
            "empty comp05",
            lambda top, tcb: tcb.__setitem__(4, _pair(pck._TCB_COMPONENTS[4], _tlv(2, b""))),
        ),
        ("INTEGER SGX type", lambda top, tcb: top.__setitem__(4, _pair(pck._SGX_TYPE, _int(1)))),
        ("short PPID", lambda top, tcb: top.__setitem__(0, _pair(pck._PPID, _octets(15)))),
        (
            "long-form PPID pair",
            lambda top, tcb: top.__setitem__(0, _pair(pck._PPID, _octets(16), "long1")),
        ),
        (
            "long-form comp01 pair",
            lambda top, tcb: tcb.__setitem__(0, _pair(pck._TCB_COMPONENTS[0], _int(1), "long1")),
        ),
        ("empty pair", lambda top, tcb: top.append(_tlv(der.TAG_SEQUENCE, b""))),
    ],
)
def test_hand_built_variants_agree(name: str, edit: Any) -> None:
    top, tcb = _intel_pairs(list(range(16)), 13, pid=True, flags=[b"\x01", b"\x00", b"\x01"])
    edit(top, tcb)
    outcome = _check(_build(top, tcb))
    assert outcome[0] in ("ok", "error"), name


def test_unusual_inputs_fall_back() -> None:
    """The fast path declines what it does not know, leaving the general reader to answer."""
    top, tcb = _intel_pairs([1] * 16, 13, pid=False, flags=None)
    tcb.reverse()
    value = _build(top, tcb)
    assert _parse_fast(value) is None
    assert isinstance(parse_pck_extension_value(value), PckExtensions)
    top, tcb = _intel_pairs([1] * 16, 13, pid=False, flags=None)
    tcb.insert(0, tcb[0])
    with pytest.raises(CollateralError) as info:
        parse_pck_extension_value(_build(top, tcb))
    assert info.value.code == "CERT_EXTENSION_MALFORMED"
    assert info.value.expected == "each OID once"


def test_wrong_length_fields_fall_back() -> None:
    """The three long-form lengths the pattern does not fix are checked against the match."""
    value = _build(*_intel_pairs([1] * 16, 13, pid=True, flags=None))
    assert _parse_fast(value) is not None
    for at in (3, pck._TCB_PAIR_AT + 3, pck._TCB_AT - 1):
        for delta in (-1, 1):
            bad = bytearray(value)
            bad[at] = (bad[at] + delta) % 256
            assert _parse_fast(bytes(bad)) is None
            _check(bytes(bad))
    # Trailing bytes after the extension's SEQUENCE are ignored by both readers.
    assert _check(value + b"\x00\x01")[0] == "ok"
    assert _parse_fast(value + b"\x00\x01") is not None


def test_non_bytes_input_uses_the_general_reader() -> None:
    """Only exact ``bytes`` take the fast path; a bytearray fails in the general reader as it
    always has (its OID slices are unhashable), rather than being quietly accepted."""
    value = bytearray(_ext_value(CASES[0].id))
    with pytest.raises(TypeError, match="unhashable"):
        parse_pck_extension_value(value)  # type: ignore[arg-type]
