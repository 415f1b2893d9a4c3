"""AMD SEV-SNP ATTESTATION_REPORT: bytes -> :class:`SnpReport` -> the same bytes.

Layout: AMD SEV Secure Nested Paging Firmware ABI Specification (pub. 56860), table
"ATTESTATION_REPORT Structure". The report is 0x4A0 bytes, little-endian. Versions:

* 2: the original layout;
* 3 and 4: CPUID family/model/stepping at 0x188..0x18A (bytes that are reserved in version 2);
* 5: LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR at 0x1F8 and 0x200.

The signature (ECDSA P-384 with SHA-384) covers bytes 0x000..0x29F; R and S are 72-byte
little-endian fields of which 48 bytes are significant.

TCB_VERSION has two layouts. Milan and Genoa: boot loader, TEE, four reserved bytes, SNP,
microcode. Turin (CPUID family 0x1A) and later: FMC, boot loader, TEE, SNP, three reserved bytes,
microcode. The parser picks the layout from the CPUID fields (version 3 and later); a verifier
re-reads the raw bytes with the layout of the product its certificate names.

This module is pure: it checks structure only and never verifies a signature or applies policy.
Reserved areas are kept, so :meth:`SnpReport.to_bytes` reproduces the input byte for byte.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from nacre.errors import MalformedEvidenceError, UnsupportedEvidenceError
from nacre.evidence._reader import Reader

__all__ = [
    "HCL_REPORT_OFFSET",
    "REPORT_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNED_SIZE",
    "SIGNING_KEY_NONE",
    "SIGNING_KEY_VCEK",
    "SIGNING_KEY_VLEK",
    "SUPPORTED_VERSIONS",
    "GuestPolicy",
    "PlatformInfo",
    "SnpReport",
    "TcbLayout",
    "TcbVersion",
    "extract_snp_from_hcl",
    "parse_snp_report",
    "product_from_cpuid",
    "tcb_layout_for_product",
]

_CODE: Final = "REPORT_MALFORMED"

#: Size of the whole report (ABI spec: 0x4A0 bytes).
REPORT_SIZE: Final = 0x4A0
#: Bytes 0x000..0x29F are covered by the signature.
SIGNED_SIZE: Final = 0x2A0
#: Report versions this parser understands.
SUPPORTED_VERSIONS: Final = (2, 3, 4, 5)
#: SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only algorithm the ABI defines.
SIGNATURE_ALGO_ECDSA_P384_SHA384: Final = 1
#: SIGNING_KEY values (bits 4:2 of the word at 0x48); 2..6 are reserved.
SIGNING_KEY_VCEK: Final = 0
SIGNING_KEY_VLEK: Final = 1
SIGNING_KEY_NONE: Final = 7

# Field offsets, ATTESTATION_REPORT Structure.
_VERSION: Final = 0x000
_GUEST_SVN: Final = 0x004
_POLICY: Final = 0x008
_FAMILY_ID: Final = 0x010
_IMAGE_ID: Final = 0x020
_VMPL: Final = 0x030
_SIGNATURE_ALGO: Final = 0x034
_CURRENT_TCB: Final = 0x038
_PLATFORM_INFO: Final = 0x040
_KEY_INFO: Final = 0x048  # AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 4:2
_RESERVED_4C: Final = 0x04C
_REPORT_DATA: Final = 0x050
_MEASUREMENT: Final = 0x090
_HOST_DATA: Final = 0x0C0
_ID_KEY_DIGEST: Final = 0x0E0
_AUTHOR_KEY_DIGEST: Final = 0x110
_REPORT_ID: Final = 0x140
_REPORT_ID_MA: Final = 0x160
_REPORTED_TCB: Final = 0x180
_CPUID_FAM_ID: Final = 0x188  # version 3+
_CPUID_MOD_ID: Final = 0x189  # version 3+
_CPUID_STEP: Final = 0x18A  # version 3+
_RESERVED_18B: Final = 0x18B  # 0x188 in version 2
_CHIP_ID: Final = 0x1A0
_COMMITTED_TCB: Final = 0x1E0
_CURRENT_BUILD: Final = 0x1E8
_CURRENT_MINOR: Final = 0x1E9
_CURRENT_MAJOR: Final = 0x1EA
_RESERVED_1EB: Final = 0x1EB
_COMMITTED_BUILD: Final = 0x1EC
_COMMITTED_MINOR: Final = 0x1ED
_COMMITTED_MAJOR: Final = 0x1EE
_RESERVED_1EF: Final = 0x1EF
_LAUNCH_TCB: Final = 0x1F0
_LAUNCH_MIT_VECTOR: Final = 0x1F8  # version 5+
_CURRENT_MIT_VECTOR: Final = 0x200  # version 5+
_RESERVED_208: Final = 0x208  # 0x1F8 before version 5
_SIGNATURE_R: Final = 0x2A0
_SIGNATURE_S: Final = 0x2E8
_SIGNATURE_RESERVED: Final = 0x330

_SIG_COMPONENT_SIZE: Final = 72
_TCB_SIZE: Final = 8

# Azure confidential VMs wrap the report in an HCL report: a 0x20-byte header ("HCLA" ...), then
# the SNP report, then runtime data.
_HCL_MAGIC: Final = b"HCLA"
#: Offset of the SNP report inside an Azure HCL report.
HCL_REPORT_OFFSET: Final = 0x20

# CPUID family values (extended family + base family).
_FAMILY_ZEN3_ZEN4: Final = 0x19
_FAMILY_ZEN5: Final = 0x1A

TcbLayout = Literal["milan", "turin"]
"""``milan``: Milan and Genoa TCB_VERSION layout; ``turin``: Turin and later (with FMC)."""


def product_from_cpuid(family: int, model: int) -> str | None:
    """The SEV-SNP product line for a CPUID family/model, or ``None`` when unknown.

    AMD KDS specification, "Determining the Product Name": family 19h models 0h-Fh are Milan,
    10h-1Fh and A0h-AFh Genoa; family 1Ah models 0h-11h are Turin.
    """
    if family == _FAMILY_ZEN3_ZEN4:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    elif family == _FAMILY_ZEN5 and model <= 0x11:
        return "Turin"
    return None


def tcb_layout_for_product(product: str) -> TcbLayout:
    """The TCB_VERSION layout a product line uses (``Milan-B0`` and ``Milan`` both work)."""
    family = product.split("-", 1)[0]
    return "milan" if family in ("Milan", "Genoa") else "turin"


def _malformed(
    message: str, field: str, expected: object, actual: object
) -> MalformedEvidenceError:
    return MalformedEvidenceError(
        message,
        code=_CODE,
        field=field,
        expected=expected,
        actual=actual,
        hint="this is not an SEV-SNP attestation report, or it was damaged in transit",
    )


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must fit in {bits} unsigned bits, got {value}")


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """One TCB_VERSION: security version numbers of the firmware components.

    ``fmc`` is ``None`` in the Milan/Genoa layout. ``reserved`` holds the bytes that carry no
    name in the layout (4 for Milan/Genoa: bytes 2..5; 3 for Turin: bytes 4..6); empty means zeros.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None
    reserved: bytes = b""

    def __post_init__(self) -> None:
        fmc = self.fmc
        if not (
            0 <= self.bootloader < 256
            and 0 <= self.tee < 256
            and 0 <= self.snp < 256
            and 0 <= self.microcode < 256
            and (fmc is None or 0 <= fmc < 256)
        ):
            for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
                if getattr(self, name) is not None:
                    _check_uint(name, getattr(self, name), 8)
        size = 4 if fmc is None else 3
        if not self.reserved:
            object.__setattr__(self, "reserved", bytes(size))
        _check_len("reserved", self.reserved, size)

    @property
    def layout(self) -> TcbLayout:
        return "milan" if self.fmc is None else "turin"

    @classmethod
    def from_bytes(cls, raw: bytes, layout: TcbLayout = "milan") -> TcbVersion:
        """Decode 8 raw bytes in ``layout`` (instances are immutable, so decodings are shared)."""
        _check_len("TCB_VERSION", raw, _TCB_SIZE)
        return _decode_tcb(bytes(raw), layout)

    def to_bytes(self) -> bytes:
        if self.fmc is None:
            head = bytes((self.bootloader, self.tee)) + self.reserved
            return head + bytes((self.snp, self.microcode))
        head = bytes((self.fmc, self.bootloader, self.tee, self.snp)) + self.reserved
        return head + bytes((self.microcode,))

    def hex(self) -> str:
        """The 8 bytes as they appear in the report, lower-case hex."""
        return self.to_bytes().hex()

    def to_dict(self) -> dict[str, int]:
        """Named components (``fmc`` only in the Turin layout)."""
        out = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@functools.lru_cache(maxsize=1024)
def _decode_tcb(raw: bytes, layout: TcbLayout) -> TcbVersion:
    # A platform reports the same few TCB values over and over: decode each once.
    if layout == "milan":
        return TcbVersion(
            bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], reserved=raw[2:6]
        )
    return TcbVersion(
        fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], reserved=raw[4:7]
    )


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest POLICY bit field (ABI spec, "Guest Policy Structure")."""

    abi_minor: int
    abi_major: int
    smt_allowed: bool  # bit 16
    reserved_bit17_must_be_1: bool  # bit 17
    migrate_ma_allowed: bool  # bit 18
    debug_allowed: bool  # bit 19
    single_socket_only: bool  # bit 20
    cxl_allowed: bool  # bit 21
    mem_aes_256_xts: bool  # bit 22
    rapl_disabled: bool  # bit 23
    ciphertext_hiding: bool  # bit 24
    page_swap_disabled: bool  # bit 25

    @classmethod
    def from_int(cls, policy: int) -> GuestPolicy:
        def bit(n: int) -> bool:
            return bool(policy >> n & 1)

        return cls(
            abi_minor=policy & 0xFF,
            abi_major=policy >> 8 & 0xFF,
            smt_allowed=bit(16),
            reserved_bit17_must_be_1=bit(17),
            migrate_ma_allowed=bit(18),
            debug_allowed=bit(19),
            single_socket_only=bit(20),
            cxl_allowed=bit(21),
            mem_aes_256_xts=bit(22),
            rapl_disabled=bit(23),
            ciphertext_hiding=bit(24),
            page_swap_disabled=bit(25),
        )


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """The PLATFORM_INFO bit field."""

    smt_enabled: bool  # bit 0
    tsme_enabled: bool  # bit 1
    ecc_enabled: bool  # bit 2
    rapl_disabled: bool  # bit 3
    ciphertext_hiding_enabled: bool  # bit 4
    alias_check_complete: bool  # bit 5
    tio_enabled: bool  # bit 7

    @classmethod
    def from_int(cls, info: int) -> PlatformInfo:
        def bit(n: int) -> bool:
            return bool(info >> n & 1)

        return cls(
            smt_enabled=bit(0),
            tsme_enabled=bit(1),
            ecc_enabled=bit(2),
            rapl_disabled=bit(3),
            ciphertext_hiding_enabled=bit(4),
            alias_check_complete=bit(5),
            tio_enabled=bit(7),
        )


# The layout of each version: (field, offset, size, kind), in order, contiguous, 0x000..0x4A0.
# kind: "u" little-endian unsigned integer, "b" raw bytes, "t" TCB_VERSION.
_Field = tuple[str, int, int, str]
_HEAD: Final[tuple[_Field, ...]] = (
    ("version", _VERSION, 4, "u"),
    ("guest_svn", _GUEST_SVN, 4, "u"),
    ("policy", _POLICY, 8, "u"),
    ("family_id", _FAMILY_ID, 16, "b"),
    ("image_id", _IMAGE_ID, 16, "b"),
    ("vmpl", _VMPL, 4, "u"),
    ("signature_algo", _SIGNATURE_ALGO, 4, "u"),
    ("current_tcb", _CURRENT_TCB, _TCB_SIZE, "t"),
    ("platform_info", _PLATFORM_INFO, 8, "u"),
    ("key_info", _KEY_INFO, 4, "u"),
    ("reserved_4c", _RESERVED_4C, 4, "b"),
    ("report_data", _REPORT_DATA, 64, "b"),
    ("measurement", _MEASUREMENT, 48, "b"),
    ("host_data", _HOST_DATA, 32, "b"),
    ("id_key_digest", _ID_KEY_DIGEST, 48, "b"),
    ("author_key_digest", _AUTHOR_KEY_DIGEST, 48, "b"),
    ("report_id", _REPORT_ID, 32, "b"),
    ("report_id_ma", _REPORT_ID_MA, 32, "b"),
    ("reported_tcb", _REPORTED_TCB, _TCB_SIZE, "t"),
)
_NO_CPUID: Final[tuple[_Field, ...]] = (
    ("reserved_18b", _CPUID_FAM_ID, _CHIP_ID - _CPUID_FAM_ID, "b"),
)
_CPUID: Final[tuple[_Field, ...]] = (
    ("cpuid_fam_id", _CPUID_FAM_ID, 1, "u"),
    ("cpuid_mod_id", _CPUID_MOD_ID, 1, "u"),
    ("cpuid_step", _CPUID_STEP, 1, "u"),
    ("reserved_18b", _RESERVED_18B, _CHIP_ID - _RESERVED_18B, "b"),
)
_MIDDLE: Final[tuple[_Field, ...]] = (
    ("chip_id", _CHIP_ID, 64, "b"),
    ("committed_tcb", _COMMITTED_TCB, _TCB_SIZE, "t"),
    ("current_build", _CURRENT_BUILD, 1, "u"),
    ("current_minor", _CURRENT_MINOR, 1, "u"),
    ("current_major", _CURRENT_MAJOR, 1, "u"),
    ("reserved_1eb", _RESERVED_1EB, 1, "b"),
    ("committed_build", _COMMITTED_BUILD, 1, "u"),
    ("committed_minor", _COMMITTED_MINOR, 1, "u"),
    ("committed_major", _COMMITTED_MAJOR, 1, "u"),
    ("reserved_1ef", _RESERVED_1EF, 1, "b"),
    ("launch_tcb", _LAUNCH_TCB, _TCB_SIZE, "t"),
)
_NO_MIT: Final[tuple[_Field, ...]] = (
    ("reserved_208", _LAUNCH_MIT_VECTOR, _SIGNATURE_R - _LAUNCH_MIT_VECTOR, "b"),
)
_MIT: Final[tuple[_Field, ...]] = (
    ("launch_mit_vector", _LAUNCH_MIT_VECTOR, 8, "u"),
    ("current_mit_vector", _CURRENT_MIT_VECTOR, 8, "u"),
    ("reserved_208", _RESERVED_208, _SIGNATURE_R - _RESERVED_208, "b"),
)
_SIGNATURE: Final[tuple[_Field, ...]] = (
    ("signature_r", _SIGNATURE_R, _SIG_COMPONENT_SIZE, "b"),
    ("signature_s", _SIGNATURE_S, _SIG_COMPONENT_SIZE, "b"),
    ("signature_reserved", _SIGNATURE_RESERVED, REPORT_SIZE - _SIGNATURE_RESERVED, "b"),
)
_INT_FORMATS: Final = {1: "B", 4: "I", 8: "Q"}
_OPTIONAL: Final = (
    "cpuid_fam_id",
    "cpuid_mod_id",
    "cpuid_step",
    "launch_mit_vector",
    "current_mit_vector",
)


@dataclass(frozen=True, slots=True)
class _Layout:
    fields: tuple[_Field, ...]
    codec: struct.Struct
    names: tuple[str, ...]
    byte_sizes: tuple[tuple[str, int], ...]
    int_limits: tuple[tuple[str, int], ...]
    tcbs: tuple[str, ...]
    absent: tuple[str, ...]  # version-dependent fields this version lacks


def _build_layout(fields: tuple[_Field, ...]) -> _Layout:
    fmt = "<"
    end = 0
    for name, offset, size, kind in fields:
        if offset != end:  # a programming error in the tables above, caught at import
            raise RuntimeError(f"SNP layout gap before {name}: {end:#x} != {offset:#x}")
        fmt += _INT_FORMATS[size] if kind == "u" else f"{size}s"
        end = offset + size
    if end != REPORT_SIZE:
        raise RuntimeError(f"SNP layout ends at {end:#x}, not {REPORT_SIZE:#x}")
    names = tuple(f[0] for f in fields)
    return _Layout(
        fields=fields,
        codec=struct.Struct(fmt),
        names=names,
        byte_sizes=tuple((f[0], f[2]) for f in fields if f[3] == "b"),
        int_limits=tuple((f[0], 1 << (8 * f[2])) for f in fields if f[3] == "u"),
        tcbs=tuple(f[0] for f in fields if f[3] == "t"),
        absent=tuple(n for n in _OPTIONAL if n not in names),
    )


_V2: Final = _build_layout(_HEAD + _NO_CPUID + _MIDDLE + _NO_MIT + _SIGNATURE)
_V3: Final = _build_layout(_HEAD + _CPUID + _MIDDLE + _NO_MIT + _SIGNATURE)
_V5: Final = _build_layout(_HEAD + _CPUID + _MIDDLE + _MIT + _SIGNATURE)
_LAYOUTS: Final = {2: _V2, 3: _V3, 4: _V3, 5: _V5}


@dataclass(frozen=True, slots=True)
class SnpReport:
    """One SEV-SNP ATTESTATION_REPORT, every byte accounted for.

    Version-dependent fields are ``None`` where the version lacks them: ``cpuid_*`` before
    version 3, ``*_mit_vector`` before version 5. ``reserved_18b`` and ``reserved_208`` then
    start earlier to cover those bytes (24 and 168 bytes instead of 21 and 152).
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    key_info: int
    reserved_4c: bytes
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    reserved_18b: bytes
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    reserved_1eb: bytes
    committed_build: int
    committed_minor: int
    committed_major: int
    reserved_1ef: bytes
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    reserved_208: bytes
    signature_r: bytes
    signature_s: bytes
    signature_reserved: bytes

    def __post_init__(self) -> None:
        layout = _LAYOUTS.get(self.version)
        if layout is None:
            raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {self.version}")
        for name, size in layout.byte_sizes:
            _check_len(name, getattr(self, name), size)
        for name, limit in layout.int_limits:
            value = getattr(self, name)
            if not 0 <= value < limit:
                raise ValueError(f"{name} must fit in {limit.bit_length() - 1} unsigned bits")
        for name in layout.tcbs:
            if not isinstance(getattr(self, name), TcbVersion):
                raise TypeError(f"{name} must be a TcbVersion")
        for name in layout.absent:
            if getattr(self, name) is not None:
                raise ValueError(f"{name} does not exist in report version {self.version}")

    # -- decoded views ---------------------------------------------------------------------

    @property
    def policy_decoded(self) -> GuestPolicy:
        return GuestPolicy.from_int(self.policy)

    @property
    def debug_allowed(self) -> bool:
        """POLICY bit 19: the hypervisor may debug (read and write) this guest's memory."""
        return bool(self.policy >> 19 & 1)

    @property
    def platform_info_decoded(self) -> PlatformInfo:
        return PlatformInfo.from_int(self.platform_info)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        """MASK_CHIP_KEY: the firmware did not sign this report (the signature is zero)."""
        return bool(self.key_info >> 1 & 1)

    @property
    def signing_key(self) -> int:
        """SIGNING_KEY: 0 VCEK, 1 VLEK, 7 none; 2..6 are reserved."""
        return self.key_info >> 2 & 0b111

    @property
    def product(self) -> str | None:
        """Product line from the CPUID fields (version 3+), ``None`` when absent or unknown."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def signature_rs(self) -> tuple[int, int]:
        """ECDSA (r, s) as integers (the fields are little-endian)."""
        return int.from_bytes(self.signature_r, "little"), int.from_bytes(
            self.signature_s, "little"
        )

    # -- serialisation ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The report bytes, exactly as parsed (or as modified through ``dataclasses.replace``)."""
        layout = _LAYOUTS[self.version]
        values = []
        for name, _, _, kind in layout.fields:
            value = getattr(self, name)
            values.append(value.to_bytes() if kind == "t" else value)
        return layout.codec.pack(*values)


def _raise_truncated(data: bytes, fields: tuple[_Field, ...]) -> NoReturn:
    """Raise the error for ``data`` shorter than the layout, naming the first field cut short."""
    reader = Reader(data, code=_CODE)
    for name, offset, size, _ in fields:
        reader.pos = offset
        reader.bytes(size, name)  # raises for the first field that does not fit
    raise AssertionError("the report is not truncated")  # pragma: no cover


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse one ATTESTATION_REPORT of exactly :data:`REPORT_SIZE` bytes.

    Raises :class:`MalformedEvidenceError` (code ``REPORT_MALFORMED``) naming the field that is
    cut short, and :class:`UnsupportedEvidenceError` for an unknown version or signature algorithm.
    """
    data = bytes(data)
    version = int.from_bytes(Reader(data, code=_CODE).bytes(4, "version"), "little")
    layout = _LAYOUTS.get(version)
    if layout is None:
        raise UnsupportedEvidenceError(
            "unsupported SEV-SNP report version",
            code=_CODE,
            field="version",
            expected=" or ".join(str(v) for v in SUPPORTED_VERSIONS),
            actual=version,
            hint="nacre reads ATTESTATION_REPORT versions 2 to 5 (AMD SEV-SNP ABI spec 56860)",
        )
    if len(data) < REPORT_SIZE:
        _raise_truncated(data, layout.fields)
    if len(data) > REPORT_SIZE:
        raise _malformed(
            "SEV-SNP report has trailing bytes",
            "report size",
            f"{REPORT_SIZE} bytes",
            f"{len(data)} bytes",
        )
    # The length is checked: every field can be read in one unpack.
    values = dict(zip(layout.names, layout.codec.unpack_from(data), strict=True))
    if values["signature_algo"] != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedEvidenceError(
            "unsupported SEV-SNP report signature algorithm",
            code=_CODE,
            field="signature_algo",
            expected=f"{SIGNATURE_ALGO_ECDSA_P384_SHA384} (ECDSA P-384 with SHA-384)",
            actual=values["signature_algo"],
            hint="the ABI defines only ECDSA P-384/SHA-384; the report is damaged or not SNP",
        )
    family = values.get("cpuid_fam_id")
    tcb_layout: TcbLayout = "turin" if family is not None and family >= _FAMILY_ZEN5 else "milan"
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        values[name] = TcbVersion.from_bytes(values[name], tcb_layout)
    for name in _OPTIONAL:
        values.setdefault(name, None)
    # Every size and range is fixed by the struct layout above, so the field checks of
    # SnpReport.__post_init__ (for reports built by hand) are skipped here: this is the hot path.
    report = object.__new__(SnpReport)
    for name, value in values.items():
        object.__setattr__(report, name, value)
    return report


def extract_snp_from_hcl(data: bytes) -> bytes:
    """The SNP report inside an Azure HCL report: bytes 0x20..0x4C0.

    Only the framing is checked here (the ``HCLA`` magic and the length); binding the HCL runtime
    data to the report's REPORT_DATA is a separate step.
    """
    if data[:4] != _HCL_MAGIC:
        raise _malformed(
            "not an Azure HCL report",
            "hcl header",
            "magic 'HCLA' at offset 0",
            data[:4].hex() or "empty input",
        )
    end = HCL_REPORT_OFFSET + REPORT_SIZE
    if len(data) < end:
        raise _malformed(
            "Azure HCL report is truncated in the SNP report",
            "hcl report",
            f">= {end} bytes",
            f"{len(data)} bytes",
        )
    return bytes(data[HCL_REPORT_OFFSET:end])
