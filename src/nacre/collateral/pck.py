"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1, "SGX Extensions").

Intel SGX PCK Certificate and CRL Profile: PPID (.1), TCB (.2: components .2.1-.2.16, PCESVN .2.17,
CPUSVN .2.18), PCE-ID (.3), FMSPC (.4), SGX Type (.5), PlatformInstanceID (.6), Configuration (.7).
"""

from __future__ import annotations

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
