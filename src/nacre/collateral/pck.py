"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1, "SGX Extensions").

Intel SGX PCK Certificate and CRL Profile: PPID (.1), TCB (.2: components .2.1-.2.16, PCESVN .2.17,
CPUSVN .2.18), PCE-ID (.3), FMSPC (.4), SGX Type (.5), PlatformInstanceID (.6), Configuration (.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509

from nacre.collateral import der
from nacre.errors import CollateralError

__all__ = ["SGX_EXTENSIONS_OID", "PckExtensions", "pck_ca_kind", "parse_pck_extensions"]

SGX_EXTENSIONS_OID: Final = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSIONS_OID + ".1"
_TCB = SGX_EXTENSIONS_OID + ".2"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
_PCEID = SGX_EXTENSIONS_OID + ".3"
_FMSPC = SGX_EXTENSIONS_OID + ".4"
_SGX_TYPE = SGX_EXTENSIONS_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSIONS_OID + ".6"
_CONFIGURATION = SGX_EXTENSIONS_OID + ".7"

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


def _pairs(seq: der.Tlv) -> dict[str, der.Tlv]:
    out: dict[str, der.Tlv] = {}
    for item in seq.children():
        parts = item.children()
        if len(parts) != 2:
            raise CollateralError(
                "PCK certificate SGX extension entry is not an (OID, value) pair",
                code="PCK_CERT_INVALID",
                field="PCK certificate SGX extension",
                expected="2 elements",
                actual=f"{len(parts)} elements",
            )
        out[der.decode_oid(parts[0])] = parts[1]
    return out


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound:
        raise _missing("(the whole extension)") from None
    raw = ext.value
    if not isinstance(raw, x509.UnrecognizedExtension):
        raise _missing("(raw value)")
    top, _ = der.read_one(raw.value)
    fields = _pairs(top)

    def need(oid: str, what: str) -> der.Tlv:
        if oid not in fields:
            raise _missing(what)
        return fields[oid]

    tcb = _pairs(need(_TCB, "TCB"))
    comps = []
    for i in range(1, 17):
        oid = f"{_TCB}.{i}"
        if oid not in tcb:
            raise _missing(f"TCB comp{i:02d}svn")
        comps.append(der.decode_int(tcb[oid]))
    if _PCESVN not in tcb:
        raise _missing("PCESVN")
    if _CPUSVN not in tcb:
        raise _missing("CPUSVN")
    config: dict[str, der.Tlv] = {}
    if _CONFIGURATION in fields:
        config = _pairs(fields[_CONFIGURATION])

    def flag(i: int) -> bool | None:
        tlv = config.get(f"{_CONFIGURATION}.{i}")
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
    cn = str(cns[0].value) if cns else ""
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
