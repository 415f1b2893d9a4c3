"""Intel PCS/PCCS and AMD KDS clients, fetch_bundle and `nacre collateral fetch`, against simulators.

The simulators (tests/pcs_simulator.py) serve the real vector files on the real URL paths, through
httpx.MockTransport or a real server on 127.0.0.1. Nothing here leaves the machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from nacre.cli.collateral_cmd import collateral_app
from nacre.collateral.bundle import DCAP_FILES
from nacre.collateral.certs import load_crl
from nacre.collateral.disk_cache import DiskCache
from nacre.collateral.fetch import fetch_bundle, fetch_collateral, split_pem_blocks
from nacre.collateral.kds import KdsClient, VcekQuery, normalize_product
from nacre.collateral.pcs import INTEL_PCS_URL, PcsClient
from nacre.collateral.recheck import collateral_validator
from nacre.errors import CollateralFetchError, LimitExceededError, NacreError, UsageError
from nacre.evidence.snp import TcbVersion, parse_snp_report
from nacre.limits import MAX_FETCH_BYTES
from pcs_simulator import VECTORS, KdsSimulator, PcsSimulator, case_json

PCCS_URL = "https://pccs.test:8081"
DCAP_CASES = sorted(
    p.name for p in VECTORS.iterdir() if p.is_dir() and p.name.startswith(("sgx-", "tdx-"))
)
PROCESSOR_CASE = "sgx-v3-phala-processor-ca"
PLATFORM_CASE = "sgx-v3-automata-godcap-platform-ca"
TDX_CASE = "tdx-v4-gtg-cos113-00806f05-uptodate"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the loopback simulators must never be routed to a proxy from the environment."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def case_time(case: str) -> datetime:
    return datetime.fromisoformat(case_json(case)["verification_time"].replace("Z", "+00:00"))


def evidence(case: str, name: str = "quote.bin") -> bytes:
    return (VECTORS / case / name).read_bytes()


def pcs_client(
    sim: PcsSimulator, base: str = PCCS_URL, *, max_bytes: int = MAX_FETCH_BYTES
) -> PcsClient:
    """A client on the simulator's MockTransport, with backoff sleeps recorded, not slept."""
    sleeps: list[float] = []
    return PcsClient(base, transport=sim.transport(), sleep=sleeps.append, max_bytes=max_bytes)


# -- DCAP: byte-identical bundles -----------------------------------------------------------


def assert_bundle_matches_case(files: dict[str, bytes] | object, case: str) -> None:
    assert isinstance(files, dict)
    assert sorted(files) == sorted(DCAP_FILES)
    for name in DCAP_FILES:
        want = (VECTORS / case / name).read_bytes()
        if name == "intel_sgx_root_ca.pem":
            # Informational copy of the issuer chain's root, written as canonical PEM (the
            # vector holds Intel's download, with CRLF line ends): the same certificate.
            got_cert = x509.load_pem_x509_certificate(files[name])
            assert got_cert.public_bytes(Encoding.DER) == x509.load_pem_x509_certificate(
                want
            ).public_bytes(Encoding.DER)
        else:
            assert files[name] == want, f"{case}/{name} differs"


@pytest.mark.parametrize("case", DCAP_CASES)
@pytest.mark.parametrize("service", ["pccs", "pcs"])
def test_fetch_dcap_bundle_reproduces_vector_files(case: str, service: str) -> None:
    sim = PcsSimulator(case, pccs=service == "pccs")
    base = PCCS_URL if service == "pccs" else INTEL_PCS_URL
    steps: list[str] = []
    with pcs_client(sim, base) as pcs:
        bundle = fetch_bundle(
            evidence(case), pcs=pcs, kds=None, cache=None, now=case_time(case), on_step=steps.append
        )
    assert_bundle_matches_case(dict(bundle.files), case)
    meta = case_json(case)
    tee, fmspc = meta["tee"], meta["key_claims"]["fmspc"].upper()
    host = urllib.parse.urlsplit(base).netloc
    root_crl = (
        f"{host}/sgx/certification/v4/rootcacrl"
        if service == "pccs"
        else "certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    )
    assert sim.requests == [
        f"{host}/{tee}/certification/v4/tcb?fmspc={fmspc}",
        f"{host}/{tee}/certification/v4/qe/identity",
        f"{host}/sgx/certification/v4/pckcrl?ca={sim.ca}&encoding=der",
        root_crl,
    ]
    assert any(f"FMSPC {fmspc.lower()}" in s for s in steps)


@pytest.mark.parametrize(
    ("case", "tee", "ca"),
    [
        (PROCESSOR_CASE, "sgx", "processor"),
        (PLATFORM_CASE, "sgx", "platform"),
        (TDX_CASE, "tdx", "platform"),
    ],
)
def test_fetch_collateral_reports_tee_fmspc_and_ca(case: str, tee: str, ca: str) -> None:
    sim = PcsSimulator(case)
    with pcs_client(sim) as pcs:
        out = fetch_collateral(evidence(case), pcs=pcs, kds=None, cache=None, now=case_time(case))
    assert (out.tee, out.pck_ca, out.fmspc) == (tee, ca, case_json(case)["key_claims"]["fmspc"])
    assert [s.from_cache for s in out.sources] == [False] * 4


# -- issuer chain headers --------------------------------------------------------------------


@pytest.mark.parametrize("safe", ["", "+/=", "+/=-:\n"])
@pytest.mark.parametrize("legacy", [False, True])
def test_issuer_chain_headers_are_url_decoded_exactly(safe: str, legacy: bool) -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.chain_safe = safe.replace("\n", "")  # "+" left literal must not turn into a space
    sim.legacy_tcb_header = legacy
    with pcs_client(sim) as pcs:
        tcb = pcs.get_tcb_info("sgx", bytes.fromhex("00a067110000"))
        qe = pcs.get_qe_identity("sgx")
        crl = pcs.get_pck_crl("processor")
    assert tcb.issuer_chain == sim.file("tcb_info_issuer_chain.pem")
    assert qe.issuer_chain == sim.file("qe_identity_issuer_chain.pem")
    assert crl.issuer_chain == sim.file("pck_crl_issuer_chain.pem")
    assert b"+" in sim.file("tcb_info_issuer_chain.pem")  # the case the decoder must get right
    subjects = [
        c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(crl.issuer_chain)
    ]
    assert "CN=Intel SGX PCK Processor CA" in subjects[0]
    assert "CN=Intel SGX Root CA" in subjects[1]


def test_missing_issuer_chain_header_is_an_error() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.omit_chain = True
    with pcs_client(sim) as pcs, pytest.raises(CollateralFetchError) as info:
        pcs.get_tcb_info("sgx", "00A067110000")
    assert info.value.code == "COLLATERAL_FETCH_BAD_RESPONSE"
    assert "TCB-Info-Issuer-Chain" in str(info.value.expected)


def test_issuer_chain_header_that_is_not_pem_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b"{}", headers={"TCB-Info-Issuer-Chain": "hello%20world"}
        )

    with (
        PcsClient(PCCS_URL, transport=httpx.MockTransport(handler)) as pcs,
        pytest.raises(CollateralFetchError) as info,
    ):
        pcs.get_tcb_info("tdx", "00806F050000")
    assert info.value.field == "TCB-Info-Issuer-Chain"


# -- root CA CRL: PCCS route, CRL distribution point ------------------------------------------


def test_pccs_without_rootcacrl_falls_back_to_the_distribution_point() -> None:
    sim = PcsSimulator(PROCESSOR_CASE, pccs=False)  # a PCCS without the route answers 404
    with pcs_client(sim, PCCS_URL) as pcs:
        assert pcs.service == "pccs"
        bundle = fetch_bundle(
            evidence(PROCESSOR_CASE), pcs=pcs, kds=None, cache=None, now=case_time(PROCESSOR_CASE)
        )
    assert bundle.files["root_ca_crl.der"] == sim.file("root_ca_crl.der")
    assert sim.requests[-2:] == [
        "pccs.test:8081/sgx/certification/v4/rootcacrl",
        "certificates.trustedservices.intel.com/IntelSGXRootCA.der",
    ]


def test_root_ca_crl_served_as_hex_is_kept_as_served() -> None:
    sim = PcsSimulator(TDX_CASE)
    sim.rootcacrl_hex = True
    with pcs_client(sim) as pcs:
        got = pcs.get_root_ca_crl().body
    der = sim.file("root_ca_crl.der")
    assert got == der.hex().encode()
    assert load_crl(got, field="x").public_bytes(Encoding.DER) == der


# -- errors ----------------------------------------------------------------------------------


def test_unknown_fmspc_is_a_404_naming_the_fmspc_without_retries() -> None:
    sim = PcsSimulator(TDX_CASE)  # holds FMSPC 00806f050000 only
    quote = evidence("tdx-v4-phala-b0c06f-uptodate")  # FMSPC b0c06f000000
    with pcs_client(sim) as pcs, pytest.raises(CollateralFetchError) as info:
        fetch_bundle(quote, pcs=pcs, kds=None, cache=None, now=case_time(TDX_CASE))
    err = info.value
    assert err.code == "COLLATERAL_NOT_FOUND"
    assert "FMSPC B0C06F000000" in err.message
    assert err.actual == "HTTP 404"
    assert err.field == "https://pccs.test:8081/tdx/certification/v4/tcb?fmspc=B0C06F000000"
    assert err.hint
    assert len(sim.requests) == 1


def test_pcs_404_message_names_intel() -> None:
    sim = PcsSimulator(TDX_CASE, pccs=False)
    with pcs_client(sim, INTEL_PCS_URL) as pcs, pytest.raises(CollateralFetchError) as info:
        pcs.get_tcb_info("tdx", "B0C06F000000")
    assert info.value.message.startswith("Intel has no TDX TCB info for FMSPC B0C06F000000")
    assert "NotFound" in info.value.message  # Intel's Error-Code header is passed on


def test_server_errors_are_retried_with_backoff_then_succeed() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.fail_next = 2
    sleeps: list[float] = []
    with PcsClient(PCCS_URL, transport=sim.transport(), sleep=sleeps.append) as pcs:
        got = pcs.get_qe_identity("sgx")
    assert got.body == sim.file("qe_identity.json")
    assert len(sim.requests) == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_persistent_server_errors_fail_after_two_retries(status: int) -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.always_fail = True
    sim.fail_status = status
    sleeps: list[float] = []
    with (
        PcsClient(PCCS_URL, transport=sim.transport(), sleep=sleeps.append) as pcs,
        pytest.raises(CollateralFetchError) as info,
    ):
        pcs.get_pck_crl("processor")
    err = info.value
    assert err.code == "COLLATERAL_FETCH_FAILED"
    assert err.actual == f"HTTP {status}"
    assert (
        err.field == "https://pccs.test:8081/sgx/certification/v4/pckcrl?ca=processor&encoding=der"
    )
    assert "3 attempts" in err.message
    assert len(sim.requests) == 3
    assert len(sleeps) == 2


def test_client_errors_are_not_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(401, headers={"Error-Code": "Unauthorized"})

    calls: list[str] = []
    with (
        PcsClient(PCCS_URL, transport=httpx.MockTransport(handler)) as pcs,
        pytest.raises(CollateralFetchError) as info,
    ):
        pcs.get_qe_identity("tdx")
    assert info.value.actual == "HTTP 401"
    assert "refused" in (info.value.hint or "")
    assert len(calls) == 1


def test_redirects_are_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://elsewhere.test/x"})

    with (
        PcsClient(PCCS_URL, transport=httpx.MockTransport(handler)) as pcs,
        pytest.raises(CollateralFetchError) as info,
    ):
        pcs.get_qe_identity("tdx")
    assert "elsewhere.test" in (info.value.hint or "")


def test_update_parameter_and_fmspc_forms() -> None:
    with PcsClient(PCCS_URL, update="early") as pcs:
        assert pcs.tcb_info_request("tdx", bytes.fromhex("00806f050000")).url == (
            "https://pccs.test:8081/tdx/certification/v4/tcb?fmspc=00806F050000&update=early"
        )
        assert pcs.qe_identity_request("tdx").url.endswith("/qe/identity?update=early")
        assert pcs.pck_crl_request("platform").url.endswith("pckcrl?ca=platform&encoding=der")
        for bad in ("00806f05", "zz806f050000", b"\x00"):
            with pytest.raises(UsageError):
                pcs.tcb_info_request("tdx", bad)
        with pytest.raises(UsageError):
            pcs.tcb_info_request("snp", "00806f050000")
        with pytest.raises(UsageError):
            pcs.pck_crl_request("root")


def test_retries_are_bounded() -> None:
    with pytest.raises(UsageError):
        PcsClient(PCCS_URL, retries=3)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_refused(chunked: bool) -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.oversize = MAX_FETCH_BYTES + 1
    sim.chunked = chunked
    with pcs_client(sim) as pcs, pytest.raises(LimitExceededError) as info:
        pcs.get_pck_crl("processor")
    assert str(MAX_FETCH_BYTES) in str(info.value.expected)
    assert ("Content-Length" in str(info.value.actual)) is not chunked
    assert len(sim.requests) == 1  # not retried


def test_body_at_the_limit_is_accepted() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.oversize = 1000
    sim.chunked = True
    with pcs_client(sim, max_bytes=1000) as pcs:
        assert pcs.get_root_ca_crl().body == b"x" * 1000


def test_timeouts_are_retried_then_reported() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.timeouts_next = 3
    with pcs_client(sim) as pcs, pytest.raises(CollateralFetchError) as info:
        pcs.get_tcb_info("sgx", "00A067110000")
    assert "timed out" in info.value.message
    assert info.value.field == "https://pccs.test:8081/sgx/certification/v4/tcb?fmspc=00A067110000"
    assert len(sim.requests) == 3


def test_one_timeout_then_success() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.timeouts_next = 1
    with pcs_client(sim) as pcs:
        assert pcs.get_tcb_info("sgx", "00A067110000").body == sim.file("tcb_info.json")


def test_slow_real_server_times_out() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.delay = 1.5
    with sim.serve() as base, PcsClient(base, timeout=0.2, retries=0) as pcs:
        started = time.monotonic()
        with pytest.raises(CollateralFetchError) as info:
            pcs.get_qe_identity("sgx")
        assert time.monotonic() - started < 1.4
    assert "timed out" in info.value.message


def test_dribbling_real_server_hits_the_deadline() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.dribble = 0.05  # each byte well within the read timeout, the whole body far beyond
    with sim.serve() as base, PcsClient(base, timeout=2.0, deadline=0.5, retries=0) as pcs:
        started = time.monotonic()
        with pytest.raises(CollateralFetchError) as info:
            pcs.get_qe_identity("sgx")
        assert time.monotonic() - started < 2.0
    assert "timed out" in info.value.message


def test_oversized_body_from_real_server_without_content_length() -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    sim.oversize = 300_000
    sim.chunked = True
    with (
        sim.serve() as base,
        PcsClient(base, max_bytes=100_000) as pcs,
        pytest.raises(LimitExceededError),
    ):
        pcs.get_pck_crl("processor")


def test_real_server_fetch_is_byte_identical() -> None:
    sim = PcsSimulator(TDX_CASE)
    with sim.serve() as base, PcsClient(base) as pcs:
        bundle = fetch_bundle(
            evidence(TDX_CASE), pcs=pcs, kds=None, cache=None, now=case_time(TDX_CASE)
        )
    assert_bundle_matches_case(dict(bundle.files), TDX_CASE)


# -- URLs and TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://pccs.example:8081",
        "ftp://127.0.0.1",
        "https://user:pw@pccs.example",
        "pccs.example",
        "https://pccs.example/?x=1",
    ],
)
def test_unacceptable_base_urls(url: str) -> None:
    with pytest.raises(UsageError):
        PcsClient(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8081", "http://localhost:1", "http://[::1]:2"])
def test_plain_http_is_accepted_for_loopback_only(url: str) -> None:
    PcsClient(url).close()


def test_missing_ca_bundle_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        PcsClient(PCCS_URL, ca_bundle=tmp_path / "nope.pem")
    assert info.value.field == "--ca-bundle"


def _tls_material(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 (files: ca.pem, server.pem, server.key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "nacre test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = (
        tmp_path / "ca.pem",
        tmp_path / "server.pem",
        tmp_path / "server.key",
    )
    ca_pem.write_bytes(ca.public_bytes(Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


def test_tls_is_verified_and_a_private_ca_can_be_added(tmp_path: Path) -> None:
    ca_pem, cert_pem, key_pem = _tls_material(tmp_path)
    sim = PcsSimulator(PROCESSOR_CASE)
    with sim.serve(tls=(cert_pem, key_pem)) as base:
        assert base.startswith("https://127.0.0.1:")
        with PcsClient(base) as pcs, pytest.raises(CollateralFetchError) as info:
            pcs.get_qe_identity("sgx")
        assert info.value.code == "COLLATERAL_FETCH_TLS"
        assert "--ca-bundle" in (info.value.hint or "")
        assert sim.requests == []  # refused before any request reached the server, not retried
        with PcsClient(base, ca_bundle=ca_pem) as pcs:
            assert pcs.get_qe_identity("sgx").body == sim.file("qe_identity.json")


# -- SEV-SNP: AMD KDS --------------------------------------------------------------------------

SNP_VCEK_CASES = [
    ("snp-v2-milan-virtee", "report.bin", "Milan", "Milan"),
    ("snp-v2-milan-go-sev-guest", "report.bin", "Milan", "Milan"),
    ("snp-v3-genoa-azure-trustee", "report.bin", None, "Genoa"),
    ("snp-v3-genoa-azure-trustee", "hcl_report.bin", None, "Genoa"),
]


@pytest.mark.parametrize(("case", "file", "product", "expect_product"), SNP_VCEK_CASES)
def test_fetch_snp_bundle_reproduces_vector_files(
    case: str, file: str, product: str | None, expect_product: str
) -> None:
    sim = KdsSimulator(case, expect_product)
    with KdsClient(transport=sim.transport()) as kds:
        out = fetch_collateral(
            evidence(case, file),
            pcs=None,
            kds=kds,
            cache=None,
            now=case_time(case),
            product=product,
        )
    assert out.tee == "snp"
    assert out.product == expect_product
    assert sorted(out.bundle.files) == ["ark.pem", "ask.pem", "cert_chain.pem", "vcek.der"]
    for name, data in out.bundle.files.items():
        assert data == (VECTORS / case / name).read_bytes(), name
    claims = case_json(case)["key_claims"]
    tcb = claims["reported_tcb_decoded"]
    assert sim.requests == [
        f"kdsintf.amd.com/vcek/v1/{expect_product}/{claims['chip_id']}"
        f"?blSPL={tcb['bootloader']}&teeSPL={tcb['tee']}&snpSPL={tcb['snp']}"
        f"&ucodeSPL={tcb['microcode']}",
        f"kdsintf.amd.com/vcek/v1/{expect_product}/cert_chain",
    ]


def test_v2_report_needs_a_product() -> None:
    case = "snp-v2-milan-virtee"
    with (
        KdsClient(transport=KdsSimulator(case, "Milan").transport()) as kds,
        pytest.raises(UsageError) as info,
    ):
        fetch_bundle(
            evidence(case, "report.bin"), pcs=None, kds=kds, cache=None, now=case_time(case)
        )
    assert info.value.field == "--product"
    assert "no CPUID" in str(info.value.actual)


def test_wrong_product_is_a_404_from_kds() -> None:
    case = "snp-v2-milan-virtee"
    sim = KdsSimulator(case, "Milan")
    with KdsClient(transport=sim.transport()) as kds, pytest.raises(CollateralFetchError) as info:
        fetch_bundle(
            evidence(case, "report.bin"),
            pcs=None,
            kds=kds,
            cache=None,
            now=case_time(case),
            product="genoa",
        )
    assert info.value.code == "COLLATERAL_NOT_FOUND"
    assert "Genoa VCEK" in info.value.message


def test_vlek_reports_cannot_be_fetched() -> None:
    case = "snp-v3-milan-vlek-trustee"
    sim = KdsSimulator(case, "Milan")
    with KdsClient(transport=sim.transport()) as kds, pytest.raises(CollateralFetchError) as info:
        fetch_bundle(
            evidence(case, "report.bin"), pcs=None, kds=kds, cache=None, now=case_time(case)
        )
    err = info.value
    assert err.code == "VLEK_NOT_FETCHABLE"
    assert "VLEK" in err.message
    assert "cloud provider" in (err.hint or "")
    assert "/vlek/v1/Milan/cert_chain" in (err.hint or "")
    assert sim.requests == []


def test_vlek_cert_chain_is_served_at_its_own_path() -> None:
    case = "snp-v3-milan-vlek-trustee"
    sim = KdsSimulator(case, "Milan")
    with KdsClient(transport=sim.transport()) as kds:
        got = kds.get_cert_chain("Milan", "vlek")
    assert got.body == (VECTORS / case / "cert_chain.pem").read_bytes()
    assert split_pem_blocks(got.body) == (
        (VECTORS / case / "asvk.pem").read_bytes(),
        (VECTORS / case / "ark.pem").read_bytes(),
    )
    assert sim.requests == ["kdsintf.amd.com/vlek/v1/Milan/cert_chain"]


def test_vcek_query_for_turin_uses_8_byte_hwid_and_fmc() -> None:
    report = parse_snp_report(evidence("snp-v2-milan-virtee", "report.bin"))
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 9])  # Turin layout: fmc bl tee snp rsvd*3 ucode
    chip = bytes(range(64))
    q = VcekQuery("turin", chip, TcbVersion.from_bytes(raw, "turin"))
    assert q.product == "Turin"
    assert q.hwid == chip[:8].hex()
    with KdsClient() as kds:
        url = kds.vcek_request(q).url
    assert url == (
        f"https://kdsintf.amd.com/vcek/v1/Turin/{chip[:8].hex()}"
        "?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=9"
    )
    # A Milan-layout report re-read as Turin (the --product override) gets an FMC level.
    assert VcekQuery.from_report(report, "Turin").tcb.fmc == report.reported_tcb.to_bytes()[0]
    with pytest.raises(UsageError):
        VcekQuery("Turin", chip, TcbVersion(bootloader=1, tee=0, snp=1, microcode=1))
    with pytest.raises(UsageError):
        VcekQuery("Milan", chip[:8], report.reported_tcb)


@pytest.mark.parametrize(
    ("name", "want"),
    [("milan", "Milan"), ("Genoa-B0", "Genoa"), ("TURIN", "Turin"), ("Siena", "Genoa")],
)
def test_normalize_product(name: str, want: str) -> None:
    assert normalize_product(name) == want


def test_unknown_product_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        normalize_product("Naples")


def test_dcap_without_pcs_and_snp_without_kds_are_usage_errors() -> None:
    with pytest.raises(UsageError) as info:
        fetch_bundle(evidence(TDX_CASE), pcs=None, kds=None, cache=None, now=case_time(TDX_CASE))
    assert info.value.field == "--pccs"
    case = "snp-v3-genoa-azure-trustee"
    with pytest.raises(UsageError) as info:
        fetch_bundle(
            evidence(case, "report.bin"), pcs=None, kds=None, cache=None, now=case_time(case)
        )
    assert info.value.field == "--kds"


# -- through the disk cache ------------------------------------------------------------------


def test_fetch_through_cache_hits_the_second_time(tmp_path: Path) -> None:
    sim = PcsSimulator(PLATFORM_CASE)
    cache = DiskCache(tmp_path / "cache", validate=collateral_validator())
    now = case_time(PLATFORM_CASE)
    with pcs_client(sim) as pcs:
        first = fetch_collateral(evidence(PLATFORM_CASE), pcs=pcs, kds=None, cache=cache, now=now)
        assert len(sim.requests) == 4
        second = fetch_collateral(
            evidence(PLATFORM_CASE), pcs=pcs, kds=None, cache=cache, now=now + timedelta(hours=1)
        )
    assert len(sim.requests) == 4  # all four from the cache, each re-verified
    assert [s.from_cache for s in second.sources] == [True] * 4
    assert dict(second.bundle.files) == dict(first.bundle.files)
    assert_bundle_matches_case(dict(second.bundle.files), PLATFORM_CASE)


def test_fetch_through_cache_snp(tmp_path: Path) -> None:
    case = "snp-v3-genoa-azure-trustee"
    sim = KdsSimulator(case, "Genoa")
    cache = DiskCache(tmp_path, validate=collateral_validator())
    with KdsClient(transport=sim.transport()) as kds:
        for _ in range(2):
            bundle = fetch_bundle(
                evidence(case, "report.bin"), pcs=None, kds=kds, cache=cache, now=case_time(case)
            )
    assert len(sim.requests) == 2
    assert bundle.files["vcek.der"] == (VECTORS / case / "vcek.der").read_bytes()


def test_served_collateral_that_does_not_verify_now_is_reported(tmp_path: Path) -> None:
    sim = PcsSimulator(PLATFORM_CASE)
    cache = DiskCache(tmp_path, validate=collateral_validator())
    late = case_time(PLATFORM_CASE) + timedelta(days=400)
    with pcs_client(sim) as pcs, pytest.raises(CollateralFetchError) as info:
        fetch_bundle(evidence(PLATFORM_CASE), pcs=pcs, kds=None, cache=cache, now=late)
    assert info.value.code == "COLLATERAL_EXPIRED"
    assert "--no-cache" in (info.value.hint or "")
    assert len(cache) == 0


# -- the CLI, end to end over a real loopback server -------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(collateral_app, name="collateral")
    return app


def test_cli_fetch_json_writes_the_bundle(tmp_path: Path) -> None:
    sim = PcsSimulator(PROCESSOR_CASE)
    out = tmp_path / "bundle"
    with sim.serve() as base:
        result = CliRunner().invoke(
            cli(),
            [
                "collateral", "fetch", str(VECTORS / PROCESSOR_CASE / "quote.bin"),
                "--pccs", base, "--out", str(out), "--no-cache", "--json",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["out"] == str(out)
    assert doc["files"] == sorted(DCAP_FILES)
    assert doc["fmspc"] == "00a067110000"
    assert doc["tee"] == "sgx"
    assert doc["error"] is None
    assert_bundle_matches_case({n: (out / n).read_bytes() for n in DCAP_FILES}, PROCESSOR_CASE)
    assert len(sim.requests) == 4


def test_cli_fetch_human_output(tmp_path: Path) -> None:
    sim = PcsSimulator(TDX_CASE)
    with sim.serve() as base:
        result = CliRunner().invoke(
            cli(),
            [
                "collateral", "fetch", str(VECTORS / TDX_CASE / "quote.bin"),
                "--pccs", base, "--out", str(tmp_path), "--no-cache",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "FMSPC 00806f050000" in result.output
    assert "TDX TCB info for FMSPC 00806F050000: GET" in result.output
    assert "wrote 9 files" in result.output
    assert (tmp_path / "tcb_info.json").read_bytes() == (
        VECTORS / TDX_CASE / "tcb_info.json"
    ).read_bytes()


def test_cli_fetch_unknown_fmspc_exits_2(tmp_path: Path) -> None:
    sim = PcsSimulator(TDX_CASE)
    quote = VECTORS / "tdx-v5-gtg-90c06f-uptodate" / "quote.bin"
    with sim.serve() as base:
        as_json = CliRunner().invoke(
            cli(),
            [
                "collateral",
                "fetch",
                str(quote),
                "--pccs",
                base,
                "--out",
                str(tmp_path),
                "--no-cache",
                "--json",
            ],
        )
        human = CliRunner().invoke(
            cli(),
            [
                "collateral",
                "fetch",
                str(quote),
                "--pccs",
                base,
                "--out",
                str(tmp_path),
                "--no-cache",
            ],
        )
    assert as_json.exit_code == 2
    err = json.loads(as_json.stdout)["error"]
    assert err["code"] == "COLLATERAL_NOT_FOUND"
    assert "FMSPC 90C06F000000" in err["message"]
    assert err["actual"] == "HTTP 404"
    assert human.exit_code == 2
    assert "FMSPC 90C06F000000" in human.output
    assert "expected: HTTP 200" in human.output
    assert not (tmp_path / "tcb_info.json").exists()


def test_cli_fetch_with_cache_refuses_collateral_expired_today(tmp_path: Path) -> None:
    # The CLI verifies as of now; these vector collateral items expired long ago (2025).
    sim = PcsSimulator(PROCESSOR_CASE)
    with sim.serve() as base:
        result = CliRunner().invoke(
            cli(),
            [
                "collateral", "fetch", str(VECTORS / PROCESSOR_CASE / "quote.bin"),
                "--pccs", base, "--out", str(tmp_path / "out"),
                "--cache-dir", str(tmp_path / "cache"), "--json",
            ],
        )  # fmt: skip
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "COLLATERAL_EXPIRED"
    assert list((tmp_path / "cache").glob("*.json")) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--pccs", "http://pccs.example:8081"],
        ["--ca-bundle", "/nonexistent/ca.pem"],
        ["--product", "naples"],
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    case = "snp-v2-milan-virtee"
    result = CliRunner().invoke(
        cli(),
        [
            "collateral",
            "fetch",
            str(VECTORS / case / "report.bin"),
            "--out",
            str(tmp_path),
            "--no-cache",
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "USAGE"


def test_cli_missing_evidence_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli(), ["collateral", "fetch", str(tmp_path / "none.bin"), "--no-cache"]
    )
    assert result.exit_code == 2
    assert "cannot read evidence" in result.output


def test_cli_kds_end_to_end(tmp_path: Path) -> None:
    case = "snp-v2-milan-go-sev-guest"
    sim = KdsSimulator(case, "Milan")
    with sim.serve() as base:
        result = CliRunner().invoke(
            cli(),
            [
                "collateral", "fetch", str(VECTORS / case / "report.bin"), "--kds", base,
                "--product", "milan", "--out", str(tmp_path), "--no-cache", "--json",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tee"] == "snp"
    assert doc["fmspc"] is None
    assert doc["files"] == ["ark.pem", "ask.pem", "cert_chain.pem", "vcek.der"]
    for name in doc["files"]:
        assert (tmp_path / name).read_bytes() == (VECTORS / case / name).read_bytes()


def test_quote_with_damaged_pck_chain_fails_with_a_nacre_error() -> None:
    quote = evidence(PROCESSOR_CASE)
    start = quote.index(b"-----BEGIN CERTIFICATE-----")
    sim = PcsSimulator(PROCESSOR_CASE)
    rejected = 0
    with pcs_client(sim) as pcs:
        for pos in range(start + 30, start + 1200, 7):  # inside the PCK leaf's base64
            damaged = bytearray(quote)
            damaged[pos] = ord("A") if damaged[pos] != ord("A") else ord("B")
            try:
                fetch_bundle(
                    bytes(damaged), pcs=pcs, kds=None, cache=None, now=case_time(PROCESSOR_CASE)
                )
            except NacreError:
                rejected += 1
    assert rejected > 0


@pytest.mark.parametrize(
    ("key_info", "chip_id", "code"),
    [
        (0b111 << 2, None, "REPORT_MALFORMED"),  # SIGNING_KEY 7: not signed
        (0b10, bytes(64), "VCEK_NOT_FETCHABLE"),  # MASK_CHIP_KEY
        (0, bytes(64), "VCEK_NOT_FETCHABLE"),  # an all-zero CHIP_ID
    ],
)
def test_reports_whose_vcek_cannot_be_looked_up(
    key_info: int, chip_id: bytes | None, code: str
) -> None:
    case = "snp-v3-genoa-azure-trustee"
    report = parse_snp_report(evidence(case, "report.bin"))
    changed = dataclasses.replace(
        report, key_info=key_info, chip_id=report.chip_id if chip_id is None else chip_id
    )
    sim = KdsSimulator(case, "Genoa")
    with KdsClient(transport=sim.transport()) as kds, pytest.raises(CollateralFetchError) as info:
        fetch_bundle(changed.to_bytes(), pcs=None, kds=kds, cache=None, now=case_time(case))
    assert info.value.code == code
    assert sim.requests == []
