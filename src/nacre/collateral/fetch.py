"""Fetch the collateral one piece of evidence needs, as a :class:`CollateralBundle`.

DCAP (SGX/TDX quotes): the PCK leaf in the quote's certification data names the FMSPC and the PCK
CA (processor or platform); the quote names the TEE. From Intel PCS or a PCCS come TCB info and QE
identity (``sgx`` or ``tdx`` paths), the PCK CRL of that CA and the Root CA CRL. The bundle also
gets the quote's own PCK chain (``pck_cert_chain.pem``) and, for information only, the root that
ends the TCB info issuer chain (``intel_sgx_root_ca.pem``: never a trust anchor).

SEV-SNP reports (raw or inside an Azure HCL report): the VCEK for the report's CHIP_ID and
REPORTED_TCB and the ASK + ARK chain from AMD KDS. VLEK-signed reports cannot be served by KDS.

Nothing fetched is trusted here; :mod:`nacre.verify` verifies the bundle. With a ``cache``, every
cached item is re-verified when read (:mod:`nacre.collateral.recheck`) and refetched if it fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nacre.collateral._http import Fetched, Request
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.certs import load_pem_chain
from nacre.collateral.disk_cache import DiskCache
from nacre.collateral.kds import KdsClient, VcekQuery, normalize_product
from nacre.collateral.pck import parse_pck_extensions, pck_ca_kind
from nacre.collateral.pcs import PcsClient
from nacre.collateral.recheck import ItemKind
from nacre.collateral.trust import TrustRoots
from nacre.errors import CollateralError, CollateralFetchError, NacreError, UsageError
from nacre.evidence import detect_kind, parse_evidence
from nacre.evidence.dcap import DcapQuote
from nacre.evidence.snp import SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SnpReport

__all__ = ["FetchOutcome", "ItemSource", "fetch_bundle", "fetch_collateral", "split_pem_blocks"]

StepCallback = Callable[[str], None]

#: What cryptography raises for damaged certificates (some fields are parsed lazily).
_MALFORMED: Final = (ValueError, x509.InvalidVersion, UnsupportedAlgorithm)

_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----[ \t]*(?:\r?\n)?", re.S
)


@dataclass(frozen=True, slots=True)
class ItemSource:
    """Where one fetched item came from: the request URL and whether the cache served it."""

    what: str
    url: str
    from_cache: bool


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """The bundle plus what the evidence said (for display) and where each item came from."""

    bundle: CollateralBundle
    tee: str  # "sgx" | "tdx" | "snp"
    fmspc: str | None  # DCAP: lower-case hex
    pck_ca: str | None  # DCAP: "processor" | "platform"
    product: str | None  # SNP: KDS product line
    sources: tuple[ItemSource, ...]


def split_pem_blocks(pem: bytes) -> tuple[bytes, ...]:
    """The ``BEGIN/END CERTIFICATE`` blocks of ``pem``, each exactly as written (newline kept)."""
    return tuple(m.group(0) for m in _PEM_BLOCK.finditer(pem))


class _Getter:
    """GET through the cache (if any), telling ``on_step`` and recording the source."""

    def __init__(self, cache: DiskCache | None, now: datetime, on_step: StepCallback) -> None:
        self.cache = cache
        self.now = now
        self.on_step = on_step
        self.sources: list[ItemSource] = []

    def __call__(
        self, request: Request, kind: ItemKind, fetch: Callable[[Request], Fetched]
    ) -> Fetched:
        if self.cache is not None:
            item = self.cache.get(request.url, now=self.now)
            if item is not None:
                self.on_step(f"{request.what}: from cache (re-verified)")
                self.sources.append(ItemSource(request.what, request.url, True))
                return Fetched(item.url, item.body, item.issuer_chain)
        self.on_step(f"{request.what}: GET {request.url}")
        fetched = fetch(request)
        if self.cache is not None:
            try:
                self.cache.store_fresh(request.url, kind, fetched, now=self.now)
            except NacreError as exc:
                raise CollateralFetchError(
                    f"{request.what} as served does not verify: {exc.message}",
                    code=exc.code,
                    field=exc.field,
                    expected=exc.expected,
                    actual=exc.actual,
                    hint="the server's copy is stale, damaged or not from Intel/AMD (a PCCS "
                    "that cannot refresh from Intel serves stale collateral); --no-cache writes "
                    "it anyway and `nacre verify` then reports it",
                ) from exc
        self.sources.append(ItemSource(request.what, request.url, False))
        return fetched


def _need_chain(fetched: Fetched, what: str) -> bytes:
    if fetched.issuer_chain is None:  # the clients require it; this guards cached oddities
        raise CollateralFetchError(
            f"{what} came without its issuer chain",
            field=fetched.url,
            expected="an issuer chain header",
            actual="none",
        )
    return fetched.issuer_chain


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _fetch_dcap(
    quote: DcapQuote,
    pcs: PcsClient | None,
    get: _Getter,
    trust: TrustRoots,
) -> tuple[dict[str, bytes], str, str, str]:
    if pcs is None:
        raise UsageError(
            "SGX/TDX collateral comes from Intel PCS or a PCCS, and none was given",
            field="--pccs",
            expected="a PCS/PCCS base URL",
            actual="none",
            hint="pass --pccs https://api.trustedservices.intel.com or your PCCS URL",
        )
    # 1. What the quote says: TEE, the PCK chain, FMSPC and PCK CA from the PCK leaf.
    pck_pem = quote.pck_chain_pem
    try:  # cryptography parses some certificate fields lazily: errors can come late
        pck_chain = load_pem_chain(pck_pem, field="PCK certificate chain in the quote")
        fmspc = parse_pck_extensions(pck_chain[0]).fmspc.hex()
        ca = pck_ca_kind(pck_chain[0])
    except _MALFORMED as exc:
        raise CollateralError(
            "the PCK certificate in the quote is malformed",
            code="PCK_CERT_INVALID",
            field="PCK certificate",
            expected="a well-formed X.509 certificate with Intel's SGX extensions",
            actual=str(exc)[:200],
        ) from exc
    tee = quote.tee
    get.on_step(f"{tee.upper()} quote: FMSPC {fmspc}, PCK {ca} CA")

    # 2. TCB info and QE identity for this TEE; the PCK CRL of this CA.
    tcb = get(pcs.tcb_info_request(tee, fmspc), "tcb_info", pcs.fetch)
    tcb_chain = _need_chain(tcb, "TCB info")
    qe = get(pcs.qe_identity_request(tee), "qe_identity", pcs.fetch)
    crl = get(pcs.pck_crl_request(ca), "pck_crl", pcs.fetch)

    # 3. The Root CA CRL: the PCCS route, or the distribution point of the trusted Intel root
    #    that the served issuer chain ends in (a served chain cannot send us elsewhere).
    try:
        served_root = load_pem_chain(tcb_chain, field="TCB info issuer chain")[-1]
        anchor = next((a for a in trust.intel if _spki(a) == _spki(served_root)), None)
        served_name = served_root.subject.rfc4514_string()
    except _MALFORMED as exc:
        raise CollateralFetchError(
            "the TCB info issuer chain ends in a malformed certificate",
            code="COLLATERAL_FETCH_BAD_RESPONSE",
            field="TCB info issuer chain root",
            expected="a well-formed X.509 certificate",
            actual=str(exc)[:200],
            hint=f"{pcs.base_url} is not serving Intel's collateral; check the URL",
        ) from exc
    if anchor is None:
        raise CollateralFetchError(
            "the TCB info issuer chain does not end in the Intel SGX Root CA",
            code="CERT_CHAIN_INVALID",
            field="TCB info issuer chain root",
            expected=" or ".join(a.subject.rfc4514_string() for a in trust.intel),
            actual=served_name,
            hint=f"{pcs.base_url} is not serving Intel's collateral; check the URL",
        )
    root_crl = get(pcs.root_ca_crl_request(anchor), "root_ca_crl", pcs.fetch)

    files = {
        "tcb_info.json": tcb.body,
        "tcb_info_issuer_chain.pem": tcb_chain,
        "qe_identity.json": qe.body,
        "qe_identity_issuer_chain.pem": _need_chain(qe, "QE identity"),
        "pck_crl.der": crl.body,
        "pck_crl_issuer_chain.pem": _need_chain(crl, "PCK CRL"),
        "root_ca_crl.der": root_crl.body,
        "pck_cert_chain.pem": pck_pem,
        "intel_sgx_root_ca.pem": served_root.public_bytes(Encoding.PEM),
    }
    return files, tee, fmspc, ca


def _fetch_snp(
    report: SnpReport,
    kds: KdsClient | None,
    get: _Getter,
    product: str | None,
) -> tuple[dict[str, bytes], str]:
    if kds is None:
        raise UsageError(
            "SEV-SNP collateral comes from AMD KDS, and no KDS client was given",
            field="--kds",
            expected="a KDS base URL",
            actual="none",
            hint="pass --kds https://kdsintf.amd.com",
        )
    # 1. Which key signed: only a VCEK can be looked up by chip id.
    if report.signing_key == SIGNING_KEY_VLEK:
        raise CollateralFetchError(
            "this report is signed with a VLEK, which AMD KDS does not serve by chip id",
            code="VLEK_NOT_FETCHABLE",
            field="signing_key",
            expected="0 (VCEK)",
            actual="1 (VLEK)",
            hint=(
                "the cloud provider that loaded the VLEK must supply vlek.der (e.g. in the "
                "guest's extended report certificate table); the ASVK + ARK chain is at "
                f"{kds.base_url}/vlek/v1/{report.product or '<product>'}/cert_chain"
            ),
        )
    if report.signing_key != SIGNING_KEY_VCEK:
        raise CollateralFetchError(
            "this report names no VCEK as its signing key",
            code="REPORT_MALFORMED",
            field="signing_key",
            expected="0 (VCEK)",
            actual=str(report.signing_key),
            hint="SIGNING_KEY 7 means the firmware did not sign the report",
        )
    if report.mask_chip_key or not any(report.chip_id):
        raise CollateralFetchError(
            "the report's CHIP_ID is masked, so KDS cannot find its VCEK",
            code="VCEK_NOT_FETCHABLE",
            field="chip_id",
            expected="the chip's 64-byte id",
            actual="masked (MASK_CHIP_ID set or all zeros)",
            hint="fetch the VCEK on the host (it knows its chip id) and supply it as vcek.der",
        )
    # 2. The product line: --product, else the report's CPUID fields (version 3 and later).
    name = normalize_product(product) if product else report.product
    if name is None:
        raise UsageError(
            f"cannot tell the AMD product line of a version {report.version} report",
            field="--product",
            expected="Milan | Genoa | Turin",
            actual="none (no CPUID fields in the report)"
            if report.cpuid_fam_id is None
            else f"unknown CPUID family {report.cpuid_fam_id:#x} model {report.cpuid_mod_id:#x}",
            hint="pass --product with the host's processor generation",
        )
    if product and report.product and report.product != name:
        get.on_step(f"note: --product {name} overrides the report's CPUID ({report.product})")
    get.on_step(f"SEV-SNP report v{report.version}: {name}, VCEK, chip {report.chip_id[:8].hex()}…")

    # 3. VCEK for this chip and TCB, then the ASK + ARK chain.
    q = VcekQuery.from_report(report, name)
    vcek = get(kds.vcek_request(q), "vcek", kds.fetch)
    chain = get(kds.cert_chain_request(name, "vcek"), "amd_cert_chain", kds.fetch)
    blocks = split_pem_blocks(chain.body)
    if len(blocks) != 2:
        raise CollateralFetchError(
            "KDS cert_chain must be the ASK then the ARK",
            code="CERT_CHAIN_INVALID",
            field=chain.url,
            expected="2 PEM certificates",
            actual=f"{len(blocks)} PEM certificates",
            hint="check the KDS URL",
        )
    files = {
        "vcek.der": vcek.body,
        "ask.pem": blocks[0],
        "ark.pem": blocks[1],
        "cert_chain.pem": chain.body,
    }
    return files, name


def fetch_collateral(
    evidence: bytes,
    *,
    pcs: PcsClient | None,
    kds: KdsClient | None,
    cache: DiskCache | None,
    now: datetime,
    product: str | None = None,
    trust: TrustRoots | None = None,
    on_step: StepCallback | None = None,
) -> FetchOutcome:
    """Everything :func:`fetch_bundle` does, plus what the evidence said and where items came from.

    ``trust`` (default: the pinned Intel root) decides only whose CRL distribution point may be
    followed for the Root CA CRL; it makes nothing trusted.
    """
    get = _Getter(cache, now, on_step or (lambda _msg: None))
    kind = detect_kind(evidence)
    parsed = parse_evidence(evidence)
    if kind == "dcap":
        assert isinstance(parsed, DcapQuote)
        files, tee, fmspc, ca = _fetch_dcap(parsed, pcs, get, trust or TrustRoots.default())
        return FetchOutcome(CollateralBundle(files), tee, fmspc, ca, None, tuple(get.sources))
    assert isinstance(parsed, SnpReport)
    files, name = _fetch_snp(parsed, kds, get, product)
    return FetchOutcome(CollateralBundle(files), "snp", None, None, name, tuple(get.sources))


def fetch_bundle(
    evidence: bytes,
    *,
    pcs: PcsClient | None,
    kds: KdsClient | None,
    cache: DiskCache | None,
    now: datetime,
    product: str | None = None,
    on_step: StepCallback | None = None,
) -> CollateralBundle:
    """The collateral bundle (layout of DESIGN.md §4) for ``evidence``, fetched from PCS/PCCS/KDS.

    ``now`` is when cached items must still verify (and the fetch time stamped on new ones).
    ``product`` overrides the AMD product line read from an SEV-SNP report's CPUID fields.
    """
    return fetch_collateral(
        evidence, pcs=pcs, kds=kds, cache=cache, now=now, product=product, on_step=on_step
    ).bundle
