"""nacre.tee backends: one pipeline over sim, a Gramine fake and a configfs-tsm fake; selection; races."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

import nacre.tee.gramine as gramine_mod
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import MalformedEvidenceError, UsageError
from nacre.sim.measure import Manifest
from nacre.sim.platform import SimPlatform
from nacre.tee import (
    SgxIdentity,
    SnpIdentity,
    TdxIdentity,
    TeeBackend,
    TeeError,
    TeeUnavailableError,
    UnsupportedOperationError,
    current,
)
from nacre.tee.gramine import GramineBackend
from nacre.tee.sim import SimBackend
from nacre.tee.tsm import (
    SNP_CERT_GUIDS,
    TSM_RACE_RETRIES,
    TsmBackend,
    build_cert_table,
    parse_cert_table,
)
from nacre.verify import verify
from tee_fakes import FakeAmd, fake_gramine, fake_tsm, tdx_answer


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture(scope="module")
def amd() -> FakeAmd:
    return FakeAmd.create()


@dataclass(frozen=True)
class Case:
    backend: TeeBackend
    collateral: CollateralBundle | None  # None: built from the backend's evidence certificates
    trust: TrustRoots
    sim: bool


CASES = ["sim-sgx", "sim-tdx", "gramine-fake", "configfs-tdx-fake", "configfs-snp-fake"]


@contextmanager
def backend_case(name: str, root: Path, platform: SimPlatform, amd: FakeAmd) -> Iterator[Case]:
    """The backend ``nacre.tee.current()`` picks in each environment, and how to verify it."""
    with ExitStack() as stack:
        if name.startswith("sim-"):
            env = {"NACRE_TEE": "sim", "NACRE_SIM_DIR": str(platform.dir)}
            env["NACRE_SIM_TEE"] = name.removeprefix("sim-")
            backend = current(root, environ=env)
            yield Case(backend, platform.bundle(backend.tee), platform.trust_roots(), True)
        elif name == "gramine-fake":
            stack.enter_context(fake_gramine(root, platform))
            yield Case(
                current(root, environ={}), platform.bundle("sgx"), platform.trust_roots(), True
            )
        elif name == "configfs-tdx-fake":
            stack.enter_context(fake_tsm(root, "tdx_guest", tdx_answer(platform)))
            yield Case(
                current(root, environ={}), platform.bundle("tdx"), platform.trust_roots(), True
            )
        else:
            stack.enter_context(fake_tsm(root, "sev_guest", amd.answer))
            yield Case(current(root, environ={}), None, amd.trust, False)


@pytest.mark.parametrize("name", CASES)
def test_the_same_pipeline_runs_on_every_backend(
    name: str, tmp_path: Path, platform: SimPlatform, amd: FakeAmd
) -> None:
    with backend_case(name, tmp_path, platform, amd) as case:
        backend = case.backend
        nonce = bytes(range(64))
        evidence = backend.quote(nonce)
        collateral = case.collateral
        if collateral is None:
            assert isinstance(backend, TsmBackend)
            collateral = CollateralBundle(backend.evidence_certificates())
        result = verify(evidence, collateral=collateral, now=datetime.now(UTC), trust=case.trust)
        ident = backend.identity()

    assert result.tee == backend.tee
    assert result.claims["report_data"] == nonce.hex()
    assert result.sim is case.sim
    claims = result.claims
    if isinstance(ident, SgxIdentity):
        assert claims["mrenclave"] == ident.mrenclave.hex()
        assert claims["mrsigner"] == ident.mrsigner.hex()
        assert (claims["isv_prod_id"], claims["isv_svn"]) == (ident.isv_prod_id, ident.isv_svn)
    elif isinstance(ident, TdxIdentity):
        assert claims["mr_td"] == ident.mr_td.hex()
        assert [claims[f"rtmr{i}"] for i in range(4)] == [r.hex() for r in ident.rtmrs]
    else:
        assert isinstance(ident, SnpIdentity)
        assert claims["measurement"] == ident.measurement.hex()
        assert claims["host_data"] == ident.host_data.hex()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_report_data_must_be_exactly_64_bytes(
    name: str, size: int, tmp_path: Path, platform: SimPlatform, amd: FakeAmd
) -> None:
    with backend_case(name, tmp_path, platform, amd) as case, pytest.raises(UsageError) as info:
        case.backend.quote(b"\x01" * size)
    err = info.value
    assert (err.field, err.expected, err.actual) == ("report_data", "64 bytes", f"{size} bytes")


def test_a_string_is_not_report_data(platform: SimPlatform) -> None:
    with pytest.raises(UsageError, match="must be bytes"):
        SimBackend(platform).quote("a" * 64)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- selection


def test_env_selects_sim_and_its_manifest(tmp_path: Path, platform: SimPlatform) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    manifest = tmp_path / "app.toml"
    manifest.write_text(
        'entrypoint = "app.py"\nisv_prod_id = 7\nisv_svn = 3\n[[files]]\npath = "app.py"\n'
    )
    env = {
        "NACRE_TEE": "sim",
        "NACRE_SIM_DIR": str(platform.dir),
        "NACRE_SIM_MANIFEST": str(manifest),
    }
    backend = current(tmp_path, environ=env)
    assert isinstance(backend, SimBackend)
    ident = backend.identity()
    assert isinstance(ident, SgxIdentity)
    assert (ident.isv_prod_id, ident.isv_svn) == (7, 3)
    assert ident.mrenclave == platform.measure(Manifest.load(manifest)).mr_enclave


def test_sim_platform_is_created_on_first_use(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    backend = current(tmp_path, environ={"NACRE_TEE": "sim", "NACRE_SIM_DIR": str(target)})
    assert (target / "platform.json").is_file()
    assert backend.name == "sim"
    again = current(tmp_path, environ={"NACRE_TEE": "sim", "NACRE_SIM_DIR": str(target)})
    assert again.identity() == backend.identity()  # loaded, not re-created


def test_unknown_nacre_tee_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        current(tmp_path, environ={"NACRE_TEE": "sgx-direct"})
    assert info.value.field == "NACRE_TEE"
    assert info.value.actual == "sgx-direct"


def test_no_tee_found_says_how_to_use_sim(tmp_path: Path) -> None:
    with pytest.raises(TeeUnavailableError) as info:
        current(tmp_path, environ={})
    assert "no TEE found" in str(info.value)
    assert "NACRE_TEE=sim" in str(info.value)


def test_env_gramine_without_gramine_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TeeUnavailableError, match="not running under Gramine"):
        current(tmp_path, environ={"NACRE_TEE": "gramine"})


def test_detection_prefers_gramine_then_tsm(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "tdx_guest", tdx_answer(platform)):
        assert isinstance(current(tmp_path, environ={}), TsmBackend)
        with fake_gramine(tmp_path, platform):
            assert isinstance(current(tmp_path, environ={}), GramineBackend)


def test_env_tdx_on_an_snp_guest_names_the_provider(tmp_path: Path, amd: FakeAmd) -> None:
    with fake_tsm(tmp_path, "sev_guest", amd.answer):
        assert current(tmp_path, environ={"NACRE_TEE": "snp"}).tee == "snp"
        with pytest.raises(TeeUnavailableError) as info:
            current(tmp_path, environ={"NACRE_TEE": "tdx"})
    err = info.value
    assert (err.field, err.expected, err.actual) == ("provider", "tdx_guest", "sev_guest")


def test_tsm_with_an_unknown_provider_is_not_a_tee(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "arm_cca_guest", tdx_answer(platform)):
        with pytest.raises(UnsupportedOperationError) as info:
            TsmBackend(tmp_path)
        assert info.value.actual == "arm_cca_guest"
        with pytest.raises(TeeUnavailableError, match="no usable provider"):
            current(tmp_path, environ={})


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, nacre.tee\n"
        "lazy = ['nacre.tee.gramine', 'nacre.tee.tsm', 'nacre.tee.sim', 'nacre.sim.platform']\n"
        "assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- Gramine


@pytest.mark.parametrize("kind", ["epid", "none", "bogus"])
def test_gramine_refuses_anything_but_dcap(
    kind: str, tmp_path: Path, platform: SimPlatform
) -> None:
    with (
        fake_gramine(tmp_path, platform, attestation_type=kind),
        pytest.raises(UnsupportedOperationError) as info,
    ):
        GramineBackend(tmp_path)
    err = info.value
    assert (err.field, err.expected, err.actual) == ("attestation_type", "dcap", kind)
    assert "DCAP" in str(err)


def test_gramine_quote_that_never_carries_our_data_is_a_race(
    tmp_path: Path, platform: SimPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gramine_mod, "GRAMINE_QUOTE_SECONDS", 0.05)
    with fake_gramine(tmp_path, platform) as fake:
        backend = GramineBackend(tmp_path)
    # The PAL thread is stopped: the quote file keeps the old report data.
    with pytest.raises(TeeError) as info:
        backend.quote(b"\x07" * 64)
    assert info.value.code == "TEE_RACE"
    assert info.value.expected == (b"\x07" * 64).hex()
    assert fake.quotes_made == 0


def test_gramine_writes_the_report_data_it_was_given(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_gramine(tmp_path, platform) as fake:
        GramineBackend(tmp_path).quote(b"\x42" * 64)
    assert (fake.dev / "user_report_data").read_bytes() == b"\x42" * 64


def test_gramine_seal_key_of_a_wrong_size_is_refused(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_gramine(tmp_path, platform) as fake:
        (fake.dev / "keys" / "_sgx_mrsigner").write_bytes(b"\x00" * 32)
        backend = GramineBackend(tmp_path)
        with pytest.raises(TeeError) as info:
            backend.seal(b"x", policy="mrsigner")
    assert (info.value.field, info.value.expected) == ("keys/_sgx_mrsigner", "16 bytes")


# --------------------------------------------------------------------------- configfs-tsm


def test_tsm_removes_every_entry_it_creates(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "tdx_guest", tdx_answer(platform)) as kernel:
        backend = TsmBackend(tmp_path)
        backend.quote(b"\x01" * 64)
        backend.quote(b"\x02" * 64)
        assert kernel.leftover_entries() == []
    assert len(kernel.created) == 3  # the provider probe and two requests
    assert sorted(kernel.removed) == sorted(kernel.created)
    assert all(name.startswith("nacre-") for name in kernel.created)


def test_tsm_retries_after_a_racing_writer(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "tdx_guest", tdx_answer(platform)) as kernel:
        backend = TsmBackend(tmp_path)
        kernel.races = 2
        quote = backend.quote(b"\x05" * 64)
        assert kernel.leftover_entries() == []
    assert kernel.raced == 2
    assert len(kernel.created) == 1 + 3  # probe, two raced attempts, one clean
    result = verify(
        quote,
        collateral=platform.bundle("tdx"),
        now=datetime.now(UTC),
        trust=platform.trust_roots(),
    )
    assert result.claims["report_data"] == (b"\x05" * 64).hex()


def test_tsm_gives_up_on_a_persistent_racer(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "tdx_guest", tdx_answer(platform)) as kernel:
        backend = TsmBackend(tmp_path)
        kernel.races = 100
        with pytest.raises(TeeError) as info:
            backend.quote(b"\x05" * 64)
        assert kernel.leftover_entries() == []
    err = info.value
    assert err.code == "TSM_GENERATION_RACE"
    assert (err.field, err.expected, err.actual) == ("generation", "1", "2")
    assert kernel.raced == 1 + TSM_RACE_RETRIES


def test_tsm_outblob_must_carry_our_report_data(tmp_path: Path, platform: SimPlatform) -> None:
    def ignores_inblob(inblob: bytes) -> tuple[bytes, bytes]:
        return platform.quote("tdx", bytes(64)), b""

    with fake_tsm(tmp_path, "tdx_guest", ignores_inblob), pytest.raises(TeeError) as info:
        TsmBackend(tmp_path).quote(b"\x09" * 64)
    assert info.value.field == "report_data"
    assert info.value.expected == (b"\x09" * 64).hex()


def test_tdx_guest_returning_an_sgx_quote_is_refused(tmp_path: Path, platform: SimPlatform) -> None:
    with (
        fake_tsm(tmp_path, "tdx_guest", lambda d: (platform.quote("sgx", d), b"")),
        pytest.raises(MalformedEvidenceError, match="not a TDX quote"),
    ):
        TsmBackend(tmp_path).quote(b"\x09" * 64)


def test_snp_certificates_come_from_auxblob(tmp_path: Path, amd: FakeAmd) -> None:
    with fake_tsm(tmp_path, "sev_guest", amd.answer):
        backend = TsmBackend(tmp_path)
        certs = backend.evidence_certificates()  # requests a report first
    assert sorted(certs) == ["ark.pem", "ask.pem", "vcek.der"]
    assert certs["ark.pem"].startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert certs["vcek.der"] == parse_cert_table(amd.cert_table())[0].data


def test_tdx_has_no_evidence_certificates(tmp_path: Path, platform: SimPlatform) -> None:
    with fake_tsm(tmp_path, "tdx_guest", tdx_answer(platform)):
        assert TsmBackend(tmp_path).evidence_certificates() == {}


@pytest.mark.parametrize("provider", ["tdx_guest", "sev_guest"])
def test_tsm_sealing_is_refused_not_faked(
    provider: str, tmp_path: Path, platform: SimPlatform, amd: FakeAmd
) -> None:
    answer = tdx_answer(platform) if provider == "tdx_guest" else amd.answer
    with fake_tsm(tmp_path, provider, answer):
        backend = TsmBackend(tmp_path)
    with pytest.raises(UnsupportedOperationError, match="KBS") as info:
        backend.seal(b"secret")
    assert info.value.field == "sealing key"
    with pytest.raises(UnsupportedOperationError, match="KBS"):
        backend.unseal(b"blob")


def test_cert_table_round_trips_and_refuses_bad_tables() -> None:
    vcek = next(g for g, n in SNP_CERT_GUIDS.items() if n == "vcek.der")
    table = build_cert_table({vcek: b"\x30\x03abc"})
    (entry,) = parse_cert_table(table)
    assert (entry.guid, entry.data, entry.collateral_name) == (vcek, b"\x30\x03abc", "vcek.der")
    no_terminator = (
        vcek.bytes + (24).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"\x30\x03abc"
    )
    with pytest.raises(MalformedEvidenceError, match="zero entry"):
        parse_cert_table(no_terminator)
    bad_offset = table[:16] + (10_000).to_bytes(4, "little") + table[20:]
    with pytest.raises(MalformedEvidenceError, match="outside the table"):
        parse_cert_table(bad_offset)


def test_sim_tdx_cannot_seal(platform: SimPlatform) -> None:
    with pytest.raises(UnsupportedOperationError, match="KBS"):
        SimBackend(platform, tee="tdx").seal(b"x")


def test_every_backend_satisfies_the_protocol(
    tmp_path: Path, platform: SimPlatform, amd: FakeAmd
) -> None:
    sim: TeeBackend = SimBackend(platform)  # checked statically by mypy too
    assert isinstance(sim, TeeBackend)
    with fake_gramine(tmp_path / "g", platform):
        gramine: TeeBackend = GramineBackend(tmp_path / "g")
    with fake_tsm(tmp_path / "t", "sev_guest", amd.answer):
        tsm: TeeBackend = TsmBackend(tmp_path / "t")
    assert [b.name for b in (sim, gramine, tsm)] == ["sim", "gramine", "tsm"]
    assert [b.tee for b in (sim, gramine, tsm)] == ["sgx", "sgx", "snp"]
    assert all(isinstance(b, TeeBackend) for b in (gramine, tsm))
