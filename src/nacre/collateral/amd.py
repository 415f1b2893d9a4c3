"""AMD KDS collateral for SEV-SNP: VCEK/VLEK extensions and the ARK -> ASK -> leaf files.

AMD's Versioned Chip/Loaded Endorsement Key certificates (KDS specification, pub. 57230) carry
the TCB they were issued for as X.509 extensions under ``1.3.6.1.4.1.3704.1``:

* ``.1`` structVersion (INTEGER), ``.2`` productName (IA5String: ``Milan-B0``, ``Genoa`` ...);
* ``.3.1`` blSPL, ``.3.2`` teeSPL, ``.3.3`` snpSPL, ``.3.8`` ucodeSPL (INTEGER security patch
  levels), ``.3.4`` to ``.3.7`` spl_4 to spl_7 (reserved), ``.3.9`` fmcSPL (Turin and later);
* ``.4`` hwID, the chip's 64-byte CHIP_ID (VCEK only; KDS omits the OCTET STRING tag);
* ``.5`` cspId, the cloud provider (IA5String, VLEK only).

A collateral bundle holds the leaf as ``vcek.der`` or ``vlek.der``, the intermediate as
``ask.pem`` (VCEK) or ``asvk.pem`` (VLEK), the root as ``ark.pem``, and/or ``cert_chain.pem``
(intermediate then ARK, as KDS serves it). Nothing here is trusted: the verifier checks the chain
against its own anchors. VCEK/VLEK certificates carry serial number 0; they are loaded through
:func:`nacre.collateral.certs.load_certificate`, which handles that deliberately, and the serial
number is never read.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from nacre.collateral.certs import load_certificate, load_pem_chain
from nacre.collateral.der import TAG_IA5STRING, TAG_OCTET_STRING, decode_int, read_one
from nacre.errors import CollateralError
from nacre.evidence.snp import TcbLayout, TcbVersion, tcb_layout_for_product
from nacre.limits import VERIFY_CACHE_ENTRIES

__all__ = [
    "ARK_FILE",
    "ASK_FILE",
    "ASVK_FILE",
    "CERT_CHAIN_FILE",
    "OID_BL_SPL",
    "OID_CSP_ID",
    "OID_FMC_SPL",
    "OID_HW_ID",
    "OID_PRODUCT_NAME",
    "OID_SNP_SPL",
    "OID_STRUCT_VERSION",
    "OID_TEE_SPL",
    "OID_UCODE_SPL",
    "VCEK_FILE",
    "VLEK_FILE",
    "AmdCertExtensions",
    "LeafKind",
    "SnpCollateral",
    "leaf_kind",
    "load_snp_collateral",
    "parse_amd_extensions",
]

_AMD_ARC: Final = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION: Final = _AMD_ARC + "1"
OID_PRODUCT_NAME: Final = _AMD_ARC + "2"
OID_BL_SPL: Final = _AMD_ARC + "3.1"
OID_TEE_SPL: Final = _AMD_ARC + "3.2"
OID_SNP_SPL: Final = _AMD_ARC + "3.3"
_OID_SPL_4_TO_7: Final = tuple(_AMD_ARC + f"3.{i}" for i in (4, 5, 6, 7))
OID_UCODE_SPL: Final = _AMD_ARC + "3.8"
OID_FMC_SPL: Final = _AMD_ARC + "3.9"
OID_HW_ID: Final = _AMD_ARC + "4"
OID_CSP_ID: Final = _AMD_ARC + "5"

VCEK_FILE: Final = "vcek.der"
VLEK_FILE: Final = "vlek.der"
ASK_FILE: Final = "ask.pem"
ASVK_FILE: Final = "asvk.pem"
ARK_FILE: Final = "ark.pem"
CERT_CHAIN_FILE: Final = "cert_chain.pem"
_SNP_FILES: Final = (VCEK_FILE, VLEK_FILE, ASK_FILE, ASVK_FILE, ARK_FILE, CERT_CHAIN_FILE)

#: CHIP_ID is 64 bytes; Turin's hwID uses only the first 8 of them.
_HW_ID_SIZES: Final = (64, 8)
_MAX_SPL: Final = 255

LeafKind = Literal["VCEK", "VLEK"]
_LEAF_CN: Final[Mapping[str, LeafKind]] = {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}


def _ext_error(field: str, expected: object, actual: object, what: str) -> CollateralError:
    return CollateralError(
        f"{what} has a malformed AMD extension",
        code="CERT_EXTENSION_MALFORMED",
        field=field,
        expected=expected,
        actual=actual,
        hint="the certificate is damaged or was not issued by AMD KDS; fetch it again",
    )


@dataclass(frozen=True, slots=True)
class AmdCertExtensions:
    """The AMD extensions of one VCEK or VLEK certificate."""

    struct_version: int
    product_name: str
    bootloader: int
    tee: int
    snp: int
    microcode: int
    spl_4: int = 0
    spl_5: int = 0
    spl_6: int = 0
    spl_7: int = 0
    fmc: int | None = None
    hw_id: bytes | None = None
    csp_id: str | None = None

    @property
    def product(self) -> str:
        """Product line: ``Milan-B0`` -> ``Milan``."""
        return self.product_name.split("-", 1)[0]

    @property
    def stepping(self) -> str | None:
        """Stepping from the product name (``Milan-B0`` -> ``B0``), ``None`` when not given."""
        parts = self.product_name.split("-", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def tcb_layout(self) -> TcbLayout:
        return tcb_layout_for_product(self.product)

    @property
    def tcb(self) -> TcbVersion:
        """The TCB_VERSION this certificate was issued for, in its product's layout."""
        if self.tcb_layout == "milan":
            return TcbVersion(
                bootloader=self.bootloader,
                tee=self.tee,
                snp=self.snp,
                microcode=self.microcode,
                reserved=bytes((self.spl_4, self.spl_5, self.spl_6, self.spl_7)),
            )
        return TcbVersion(
            fmc=self.fmc or 0,
            bootloader=self.bootloader,
            tee=self.tee,
            snp=self.snp,
            microcode=self.microcode,
        )


def _spl(raw: bytes | None, oid: str, name: str, what: str) -> int:
    if raw is None:
        raise _ext_error(f"{name} ({oid})", "an INTEGER extension", "absent", what)
    tlv, end = read_one(raw)
    if end != len(raw):
        raise _ext_error(f"{name} ({oid})", "one INTEGER", f"{len(raw) - end} extra bytes", what)
    value = decode_int(tlv)
    if not 0 <= value <= _MAX_SPL:
        raise _ext_error(f"{name} ({oid})", f"0..{_MAX_SPL}", value, what)
    return value


def _ia5(raw: bytes, oid: str, name: str, what: str) -> str:
    tlv, end = read_one(raw)
    if tlv.tag != TAG_IA5STRING or end != len(raw):
        raise _ext_error(f"{name} ({oid})", "one IA5String", f"tag {tlv.tag:#x}", what)
    try:
        return tlv.value.decode("ascii")
    except UnicodeDecodeError:
        raise _ext_error(f"{name} ({oid})", "ASCII text", tlv.value.hex(), what) from None


def _hw_id(raw: bytes, what: str) -> bytes:
    # KDS writes the 64 bytes bare; accept a proper OCTET STRING too, should AMD add the tag.
    if len(raw) in _HW_ID_SIZES:
        return raw
    tlv, end = read_one(raw)
    if tlv.tag != TAG_OCTET_STRING or end != len(raw) or len(tlv.value) not in _HW_ID_SIZES:
        raise _ext_error(f"hwID ({OID_HW_ID})", "64 bytes", f"{len(raw)} bytes", what)
    return tlv.value


def parse_amd_extensions(cert: x509.Certificate, *, what: str = "VCEK") -> AmdCertExtensions:
    """Read the AMD extensions of a VCEK/VLEK certificate; every required one must be present."""
    try:
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise _ext_error("extensions", "well-formed, unique X.509 extensions", exc, what) from exc
    raw: dict[str, bytes] = {}
    for ext in extensions:
        oid = ext.oid.dotted_string
        if oid.startswith(_AMD_ARC) and isinstance(ext.value, x509.UnrecognizedExtension):
            raw[oid] = ext.value.value
    if OID_PRODUCT_NAME not in raw:
        raise _ext_error(f"productName ({OID_PRODUCT_NAME})", "an IA5String", "absent", what)
    product_name = _ia5(raw[OID_PRODUCT_NAME], OID_PRODUCT_NAME, "productName", what)
    spl_4, spl_5, spl_6, spl_7 = (
        0 if oid not in raw else _spl(raw[oid], oid, f"spl_{i}", what)
        for i, oid in zip((4, 5, 6, 7), _OID_SPL_4_TO_7, strict=True)
    )
    fmc = None
    if OID_FMC_SPL in raw:
        fmc = _spl(raw[OID_FMC_SPL], OID_FMC_SPL, "fmcSPL", what)
    elif tcb_layout_for_product(product_name) == "turin":
        raise _ext_error(
            f"fmcSPL ({OID_FMC_SPL})", f"present for product {product_name}", "absent", what
        )
    hw_id = _hw_id(raw[OID_HW_ID], what) if OID_HW_ID in raw else None
    csp_id = _ia5(raw[OID_CSP_ID], OID_CSP_ID, "cspId", what) if OID_CSP_ID in raw else None
    return AmdCertExtensions(
        struct_version=_spl(raw.get(OID_STRUCT_VERSION), OID_STRUCT_VERSION, "structVersion", what),
        product_name=product_name,
        bootloader=_spl(raw.get(OID_BL_SPL), OID_BL_SPL, "blSPL", what),
        tee=_spl(raw.get(OID_TEE_SPL), OID_TEE_SPL, "teeSPL", what),
        snp=_spl(raw.get(OID_SNP_SPL), OID_SNP_SPL, "snpSPL", what),
        microcode=_spl(raw.get(OID_UCODE_SPL), OID_UCODE_SPL, "ucodeSPL", what),
        spl_4=spl_4,
        spl_5=spl_5,
        spl_6=spl_6,
        spl_7=spl_7,
        fmc=fmc,
        hw_id=hw_id,
        csp_id=csp_id,
    )


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def leaf_kind(cert: x509.Certificate, *, field: str = "leaf certificate") -> LeafKind:
    """``VCEK`` or ``VLEK``, from the subject common name AMD KDS gives each."""
    name = _common_name(cert)
    kind = _LEAF_CN.get(name)
    if kind is None:
        raise CollateralError(
            f"{field} is not an AMD VCEK or VLEK certificate",
            code="CERT_CHAIN_INVALID",
            field=f"{field} subject CN",
            expected="SEV-VCEK or SEV-VLEK",
            actual=name or cert.subject.rfc4514_string() or "(empty subject)",
            hint="put the VCEK from AMD KDS in vcek.der (or the VLEK in vlek.der)",
        )
    return kind


@dataclass(frozen=True, slots=True)
class SnpCollateral:
    """The certificates that endorse one SEV-SNP report, as found in a collateral bundle.

    ``ark`` is ``None`` when the bundle carries no root; the verifier then uses its own anchor.
    ``chain_key`` (SHA-256 over the DER digests and file names) keys the verifier's chain cache.
    """

    leaf: x509.Certificate
    leaf_kind: LeafKind
    extensions: AmdCertExtensions
    intermediate: x509.Certificate
    ark: x509.Certificate | None
    leaf_file: str
    intermediate_file: str
    ark_file: str | None
    leaf_sha256: bytes
    intermediate_sha256: bytes
    ark_sha256: bytes | None
    chain_key: bytes

    @property
    def product(self) -> str:
        """Product line named by the leaf (``Milan``, ``Genoa``, ``Turin``)."""
        return self.extensions.product

    @property
    def intermediate_role(self) -> str:
        """``ASK`` for a VCEK chain, ``ASVK`` for a VLEK chain."""
        return "ASK" if self.leaf_kind == "VCEK" else "ASVK"


def _well_formed(cert: x509.Certificate, field: str) -> x509.Certificate:
    """``cert`` with every field the verifier reads parsed once (cryptography parses lazily).

    A damaged certificate fails here as a :class:`CollateralError`, not later as a ``ValueError``.
    Parsing may repeat cryptography's zero-serial warning, silenced as in ``certs``.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=".*serial number which wasn't positive.*",
                category=CryptographyDeprecationWarning,
            )
            _ = (
                cert.subject,
                cert.issuer,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert.signature_algorithm_oid,
                cert.signature_hash_algorithm,
                cert.signature,
                cert.tbs_certificate_bytes,
                cert.public_key(),
                cert.extensions,
            )
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise CollateralError(
            f"{field} is not a well-formed certificate",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="an X.509 certificate from AMD KDS",
            actual=str(exc),
            hint="the file is damaged; fetch it again from AMD KDS",
        ) from exc
    return cert


def _sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def _missing(field: str, expected: str, hint: str) -> CollateralError:
    return CollateralError(
        f"SEV-SNP collateral is missing {field}",
        code="COLLATERAL_MISSING",
        field=field,
        expected=expected,
        actual="absent",
        hint=hint,
    )


def _pick(
    name: str,
    files: Mapping[str, bytes],
    from_chain: x509.Certificate | None,
) -> tuple[x509.Certificate | None, str | None]:
    """The certificate in file ``name``, else from ``cert_chain.pem``; if both, they must agree."""
    single = (
        _well_formed(load_certificate(files[name], field=name), name) if name in files else None
    )
    if single is not None and from_chain is not None and single != from_chain:
        raise CollateralError(
            f"{name} and {CERT_CHAIN_FILE} hold different certificates",
            code="CERT_CHAIN_INVALID",
            field=name,
            expected=f"the same certificate as in {CERT_CHAIN_FILE}",
            actual=f"{_common_name(single)} vs {_common_name(from_chain)}",
            hint="the bundle mixes files from two chains; fetch it again from AMD KDS",
        )
    if single is not None:
        return single, name
    if from_chain is not None:
        return from_chain, CERT_CHAIN_FILE
    return None, None


def _load(files: Mapping[str, bytes]) -> SnpCollateral:
    # The leaf: exactly one of vcek.der / vlek.der, of the kind its name says.
    leaves = [n for n in (VCEK_FILE, VLEK_FILE) if n in files]
    if not leaves:
        raise _missing(
            "the VCEK or VLEK certificate",
            f"{VCEK_FILE} or {VLEK_FILE}",
            "fetch the VCEK from AMD KDS (https://kdsintf.amd.com/vcek/v1/{product}/{hwid}"
            "?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..) into vcek.der",
        )
    if len(leaves) > 1:
        raise CollateralError(
            "SEV-SNP collateral holds both a VCEK and a VLEK",
            code="CERT_CHAIN_INVALID",
            field="leaf certificate",
            expected=f"one of {VCEK_FILE}, {VLEK_FILE}",
            actual="both",
            hint="keep the certificate of the key that signed the report",
        )
    leaf_file = leaves[0]
    leaf = _well_formed(load_certificate(files[leaf_file], field=leaf_file), leaf_file)
    kind = leaf_kind(leaf, field=leaf_file)
    if (kind == "VCEK") != (leaf_file == VCEK_FILE):
        raise CollateralError(
            f"{leaf_file} holds a {kind} certificate",
            code="CERT_CHAIN_INVALID",
            field=f"{leaf_file} subject CN",
            expected=f"SEV-{leaf_file[:4].upper()}",
            actual=f"SEV-{kind}",
            hint="name the file after the key it holds",
        )
    extensions = parse_amd_extensions(leaf, what=leaf_file)
    if kind == "VCEK" and (extensions.hw_id is None or extensions.csp_id is not None):
        raise _ext_error(
            f"hwID ({OID_HW_ID}) / cspId ({OID_CSP_ID})",
            "a VCEK has hwID and no cspId",
            f"hwID {'absent' if extensions.hw_id is None else 'present'}, "
            f"cspId {'absent' if extensions.csp_id is None else 'present'}",
            leaf_file,
        )
    if kind == "VLEK" and (extensions.csp_id is None or extensions.hw_id is not None):
        raise _ext_error(
            f"cspId ({OID_CSP_ID}) / hwID ({OID_HW_ID})",
            "a VLEK has cspId and no hwID",
            f"cspId {'absent' if extensions.csp_id is None else 'present'}, "
            f"hwID {'absent' if extensions.hw_id is None else 'present'}",
            leaf_file,
        )

    # cert_chain.pem, as KDS serves it: the ASK (or ASVK), then the ARK.
    chain: tuple[x509.Certificate, ...] = ()
    if CERT_CHAIN_FILE in files:
        chain = tuple(
            _well_formed(c, CERT_CHAIN_FILE)
            for c in load_pem_chain(files[CERT_CHAIN_FILE], field=CERT_CHAIN_FILE)
        )
        if len(chain) != 2:
            raise CollateralError(
                f"{CERT_CHAIN_FILE} must hold the intermediate and the ARK",
                code="CERT_CHAIN_INVALID",
                field=CERT_CHAIN_FILE,
                expected="2 certificates (ASK or ASVK, then ARK)",
                actual=f"{len(chain)} certificates",
            )
    intermediate_name = ASK_FILE if kind == "VCEK" else ASVK_FILE
    intermediate, intermediate_file = _pick(intermediate_name, files, chain[0] if chain else None)
    if intermediate is None or intermediate_file is None:
        role = "ASK" if kind == "VCEK" else "ASVK"
        raise _missing(
            f"the {role} certificate",
            f"{intermediate_name} or {CERT_CHAIN_FILE}",
            "fetch the chain from AMD KDS (https://kdsintf.amd.com/"
            f"{kind.lower()}/v1/{extensions.product}/cert_chain) into {CERT_CHAIN_FILE}",
        )
    ark, ark_file = _pick(ARK_FILE, files, chain[1] if chain else None)
    digests = (_sha256(leaf), _sha256(intermediate), None if ark is None else _sha256(ark))
    key = hashlib.sha256(b"nacre snp chain v1")
    for digest, name in zip(digests, (leaf_file, intermediate_file, ark_file), strict=True):
        key.update(digest or bytes(32))
        key.update(f"{name}\0".encode())
    return SnpCollateral(
        leaf=leaf,
        leaf_kind=kind,
        extensions=extensions,
        intermediate=intermediate,
        ark=ark,
        leaf_file=leaf_file,
        intermediate_file=intermediate_file,
        ark_file=ark_file,
        leaf_sha256=digests[0],
        intermediate_sha256=digests[1],
        ark_sha256=digests[2],
        chain_key=key.digest(),
    )


class _LoadCache:
    """Parsed collateral by content hash: a bundle read again costs one SHA-256, not a parse."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, SnpCollateral] = OrderedDict()

    def get(self, key: bytes) -> SnpCollateral | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: bytes, value: SnpCollateral) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_LOADED: Final = _LoadCache(VERIFY_CACHE_ENTRIES)


def load_snp_collateral(files: Mapping[str, bytes]) -> SnpCollateral:
    """Build :class:`SnpCollateral` from a bundle's files (name -> bytes); other names are ignored.

    Only structure is checked here (which certificates, of which kind, with which extensions).
    Signatures, validity and trust are the verifier's job, on every call.
    """
    h = hashlib.sha256()
    for name in _SNP_FILES:
        data = files.get(name)
        if data is not None:
            h.update(f"{name}:{len(data)}:".encode())
            h.update(data)
    key = h.digest()
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    loaded = _load(files)
    _LOADED.put(key, loaded)
    return loaded
