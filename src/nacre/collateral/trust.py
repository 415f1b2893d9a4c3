"""Trust anchors: Intel's SGX Root CA and AMD's ARKs ship as package data and are the defaults.

Nothing in a collateral bundle can make itself trusted: the anchors come only from here, from a
``--trust-root`` file the caller names, or from the simulation root when the caller asks for it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

import platformdirs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.collateral.certs import load_certificate
from nacre.collateral.x509_der import CertDer, anchor_der
from nacre.errors import UsageError

__all__ = [
    "AMD_PRODUCTS",
    "SIM_DIR_ENV",
    "SIM_ROOT_CA_CN",
    "SIM_ROOT_CA_FILE",
    "TrustRoots",
    "default_sim_dir",
]

#: Subject CN of the root of every simulated platform (``nacre sim``).
SIM_ROOT_CA_CN: Final = "nacre Simulation Root CA"
#: Where a simulated platform keeps its root certificate, inside its directory.
SIM_ROOT_CA_FILE: Final = "root_ca.pem"
#: Environment variable naming the simulated platform's directory.
SIM_DIR_ENV: Final = "NACRE_SIM_DIR"

#: AMD product lines whose ARK ships with nacre, keyed by the name KDS uses.
AMD_PRODUCTS: Final = ("Milan", "Genoa", "Turin")

# SHA-256 fingerprints of the shipped anchors: a damaged or swapped package file fails loudly.
_PINNED_SHA256: Final = {
    "intel_sgx_root_ca.pem": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "amd_ark_milan.pem": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "amd_ark_genoa.pem": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "amd_ark_turin.pem": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


def _packaged(name: str) -> x509.Certificate:
    data = resources.files("nacre.collateral").joinpath("data", name).read_bytes()
    cert = load_certificate(data, field=name)
    pinned = _PINNED_SHA256.get(name)
    if pinned is not None:
        actual = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        if actual != pinned:
            raise RuntimeError(f"packaged trust anchor {name} was modified: sha256 {actual}")
    return cert


@dataclass(frozen=True, slots=True)
class TrustRoots:
    """The anchors one verification call trusts.

    ``intel``: roots a PCK chain and the collateral signing chains must end in.
    ``amd``: ARKs an SNP chain must end in, by product name.
    ``sim``: whether these roots are nacre's simulation roots (results say ``sim: true``); build
    such roots with :meth:`simulation`.
    """

    intel: tuple[x509.Certificate, ...]
    amd: dict[str, x509.Certificate] = field(default_factory=dict)
    sim: bool = False
    #: SHA-256 fingerprints of the Intel anchors, concatenated: part of every cache key.
    intel_key: bytes = field(init=False, repr=False, compare=False, default=b"")
    #: The Intel anchors' DER parts, sliced once (chains are matched and checked against them).
    intel_der: tuple[CertDer, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        key = b"".join(c.fingerprint(hashes.SHA256()) for c in self.intel)
        object.__setattr__(self, "intel_key", key + (b"sim" if self.sim else b""))
        parts = tuple(anchor_der(c) for c in self.intel)
        object.__setattr__(self, "intel_der", parts)

    @classmethod
    def default(cls) -> TrustRoots:
        """Intel SGX Root CA and the AMD ARKs shipped with nacre."""
        return _DEFAULT

    @classmethod
    def from_certificates(
        cls, certs: tuple[x509.Certificate, ...] | list[x509.Certificate]
    ) -> TrustRoots:
        """Private PKI or tests: these certificates replace every pinned root for the call."""
        amd = {f"custom-{i}": c for i, c in enumerate(certs)}
        return cls(intel=tuple(certs), amd=amd, sim=False)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustRoots:
        """``--trust-root FILE``: one or more PEM certificates, or one DER certificate."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read trust root {p}: {exc.strerror}",
                field="--trust-root",
                hint="pass a PEM or DER certificate file",
            ) from exc
        from nacre.collateral.certs import load_pem_chain

        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = load_pem_chain(data, field=str(p))
        else:
            certs = (load_certificate(data, field=str(p)),)
        return cls.from_certificates(certs)

    @classmethod
    def simulation(cls, root: x509.Certificate | str | Path | None = None) -> TrustRoots:
        """Trust nacre's simulation root (and nothing else): results carry ``sim: true``.

        ``root``: the simulation root certificate, or a PEM/DER file holding it; by default the
        root of the local simulated platform (``$NACRE_SIM_DIR`` or the user's data dir, see
        :func:`default_sim_dir`). The certificate must be self-signed with the CN
        ``nacre Simulation Root CA``: this cannot be used to trust an arbitrary private root.
        """
        if root is None:
            root = default_sim_dir() / SIM_ROOT_CA_FILE
            if not root.is_file():
                raise UsageError(
                    "no simulated platform on this machine",
                    field="simulation root",
                    expected=f"a root certificate at {root}",
                    actual="missing",
                    hint="create one with: nacre sim init (or set NACRE_SIM_DIR)",
                )
        if isinstance(root, x509.Certificate):
            cert = root
        else:
            p = Path(root)
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise UsageError(
                    f"cannot read the simulation root {p}: {exc.strerror}",
                    field="simulation root",
                    expected="a readable PEM or DER certificate",
                    actual=str(p),
                ) from exc
            cert = load_certificate(data, field=str(p))
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        subject_cn = str(names[0].value) if names else ""
        if subject_cn != SIM_ROOT_CA_CN or cert.issuer != cert.subject:
            raise UsageError(
                "this certificate is not a nacre simulation root",
                field="simulation root subject CN",
                expected=f"self-signed, CN={SIM_ROOT_CA_CN}",
                actual=cert.subject.rfc4514_string() or "(empty subject)",
                hint="use --trust-root FILE for a private PKI",
            )
        return cls(intel=(cert,), amd={}, sim=True)

    def amd_anchor_for(self, product: str | None) -> list[x509.Certificate]:
        """ARKs to try for an SNP chain of ``product`` (all of them when unknown or custom)."""
        if product is not None and product in self.amd:
            return [self.amd[product]]
        return list(self.amd.values())


def default_sim_dir() -> Path:
    """The local simulated platform's directory: ``$NACRE_SIM_DIR``, else ``<user data>/nacre/sim``."""
    env = os.environ.get(SIM_DIR_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("nacre")) / "sim"


def _load_default() -> TrustRoots:
    amd: dict[str, x509.Certificate] = {}
    for product in AMD_PRODUCTS:
        name = f"amd_ark_{product.lower()}.pem"
        if resources.files("nacre.collateral").joinpath("data", name).is_file():
            amd[product] = _packaged(name)
    return TrustRoots(intel=(_packaged("intel_sgx_root_ca.pem"),), amd=amd)


_DEFAULT: Final = _load_default()
