"""The simulated platform (nacre.sim): PKI, collateral, quotes, measurements.

The independent check is dcap-qvl 0.7.0: every simulated quote, with the simulated bundle and the
simulation root, must verify there too, with the same TCB status, advisories and parsed fields.
"""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import nacre
from nacre.collateral.pck import parse_pck_extensions
from nacre.collateral.tcb_info import TCB_STATUSES, parse_tcb_info
from nacre.collateral.trust import SIM_ROOT_CA_CN, TrustRoots
from nacre.errors import NacreError, PolicyViolationError, UsageError, VerificationError
from nacre.evidence.dcap import DcapQuote, parse_quote
from nacre.evidence.sgx import EnclaveReportBody
from nacre.evidence.tdx import TdReport10
from nacre.sim import Manifest, SimPlatform
from nacre.sim.pki import PckProfile, encode_sgx_extensions
from nacre.verify import VerifyCache, verify

TEES = ("sgx", "tdx")
RD = bytes(range(64))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


def _now() -> datetime:
    return datetime.now(UTC)


def _signed_inner(raw: bytes) -> str:
    """The exact text of the signed object in ``{"name":{...},"signature":"..."}``."""
    text = raw.decode()
    return text[text.index(":") + 1 : text.rindex(',"signature"')]


def qvl_collateral(bundle: nacre.CollateralBundle) -> Any:
    f = bundle.files
    return dcap_qvl.QuoteCollateralV3(
        f["pck_crl_issuer_chain.pem"].decode(),
        f["root_ca_crl.der"],
        f["pck_crl.der"],
        f["tcb_info_issuer_chain.pem"].decode(),
        _signed_inner(f["tcb_info.json"]),
        bytes.fromhex(json.loads(f["tcb_info.json"])["signature"]),
        f["qe_identity_issuer_chain.pem"].decode(),
        _signed_inner(f["qe_identity.json"]),
        bytes.fromhex(json.loads(f["qe_identity.json"])["signature"]),
    )


def qvl_verify(p: SimPlatform, quote: bytes, bundle: nacre.CollateralBundle) -> Any:
    root_der = p.root_certificate.public_bytes(Encoding.DER)
    return dcap_qvl.verify_with_root_ca(
        quote, qvl_collateral(bundle), root_der, int(_now().timestamp())
    )


# --------------------------------------------------------------------------- PKI


def test_pck_extension_round_trips_through_nacre_and_dcap_qvl(platform: SimPlatform) -> None:
    prof = platform.pck_profile
    ours = parse_pck_extensions(platform.pki.pck)
    assert ours.ppid == prof.ppid
    assert ours.tcb_components == prof.tcb_components
    assert ours.pce_svn == prof.pce_svn
    assert ours.cpu_svn == bytes(prof.tcb_components)
    assert ours.fmspc == prof.fmspc == bytes.fromhex("0053494d0000")
    assert ours.pce_id == prof.pce_id
    assert ours.sgx_type == 1
    assert ours.platform_instance_id == prof.platform_instance_id
    assert (ours.dynamic_platform, ours.cached_keys, ours.smt_enabled) == (False, True, True)
    theirs = dcap_qvl.parse_pck_extension_from_pem(platform.pki.pck_chain_pem())
    assert bytes(theirs.ppid) == prof.ppid
    assert bytes(theirs.cpu_svn) == prof.cpu_svn
    assert theirs.pce_svn == prof.pce_svn
    assert bytes(theirs.pce_id) == prof.pce_id
    assert bytes(theirs.fmspc) == prof.fmspc
    assert theirs.sgx_type == 1
    assert bytes(theirs.platform_instance_id) == prof.platform_instance_id


def test_standard_type_extension_has_no_platform_fields() -> None:
    prof = PckProfile(
        ppid=bytes(16),
        tcb_components=tuple(range(16)),
        pce_svn=300,  # two-byte INTEGER
        pce_id=b"\x00\x01",
        fmspc=bytes(6),
        sgx_type=0,
    )
    from cryptography import x509

    from nacre.collateral.pck import parse_pck_extension_value

    value = encode_sgx_extensions(prof)
    ext = parse_pck_extension_value(value)
    assert (ext.sgx_type, ext.platform_instance_id, ext.dynamic_platform) == (0, None, None)
    assert ext.pce_svn == 300
    assert ext.tcb_components == tuple(range(16))
    assert isinstance(
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3"), value).value, bytes
    )


def test_pki_shape(platform: SimPlatform) -> None:
    pki = platform.pki
    assert pki.root.subject == pki.root.issuer
    assert f"CN={SIM_ROOT_CA_CN}" in pki.root.subject.rfc4514_string()
    assert "CN=nacre Simulation SGX PCK Platform CA" in pki.pck_ca.subject.rfc4514_string()
    pki.pck.verify_directly_issued_by(pki.pck_ca)
    pki.pck_ca.verify_directly_issued_by(pki.root)
    pki.tcb_signing.verify_directly_issued_by(pki.root)
    now = _now()
    from cryptography import x509

    crl = x509.load_der_x509_crl(platform.bundle("sgx", now=now).files["root_ca_crl.der"])
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > now + timedelta(days=29)
    assert crl.last_update_utc <= now


def test_keys_and_secrets_are_private(platform: SimPlatform) -> None:
    assert stat.S_IMODE(platform.dir.stat().st_mode) == 0o700
    private = [*sorted(platform.dir.glob("*.key")), platform.dir / "sealing_root.bin"]
    assert len(private) == 7
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(platform.sealing_root()) == 32
    assert SimPlatform.load(platform.dir).sealing_root() == platform.sealing_root()


def test_init_refuses_to_overwrite(platform: SimPlatform) -> None:
    with pytest.raises(UsageError, match="already exists"):
        SimPlatform.init(platform.dir)
    with pytest.raises(UsageError) as exc:
        SimPlatform.init(platform.dir.parent / "other", tcb_status="Stale")
    assert exc.value.field == "--tcb-status"


# --------------------------------------------------------------------------- quotes


@pytest.mark.parametrize("tee", TEES)
def test_quote_verifies_with_dcap_qvl_and_nacre(platform: SimPlatform, tee: str) -> None:
    quote = platform.quote(tee, RD)
    bundle = platform.bundle(tee)
    report = qvl_verify(platform, quote, bundle)
    assert report.status == "UpToDate"
    result = nacre.verify_evidence(
        quote, collateral=bundle, now=_now(), trust=platform.trust_roots()
    )
    assert result.sim is True
    assert result.to_dict()["sim"] is True
    assert result.tcb_status == "UpToDate"
    assert result.tee == tee
    assert result.version == (4 if tee == "tdx" else 3)
    assert result.claims["report_data"] == RD.hex()
    assert result.claims["fmspc"] == "0053494d0000"


@pytest.mark.parametrize("tee", TEES)
def test_parsed_fields_equal_dcap_qvl(platform: SimPlatform, tee: str) -> None:
    manifest = Manifest(isv_prod_id=7, isv_svn=3, config_id=bytes(range(64)))
    quote = platform.quote(tee, RD, manifest)
    ours = parse_quote(quote)
    assert ours.to_bytes() == quote
    theirs = dcap_qvl.parse_quote(quote)
    h = theirs.header
    assert (h.version, h.attestation_key_type, h.tee_type) == (
        ours.header.version,
        ours.header.att_key_type,
        ours.header.tee_type,
    )
    assert bytes(h.qe_vendor_id) == ours.header.qe_vendor_id
    assert bytes(h.user_data) == ours.header.user_data
    r = theirs.report
    if tee == "sgx":
        assert isinstance(ours.body, EnclaveReportBody)
        for name in ("cpu_svn", "attributes", "mr_enclave", "mr_signer", "report_data"):
            assert bytes(getattr(r, name)) == getattr(ours.body, name), name
    else:
        assert isinstance(ours.body, TdReport10)
        pairs = {f"rt_mr{i}": f"rtmr{i}" for i in range(4)}
        for name in (
            "tee_tcb_svn",
            "mr_seam",
            "mr_signer_seam",
            "seam_attributes",
            "td_attributes",
            "xfam",
            "mr_td",
            "mr_config_id",
            "mr_owner",
            "mr_owner_config",
            "report_data",
            *pairs,
        ):
            assert bytes(getattr(r, name)) == getattr(ours.body, pairs.get(name, name)), name
        assert ours.body.sept_ve_disable
        assert not ours.body.debug
    assert bytes(theirs.cert_chain_pem_bytes() or b"").rstrip(b"\x00") == ours.pck_chain_pem
    assert theirs.fmspc().lower() == "0053494d0000"


@pytest.mark.parametrize("tee", TEES)
def test_default_trust_rejects_simulated_evidence(platform: SimPlatform, tee: str) -> None:
    quote = platform.quote(tee, RD)
    with pytest.raises(VerificationError) as exc:
        nacre.verify_evidence(quote, collateral=platform.bundle(tee), now=_now())
    assert exc.value.code == "SIMULATED_EVIDENCE"
    assert "simulator" in exc.value.message
    assert exc.value.actual == SIM_ROOT_CA_CN
    assert "--trust-sim" in (exc.value.hint or "")


def test_pck_chain_check_also_names_the_simulator(platform: SimPlatform) -> None:
    """With real Intel collateral-side checks passing, the PCK chain itself is refused likewise."""
    from nacre.verify.chain import verify_chain_to_anchor

    chain = [platform.pki.pck, platform.pki.pck_ca, platform.pki.root]
    with pytest.raises(VerificationError) as exc:
        verify_chain_to_anchor(chain, TrustRoots.default().intel, _now(), what="PCK chain")
    assert exc.value.code == "SIMULATED_EVIDENCE"


def test_another_simulated_platform_is_not_trusted(platform: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform.init(tmp_path / "other")
    quote = platform.quote("sgx", RD)
    with pytest.raises(VerificationError) as exc:
        verify(quote, collateral=platform.bundle("sgx"), now=_now(), trust=other.trust_roots())
    assert exc.value.code == "CRL_INVALID"  # the ordinary untrusted-issuer error, not SIMULATED


def test_simulation_trust_requires_a_simulation_root(tmp_path: Path) -> None:
    intel = TrustRoots.default().intel[0]
    with pytest.raises(UsageError) as exc:
        TrustRoots.simulation(intel)
    assert exc.value.expected is not None
    assert SIM_ROOT_CA_CN in exc.value.expected


def test_simulation_trust_default_uses_nacre_sim_dir(
    platform: SimPlatform, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NACRE_SIM_DIR", str(platform.dir))
    trust = TrustRoots.simulation()
    assert trust.sim
    assert trust.intel == (platform.root_certificate,)
    monkeypatch.setenv("NACRE_SIM_DIR", str(tmp_path / "none"))
    with pytest.raises(UsageError, match="no simulated platform"):
        TrustRoots.simulation()


def test_tampered_quote_is_rejected(platform: SimPlatform) -> None:
    quote = bytearray(platform.quote("sgx", RD))
    quote[48 + 0x140] ^= 1  # report_data
    with pytest.raises(VerificationError) as exc:
        verify(
            bytes(quote),
            collateral=platform.bundle("sgx"),
            now=_now(),
            trust=platform.trust_roots(),
        )
    assert exc.value.code == "QUOTE_SIGNATURE_INVALID"


def test_report_data_longer_than_64_bytes_is_refused(platform: SimPlatform) -> None:
    with pytest.raises(UsageError):
        platform.quote("sgx", bytes(65))
    short = parse_quote(platform.quote("sgx", b"\x01"))
    assert short.body.report_data == b"\x01" + bytes(63)


def test_collateral_expires(platform: SimPlatform) -> None:
    then = _now() - timedelta(days=60)
    bundle = platform.bundle("sgx", now=then)
    with pytest.raises(VerificationError) as exc:
        verify(
            platform.quote("sgx", RD),
            collateral=bundle,
            now=_now(),
            trust=platform.trust_roots(),
            cache=VerifyCache(),
        )
    assert exc.value.code == "COLLATERAL_EXPIRED"


# --------------------------------------------------------------------------- TCB status


@pytest.mark.parametrize("status", TCB_STATUSES)
@pytest.mark.parametrize("tee", TEES)
def test_tcb_status_follows_the_platform(tmp_path: Path, tee: str, status: str) -> None:
    p = SimPlatform.init(tmp_path / "p", tcb_status=status)
    quote, bundle = p.quote(tee, RD), p.bundle(tee)
    result = verify(quote, collateral=bundle, now=_now(), trust=p.trust_roots())
    assert result.tcb_status == status
    assert result.sim
    if status == "UpToDate":
        assert result.advisory_ids == ()
    else:
        assert result.advisory_ids == ("NACRE-SIM-SA-00003",)
    # The TCB info really lists a higher level (the platform is not at the top) unless UpToDate.
    info = parse_tcb_info(bundle.files["tcb_info.json"])
    assert info.levels[0].status == "UpToDate"
    assert len(info.levels) == (2 if status == "UpToDate" else 3)
    if status == "Revoked":
        with pytest.raises(ValueError, match="Revoked"):
            qvl_verify(p, quote, bundle)
        with pytest.raises(PolicyViolationError) as exc:
            nacre.verify_evidence(quote, collateral=bundle, now=_now(), trust=p.trust_roots())
        assert exc.value.code == "TCB_REVOKED"
    else:
        report = qvl_verify(p, quote, bundle)
        assert report.status == status
        assert tuple(report.advisory_ids) == result.advisory_ids
        nacre.verify_evidence(quote, collateral=bundle, now=_now(), trust=p.trust_roots())


def test_custom_advisories(tmp_path: Path) -> None:
    p = SimPlatform.init(
        tmp_path / "p", tcb_status="OutOfDate", advisory_ids=("INTEL-SA-00837", "INTEL-SA-00960")
    )
    result = verify(
        p.quote("sgx", RD), collateral=p.bundle("sgx"), now=_now(), trust=p.trust_roots()
    )
    assert result.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00960")


# --------------------------------------------------------------------------- measurements


def _workload(tmp: Path, content: bytes = b"print('hello')\n") -> Path:
    (tmp / "app.py").write_bytes(content)
    (tmp / "lib.txt").write_bytes(b"library\n")
    manifest = tmp / "manifest.toml"
    manifest.write_text(
        'name = "hello"\nentrypoint = "app.py"\nisv_prod_id = 4\nisv_svn = 2\n'
        'config_id = "c0ffee"\n'
        '[[files]]\npath = "lib.txt"\n[[files]]\npath = "app.py"\n'
        '[[events]]\nrtmr = 2\ndata = "console=ttyS0"\n'
        '[[events]]\nrtmr = 3\ndigest = "' + "ab" * 48 + '"\n'
    )
    return manifest


def test_measurements_are_deterministic_and_track_files(
    platform: SimPlatform, tmp_path: Path
) -> None:
    import hashlib

    for name in "abc":
        (tmp_path / name).mkdir()
    a = platform.measure(Manifest.load(_workload(tmp_path / "a")))
    b = platform.measure(Manifest.load(_workload(tmp_path / "b")))
    assert a == b  # same content elsewhere: same measurement
    c = platform.measure(Manifest.load(_workload(tmp_path / "c", b"print('bye')\n")))
    assert c.mr_enclave != a.mr_enclave
    assert c.mr_td != a.mr_td
    assert c.mr_signer == a.mr_signer  # same signer
    assert a.rtmrs[0] == a.rtmrs[1] == bytes(48)
    assert (
        a.rtmrs[2] == hashlib.sha384(bytes(48) + hashlib.sha384(b"console=ttyS0").digest()).digest()
    )
    assert a.rtmrs[3] == hashlib.sha384(bytes(48) + bytes.fromhex("ab" * 48)).digest()
    assert a.config_id == bytes.fromhex("c0ffee") + bytes(61)
    # The quote carries them.
    sgx = parse_quote(platform.quote("sgx", RD, Manifest.load(tmp_path / "b" / "manifest.toml")))
    assert isinstance(sgx.body, EnclaveReportBody)
    assert (sgx.body.mr_enclave, sgx.body.mr_signer) == (a.mr_enclave, a.mr_signer)
    assert (sgx.body.isv_prod_id, sgx.body.isv_svn) == (4, 2)
    tdx = parse_quote(platform.quote("tdx", RD, Manifest.load(tmp_path / "b" / "manifest.toml")))
    assert isinstance(tdx.body, TdReport10)
    assert (tdx.body.mr_td, tdx.body.rtmr2) == (a.mr_td, a.rtmrs[2])


def test_mrsigner_is_the_hash_of_the_signing_key(platform: SimPlatform, tmp_path: Path) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "signer.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "m.json").write_text(json.dumps({"signer_key": "signer.pem"}))
    m = platform.measure(Manifest.load(tmp_path / "m.json"))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert m.mr_signer == hashlib.sha256(spki).digest()
    assert m.mr_signer != platform.measure().mr_signer


def test_manifest_pins_and_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "m.json").write_text(json.dumps({"files": [{"path": "f", "sha256": "00" * 32}]}))
    with pytest.raises(UsageError) as exc:
        Manifest.load(tmp_path / "m.json")
    assert exc.value.field == "files[0].sha256"
    (tmp_path / "m.json").write_text(json.dumps({"files": ["missing"]}))
    with pytest.raises(UsageError, match="cannot read measured file"):
        Manifest.load(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"isv_svn": 70000}))
    with pytest.raises(UsageError):
        Manifest.load(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"typo": 1}))
    with pytest.raises(UsageError, match="unknown manifest keys"):
        Manifest.load(tmp_path / "m.json")


@pytest.mark.parametrize("tee", TEES)
def test_debug_workload_verifies_but_baseline_refuses_it(platform: SimPlatform, tee: str) -> None:
    quote = platform.quote(tee, RD, Manifest(debug=True))
    parsed: DcapQuote = parse_quote(quote)
    assert parsed.body.debug
    if isinstance(parsed.body, TdReport10):
        assert not parsed.body.sept_ve_disable
    trust = platform.trust_roots()
    result = verify(quote, collateral=platform.bundle(tee), now=_now(), trust=trust)
    assert result.claims["debug"] is True
    with pytest.raises(PolicyViolationError) as exc:
        nacre.verify_evidence(quote, collateral=platform.bundle(tee), now=_now(), trust=trust)
    assert exc.value.code in ("DEBUG_ENCLAVE", "DEBUG_TD")


def test_load_reports_missing_platform(tmp_path: Path) -> None:
    with pytest.raises(NacreError, match="no simulated platform"):
        SimPlatform.load(tmp_path / "absent")


def test_loaded_platform_quotes_verify(platform: SimPlatform) -> None:
    again = SimPlatform.load(platform.dir)
    quote = again.quote("sgx", RD)
    result = verify(quote, collateral=platform.bundle("sgx"), now=_now(), trust=again.trust_roots())
    assert result.sim
    assert replace(again.measure()) == platform.measure()
