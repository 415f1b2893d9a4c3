"""The simulation PKI: a mirror of Intel's SGX PKI under "nacre Simulation Root CA".

    nacre Simulation Root CA (self-signed, ECDSA P-256)
    ├── nacre Simulation SGX PCK Platform CA
    │   └── nacre Simulation SGX PCK Certificate   (Intel's SGX extensions, OID 1.2.840.113741.1.13.1)
    └── nacre Simulation SGX TCB Signing          (signs TCB info and QE identities)

CRLs: the root CA CRL (signed by the root) and the PCK Platform CA CRL. The SGX extension is
encoded here with a small DER encoder, in the shape of Intel's SGX PCK Certificate and CRL Profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from nacre.collateral import der
from nacre.collateral.pck import SGX_EXTENSIONS_OID
from nacre.collateral.trust import SIM_ROOT_CA_CN
from nacre.errors import UsageError

__all__ = [
    "PCK_CA_CN",
    "PCK_LEAF_CN",
    "ROOT_CA_CN",
    "SGX_TYPE_SCALABLE",
    "SGX_TYPE_STANDARD",
    "TCB_SIGNING_CN",
    "PckProfile",
    "SimPki",
    "encode_sgx_extensions",
    "raw_signature",
    "read_private_key",
    "write_private_key",
    "write_secret",
]

ROOT_CA_CN: Final = SIM_ROOT_CA_CN
#: "Platform" in the CN: nacre (like Intel's QVL) picks the PCK CRL by the issuer's CN.
PCK_CA_CN: Final = "nacre Simulation SGX PCK Platform CA"
PCK_LEAF_CN: Final = "nacre Simulation SGX PCK Certificate"
TCB_SIGNING_CN: Final = "nacre Simulation SGX TCB Signing"
SGX_TYPE_STANDARD: Final = 0
SGX_TYPE_SCALABLE: Final = 1

#: Certificate lifetimes (Intel: root ~30 years, PCK CA ~15, PCK and TCB signing ~7).
_ROOT_DAYS: Final = 25 * 365
_CA_DAYS: Final = 15 * 365
_LEAF_DAYS: Final = 7 * 365
#: Certificates are back-dated a little, so a verifier with a slow clock accepts them.
_BACKDATE: Final = timedelta(days=1)

_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


# --------------------------------------------------------------------------- DER encoding


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + value


def _seq(*items: bytes) -> bytes:
    return _tlv(der.TAG_SEQUENCE, b"".join(items))


def _oid(dotted: str) -> bytes:
    return _tlv(der.TAG_OID, der.oid_der(dotted))


def _int(value: int, tag: int = der.TAG_INTEGER) -> bytes:
    if value < 0:
        raise ValueError("negative integers do not occur in the SGX extension")
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _octets(value: bytes) -> bytes:
    return _tlv(der.TAG_OCTET_STRING, value)


def _bool(value: bool) -> bytes:
    return _tlv(der.TAG_BOOLEAN, b"\xff" if value else b"\x00")


def _pair(dotted: str, value: bytes) -> bytes:
    return _seq(_oid(dotted), value)


@dataclass(frozen=True, slots=True)
class PckProfile:
    """What a PCK certificate says about its platform (Intel's SGX extension fields)."""

    ppid: bytes  # 16
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs = the platform's CPUSVN
    pce_svn: int
    pce_id: bytes  # 2
    fmspc: bytes  # 6
    sgx_type: int = SGX_TYPE_SCALABLE
    platform_instance_id: bytes | None = None  # 16, Scalable platforms only
    dynamic_platform: bool = False
    cached_keys: bool = True
    smt_enabled: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("ppid", len(self.ppid) == 16, "16 bytes", f"{len(self.ppid)} bytes"),
            (
                "tcb_components",
                len(self.tcb_components) == 16 and all(0 <= c <= 255 for c in self.tcb_components),
                "16 SVNs 0..255",
                repr(self.tcb_components),
            ),
            ("pce_svn", 0 <= self.pce_svn <= 0xFFFF, "0..65535", str(self.pce_svn)),
            ("pce_id", len(self.pce_id) == 2, "2 bytes", f"{len(self.pce_id)} bytes"),
            ("fmspc", len(self.fmspc) == 6, "6 bytes", f"{len(self.fmspc)} bytes"),
            ("sgx_type", self.sgx_type in (0, 1, 2), "0, 1 or 2", str(self.sgx_type)),
        )
        for name, ok, expected, actual in checks:
            if not ok:
                raise UsageError(
                    f"invalid simulated PCK field {name}",
                    field=name,
                    expected=expected,
                    actual=actual,
                )

    @property
    def cpu_svn(self) -> bytes:
        return bytes(self.tcb_components)


def encode_sgx_extensions(p: PckProfile) -> bytes:
    """The DER value of the SGX Extensions extension (OID 1.2.840.113741.1.13.1)."""
    base = SGX_EXTENSIONS_OID
    tcb = [_pair(f"{base}.2.{i}", _int(svn)) for i, svn in enumerate(p.tcb_components, start=1)]
    tcb.append(_pair(f"{base}.2.17", _int(p.pce_svn)))
    tcb.append(_pair(f"{base}.2.18", _octets(p.cpu_svn)))
    items = [
        _pair(f"{base}.1", _octets(p.ppid)),
        _pair(f"{base}.2", _seq(*tcb)),
        _pair(f"{base}.3", _octets(p.pce_id)),
        _pair(f"{base}.4", _octets(p.fmspc)),
        _pair(f"{base}.5", _int(p.sgx_type, der.TAG_ENUMERATED)),
    ]
    if p.sgx_type != SGX_TYPE_STANDARD:
        pid = p.platform_instance_id if p.platform_instance_id is not None else bytes(16)
        items.append(_pair(f"{base}.6", _octets(pid)))
        items.append(
            _pair(
                f"{base}.7",
                _seq(
                    _pair(f"{base}.7.1", _bool(p.dynamic_platform)),
                    _pair(f"{base}.7.2", _bool(p.cached_keys)),
                    _pair(f"{base}.7.3", _bool(p.smt_enabled)),
                ),
            )
        )
    return _seq(*items)


# --------------------------------------------------------------------------- keys and signatures


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature as raw r || s (64 bytes), the form quotes and JSON use."""
    r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PKCS#8 PEM, created with mode 0600 (never readable by others, not even briefly)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(path, data)


def write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read simulation key {path}: {exc.strerror}",
            field=path.name,
            expected="a PEM private key written by nacre sim init",
            actual=str(path),
            hint="recreate the platform with: nacre sim init --force",
        ) from exc
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(
            f"simulation key {path} is not an ECDSA P-256 key",
            field=path.name,
            expected="EC P-256",
            actual=type(key).__name__,
        )
    return key


# --------------------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nacre simulation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _builder(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    days: int,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    usage = x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=not ca,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )


@dataclass(frozen=True, slots=True)
class SimPki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_signing: x509.Certificate

    @classmethod
    def generate(cls, profile: PckProfile, now: datetime) -> SimPki:
        root_key, ca_key, pck_key, tcb_key = (
            ec.generate_private_key(ec.SECP256R1()) for _ in "1234"
        )
        root = _builder(ROOT_CA_CN, ROOT_CA_CN, root_key, root_key, now, _ROOT_DAYS, ca=True).sign(
            root_key, hashes.SHA256()
        )
        pck_ca = _builder(PCK_CA_CN, ROOT_CA_CN, ca_key, root_key, now, _CA_DAYS, ca=True).sign(
            root_key, hashes.SHA256()
        )
        pck = (
            _builder(PCK_LEAF_CN, PCK_CA_CN, pck_key, ca_key, now, _LEAF_DAYS, ca=False)
            .add_extension(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(SGX_EXTENSIONS_OID), encode_sgx_extensions(profile)
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        tcb = _builder(TCB_SIGNING_CN, ROOT_CA_CN, tcb_key, root_key, now, _LEAF_DAYS, ca=False)
        return cls(
            root_key,
            root,
            ca_key,
            pck_ca,
            pck_key,
            pck,
            tcb_key,
            tcb.sign(root_key, hashes.SHA256()),
        )

    def pck_chain_pem(self) -> bytes:
        """PCK leaf, PCK Platform CA, root: certification data type 5 (without the NUL)."""
        return _pem(self.pck, self.pck_ca, self.root)

    def tcb_chain_pem(self) -> bytes:
        """TCB signing, root: the TCB-Info-Issuer-Chain / Enclave-Identity-Issuer-Chain."""
        return _pem(self.tcb_signing, self.root)

    def pck_crl_chain_pem(self) -> bytes:
        return _pem(self.pck_ca, self.root)

    def root_ca_crl(
        self, this_update: datetime, next_update: datetime, revoked: tuple[int, ...] = ()
    ) -> bytes:
        """The root CA CRL (DER), signed by the root: revokes the given CA serial numbers."""
        return _crl(self.root, self.root_key, this_update, next_update, revoked)

    def pck_crl(
        self, this_update: datetime, next_update: datetime, revoked: tuple[int, ...] = ()
    ) -> bytes:
        """The PCK Platform CA CRL (DER), signed by the PCK CA: revokes PCK certificates."""
        return _crl(self.pck_ca, self.pck_ca_key, this_update, next_update, revoked)


@lru_cache(maxsize=32)
def _pem(*certs: x509.Certificate) -> bytes:
    """The PEM of ``certs``, one after the other (remembered: a platform's chains never change,
    and every simulated quote carries its PCK chain)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    this_update: datetime,
    next_update: datetime,
    revoked: tuple[int, ...],
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
