"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1, "SGX Extensions").

Intel SGX PCK Certificate and CRL Profile: PPID (.1), TCB (.2: components .2.1-.2.16, PCESVN .2.17,
CPUSVN .2.18), PCE-ID (.3), FMSPC (.4), SGX Type (.5), PlatformInstanceID (.6), Configuration (.7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509

from nacre.collateral import der
from nacre.collateral.x509_der import CertDer, cert_extension_value
from nacre.errors import CollateralError

__all__ = [
    "SGX_EXTENSIONS_OID",
    "PckExtensions",
    "ca_kind_from_cn",
    "parse_pck_extension_value",
    "parse_pck_extensions",
    "parse_pck_extensions_der",
    "pck_ca_kind",
]

SGX_EXTENSIONS_OID: Final = "1.2.840.113741.1.13.1"
_SGX_EXT_OID: Final = x509.ObjectIdentifier(SGX_EXTENSIONS_OID)
_SGX_EXT_OID_DER: Final = der.oid_der(SGX_EXTENSIONS_OID)
_PPID = der.oid_der(SGX_EXTENSIONS_OID + ".1")
_TCB_DOTTED = SGX_EXTENSIONS_OID + ".2"
_TCB = der.oid_der(_TCB_DOTTED)
_TCB_COMPONENTS = tuple(der.oid_der(f"{_TCB_DOTTED}.{i}") for i in range(1, 17))
_PCESVN = der.oid_der(_TCB_DOTTED + ".17")
_CPUSVN = der.oid_der(_TCB_DOTTED + ".18")
_PCEID = der.oid_der(SGX_EXTENSIONS_OID + ".3")
_FMSPC = der.oid_der(SGX_EXTENSIONS_OID + ".4")
_SGX_TYPE = der.oid_der(SGX_EXTENSIONS_OID + ".5")
_PLATFORM_INSTANCE_ID = der.oid_der(SGX_EXTENSIONS_OID + ".6")
_CONFIG_DOTTED = SGX_EXTENSIONS_OID + ".7"
_CONFIGURATION = der.oid_der(_CONFIG_DOTTED)
_CONFIG_FLAGS = tuple(der.oid_der(f"{_CONFIG_DOTTED}.{i}") for i in (1, 2, 3))

CaKind = Literal["processor", "platform"]


@dataclass(frozen=True, slots=True)
class PckExtensions:
    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs (comp01..comp16)
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int  # 0 Standard, 1 Scalable, 2 Scalable with integrity
    platform_instance_id: bytes | None
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


def _missing(what: str) -> CollateralError:
    return CollateralError(
        f"PCK certificate lacks the SGX extension field {what}",
        code="PCK_CERT_INVALID",
        field=f"PCK certificate SGX extension {what}",
        expected="present",
        actual="missing",
        hint="this is not an Intel PCK certificate",
    )


def _octets(tlv: der.Tlv, what: str, size: int | None = None) -> bytes:
    if tlv.tag != der.TAG_OCTET_STRING or (size is not None and len(tlv.value) != size):
        raise CollateralError(
            f"PCK certificate SGX extension {what} has the wrong form",
            code="PCK_CERT_INVALID",
            field=f"PCK certificate SGX extension {what}",
            expected=f"OCTET STRING of {size} bytes" if size else "OCTET STRING",
            actual=f"tag {tlv.tag:#x}, {len(tlv.value)} bytes",
        )
    return tlv.value


def _pairs(seq: der.Tlv) -> dict[bytes, der.Tlv]:
    """(OID, value) pairs keyed by the OID's DER content bytes."""
    if seq.tag != der.TAG_SEQUENCE:
        raise CollateralError(
            "PCK certificate SGX extension is not a SEQUENCE of (OID, value) pairs",
            code="PCK_CERT_INVALID",
            field="PCK certificate SGX extension",
            expected="SEQUENCE",
            actual=f"tag {seq.tag:#x}",
        )
    return der.oid_pairs(seq.value)


def parse_pck_extensions_der(cert: CertDer) -> PckExtensions:
    """As :func:`parse_pck_extensions`, reading the extension from the certificate's DER (the
    cold verification path: `cryptography` would decode every extension into objects)."""
    value = cert_extension_value(cert, _SGX_EXT_OID_DER, what="PCK certificate")
    if value is None:
        raise _missing("(the whole extension)")
    return parse_pck_extension_value(value)


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    try:
        ext = cert.extensions.get_extension_for_oid(_SGX_EXT_OID).value
    except x509.ExtensionNotFound:
        raise _missing("(the whole extension)") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise _missing("(raw value)")
    return parse_pck_extension_value(ext.value)


def parse_pck_extension_value(value: bytes) -> PckExtensions:
    """Parse the DER value of the SGX Extensions extension."""
    if type(value) is bytes:
        fast = _parse_fast(value)
        if fast is not None:
            return fast
    return _parse_generic(value)


# The fast path. Intel's PCK certificates all lay the extension out the same way: PPID, TCB
# (comp01..comp16, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX Type, then (Platform CA certificates)
# PlatformInstanceID and Configuration (dynamicPlatform, cachedKeys, SMTEnabled). One compiled
# pattern matches exactly that layout, every length written into it as a literal except the
# three long-form SEQUENCE lengths, which are checked against the match afterwards. Anything
# else (another order, other OIDs or sizes, negative or long integers, another length form)
# does not match and goes to `_parse_generic`, so errors and odd-but-valid inputs are handled
# exactly as before. Whatever the pattern accepts, `_parse_generic` accepts with the same result
# (tests/test_pck_fast.py checks this).


def _lit(*parts: bytes | int) -> bytes:
    """A pattern matching these bytes literally (ints are single bytes)."""
    return re.escape(b"".join(bytes((p,)) if isinstance(p, int) else p for p in parts))


def _oid_tlv(oid: bytes) -> bytes:
    return bytes((der.TAG_OID, len(oid))) + oid


def _fixed_pair(oid: bytes, tag: int, size: int, group: str) -> bytes:
    """SEQUENCE { OID ``oid``, ``tag`` of ``size`` bytes } with short-form lengths; the value
    bytes in ``group``."""
    body_len = len(_oid_tlv(oid)) + 2 + size
    assert body_len < 0x80
    capture = b"(?P<%s>.{%d})" % (group.encode(), size)
    return _lit(der.TAG_SEQUENCE, body_len, _oid_tlv(oid), tag, size) + capture


def _svn_pair(oid: bytes) -> bytes:
    """SEQUENCE { OID ``oid``, INTEGER 0..255 } in one of the two forms whose value is the last
    byte b, read unsigned: ``02 01 b`` (b < 0x80) or ``02 02 00 b``. Both decode to b under
    `der.decode_int` (signed big-endian). Other INTEGERs (negative, > 255, longer) do not match."""
    short, long = len(_oid_tlv(oid)) + 3, len(_oid_tlv(oid)) + 4
    assert long < 0x80
    return _lit(der.TAG_SEQUENCE) + b"(?:%s[\x00-\x7f]|%s.)" % (
        _lit(short, _oid_tlv(oid), der.TAG_INTEGER, 1),
        _lit(long, _oid_tlv(oid), der.TAG_INTEGER, 2, 0),
    )


def _long_seq() -> bytes:
    """A SEQUENCE header with a two-byte long-form length (checked after the match)."""
    return _lit(der.TAG_SEQUENCE, 0x82) + b".."


_SVN_OIDS: Final = (*_TCB_COMPONENTS, _PCESVN)
_SVN_PAIR_LEN: Final = 2 + len(_oid_tlv(_PCESVN)) + 3  # one SVN pair, 1-byte INTEGER form
_CPUSVN_PAIR_LEN: Final = 2 + len(_oid_tlv(_CPUSVN)) + 2 + 16
_FLAG_PAIR_LEN: Final = 2 + len(_oid_tlv(_CONFIG_FLAGS[0])) + 3
# Fixed offsets in the value: 4-byte top header, the PPID pair, then the TCB pair's header, its
# OID and the TCB SEQUENCE's header.
_TCB_PAIR_AT: Final = 4 + 2 + len(_oid_tlv(_PPID)) + 2 + 16
_TCB_AT: Final = _TCB_PAIR_AT + 4 + len(_oid_tlv(_TCB)) + 4
_FAST_RE: Final = re.compile(
    _long_seq()
    + _fixed_pair(_PPID, der.TAG_OCTET_STRING, 16, "ppid")
    + _long_seq()
    + _lit(_oid_tlv(_TCB))
    + _long_seq()
    + b"".join(map(_svn_pair, _SVN_OIDS))
    + _fixed_pair(_CPUSVN, der.TAG_OCTET_STRING, 16, "cpusvn")
    + b"(?P<tcb_end>)"
    + _fixed_pair(_PCEID, der.TAG_OCTET_STRING, 2, "pceid")
    + _fixed_pair(_FMSPC, der.TAG_OCTET_STRING, 6, "fmspc")
    + _fixed_pair(_SGX_TYPE, der.TAG_ENUMERATED, 1, "sgx_type")
    + b"(?:"
    + _fixed_pair(_PLATFORM_INSTANCE_ID, der.TAG_OCTET_STRING, 16, "pid")
    + b")?(?:"
    + _lit(
        der.TAG_SEQUENCE,
        len(_oid_tlv(_CONFIGURATION)) + 2 + 3 * _FLAG_PAIR_LEN,
        _oid_tlv(_CONFIGURATION),
        der.TAG_SEQUENCE,
        3 * _FLAG_PAIR_LEN,
    )
    + b"".join(
        _fixed_pair(oid, der.TAG_BOOLEAN, 1, f"f{i}")
        for i, oid in enumerate(_CONFIG_FLAGS, start=1)
    )
    + b")?",
    re.DOTALL,
)
_G_TCB_END: Final = _FAST_RE.groupindex["tcb_end"]
_G_FIELDS: Final = tuple(
    _FAST_RE.groupindex[name]
    for name in ("ppid", "cpusvn", "pceid", "fmspc", "sgx_type", "pid", "f1", "f2", "f3")
)
#: The 2-byte INTEGER header and leading zero of an SVN in its ``02 02 00 b`` form.
_LONG_SVN: Final = bytes((der.TAG_INTEGER, 2, 0))
_SHORT_SVN: Final = bytes((der.TAG_INTEGER, 1))
#: A Configuration flag as `_parse_generic` reads it (absent None, 00 False, any other byte True).
_FLAG: Final[dict[bytes | None, bool | None]] = {None: None, b"\x00": False}


def _parse_fast(value: bytes) -> PckExtensions | None:
    """The extension in Intel's usual layout, or None for anything else."""
    m = _FAST_RE.match(value)
    if m is None:
        return None
    tcb_end = m.end(_G_TCB_END)
    tcb_len = int.from_bytes(value[_TCB_AT - 2 : _TCB_AT])
    if (
        int.from_bytes(value[2:4]) != m.end() - 4
        or tcb_len != tcb_end - _TCB_AT
        or int.from_bytes(value[_TCB_PAIR_AT + 2 : _TCB_PAIR_AT + 4]) != tcb_end - _TCB_PAIR_AT - 4
    ):
        return None
    # The 17 SVN pairs are validated; in each, the value is the pair's last byte. Dropping the
    # "02 00" of every long form (the byte run 02 02 00 occurs only there: an OID's last arc
    # byte is followed by 02 01 or 02 02, a value byte by 30 or the CPUSVN pair) leaves 17
    # pairs of one size, the values at a fixed stride.
    svns = value[_TCB_AT : tcb_end - _CPUSVN_PAIR_LEN].replace(_LONG_SVN, _SHORT_SVN)
    if len(svns) != 17 * _SVN_PAIR_LEN:  # cannot happen after the match; never guess
        return None
    svn = tuple(svns[_SVN_PAIR_LEN - 1 :: _SVN_PAIR_LEN])
    ppid, cpusvn, pceid, fmspc, sgx_type, pid, f1, f2, f3 = m.group(*_G_FIELDS)
    return PckExtensions(
        ppid=ppid,
        tcb_components=svn[:16],
        pce_svn=svn[16],
        cpu_svn=cpusvn,
        pce_id=pceid,
        fmspc=fmspc,
        sgx_type=int.from_bytes(sgx_type, signed=True),
        platform_instance_id=pid,
        dynamic_platform=_FLAG.get(f1, True),
        cached_keys=_FLAG.get(f2, True),
        smt_enabled=_FLAG.get(f3, True),
    )


def _parse_generic(value: bytes) -> PckExtensions:
    """The general reader: any order, any length form; names the field that is wrong."""
    top, _ = der.read_one(value)
    fields = _pairs(top)

    def need(oid: bytes, what: str) -> der.Tlv:
        if oid not in fields:
            raise _missing(what)
        return fields[oid]

    tcb = _pairs(need(_TCB, "TCB"))
    comps = []
    for i, oid in enumerate(_TCB_COMPONENTS, start=1):
        if oid not in tcb:
            raise _missing(f"TCB comp{i:02d}svn")
        comps.append(der.decode_int(tcb[oid]))
    if _PCESVN not in tcb:
        raise _missing("PCESVN")
    if _CPUSVN not in tcb:
        raise _missing("CPUSVN")
    config: dict[bytes, der.Tlv] = {}
    if _CONFIGURATION in fields:
        config = _pairs(fields[_CONFIGURATION])

    def flag(i: int) -> bool | None:
        tlv = config.get(_CONFIG_FLAGS[i - 1])
        return None if tlv is None else tlv.value not in (b"", b"\x00")

    pid = fields.get(_PLATFORM_INSTANCE_ID)
    return PckExtensions(
        ppid=_octets(need(_PPID, "PPID"), "PPID", 16),
        tcb_components=tuple(comps),
        pce_svn=der.decode_int(tcb[_PCESVN]),
        cpu_svn=_octets(tcb[_CPUSVN], "CPUSVN", 16),
        pce_id=_octets(need(_PCEID, "PCE-ID"), "PCE-ID", 2),
        fmspc=_octets(need(_FMSPC, "FMSPC"), "FMSPC", 6),
        sgx_type=der.decode_int(need(_SGX_TYPE, "SGX Type")),
        platform_instance_id=None if pid is None else _octets(pid, "PlatformInstanceID"),
        dynamic_platform=flag(1),
        cached_keys=flag(2),
        smt_enabled=flag(3),
    )


def pck_ca_kind(cert: x509.Certificate) -> CaKind:
    """Which PCK CA issued ``cert``: processor or platform (decides which PCK CRL applies)."""
    cns = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return ca_kind_from_cn(str(cns[0].value) if cns else "")


def ca_kind_from_cn(cn: str) -> CaKind:
    """``processor`` or ``platform`` from a PCK CA's common name."""
    if "Processor" in cn:
        return "processor"
    if "Platform" in cn:
        return "platform"
    raise CollateralError(
        "PCK certificate issuer is neither the Processor CA nor the Platform CA",
        code="PCK_CERT_INVALID",
        field="PCK certificate issuer CN",
        expected="Intel SGX PCK Processor CA or Intel SGX PCK Platform CA",
        actual=cn or "(none)",
    )
