"""Faithful fakes of the TEE interfaces nacre.tee talks to, built in a temp directory.

- :class:`FakeGramine`: a Gramine ``/dev/attestation`` tree. A "PAL" thread watches
  ``user_report_data`` and answers with a quote from the simulation platform carrying it, as
  Gramine does (Gramine produces the quote when ``quote`` is read; a userspace fake cannot hook
  reads, so it produces it on the write and the backend reads until its report data shows).
  The seal keys are 16 bytes bound to the measured identity and its ISVSVN, like EGETKEY's.
- :class:`FakeTsmKernel`: configfs-tsm ``report/``. A "kernel" thread populates every new entry
  (``provider``, ``generation``, empty blobs), answers a 64-byte ``inblob`` write with ``outblob``
  (and ``auxblob``), bumps ``generation``, and can play a racing writer that rewrites the
  request before the reader looks. ``rmdir`` of an entry removes its attributes with it, as
  configfs does (installed over ``os.rmdir`` for paths under the fake only).
- :class:`FakeAmd`: an ARK/ASK/VCEK hierarchy of our own, signing SNP reports (trusted only via
  ``TrustRoots.from_certificates``).

Every file the fakes publish appears atomically (written aside, then renamed in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

import amd_forge
from nacre.collateral.trust import TrustRoots
from nacre.evidence.snp import SnpReport, parse_snp_report
from nacre.sim.measure import Manifest
from nacre.sim.platform import SimPlatform
from nacre.tee.tsm import SNP_CERT_GUIDS, TSM_REPORT_DIR, build_cert_table

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
SNP_BASE_REPORT = VECTORS / "snp-v2-milan-virtee" / "report.bin"
_POLL = 0.001


def _publish(tmp_dir: Path, target: Path, data: bytes) -> None:
    """Write ``data`` so that ``target`` flips from old to new content in one rename."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{target.name}.{threading.get_ident()}.{time.monotonic_ns()}"
    tmp.write_bytes(data)
    os.replace(tmp, target)


class _Poller:
    """A daemon thread calling ``step()`` until stopped; its first exception is kept."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except BaseException as exc:  # surfaced by stop()
                self.error = exc
                return
            time.sleep(_POLL)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.error is not None:
            raise RuntimeError(f"{type(self).__name__} thread failed") from self.error


# --------------------------------------------------------------------------- Gramine


def egetkey(root: bytes, policy: str, measurement: bytes, prod_id: int, svn: int) -> bytes:
    """A 128-bit seal key bound like SGX's: policy identity, ISVPRODID and the current ISVSVN."""
    msg = policy.encode() + b"\x00" + measurement + prod_id.to_bytes(2, "little")
    return hmac.new(root, msg + svn.to_bytes(2, "little"), hashlib.sha256).digest()[:16]


class FakeGramine(_Poller):
    """``<root>/dev/attestation`` of an enclave measured from ``manifest`` on ``platform``."""

    def __init__(
        self,
        root: Path,
        platform: SimPlatform,
        manifest: Manifest | None = None,
        *,
        attestation_type: str = "dcap",
    ) -> None:
        super().__init__()
        self.root = root
        self.platform = platform
        self.manifest = manifest
        self.dev = root / "dev" / "attestation"
        self._tmp = root / ".pal-tmp"
        self.quotes_made = 0
        (self.dev / "keys").mkdir(parents=True, exist_ok=True)
        (self.dev / "attestation_type").write_text(attestation_type)
        (self.dev / "user_report_data").write_bytes(bytes(64))
        m = platform.measure(manifest)
        sealing_root = platform.sealing_root()
        for policy, ident in (("mrenclave", m.mr_enclave), ("mrsigner", m.mr_signer)):
            key = egetkey(sealing_root, policy, ident, m.isv_prod_id, m.isv_svn)
            (self.dev / "keys" / f"_sgx_{policy}").write_bytes(key)
        self._last = bytes(64)
        _publish(self._tmp, self.dev / "quote", platform.quote("sgx", self._last, manifest))

    def step(self) -> None:
        data = (self.dev / "user_report_data").read_bytes()
        if len(data) == 64 and data != self._last:
            quote = self.platform.quote("sgx", data, self.manifest)
            _publish(self._tmp, self.dev / "quote", quote)
            self._last = data
            self.quotes_made += 1


@contextmanager
def fake_gramine(
    root: Path, platform: SimPlatform, manifest: Manifest | None = None, **kw: Any
) -> Iterator[FakeGramine]:
    fake = FakeGramine(root, platform, manifest, **kw)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


# --------------------------------------------------------------------------- configfs-tsm

#: An answer: inblob -> (outblob, auxblob).
Answer = Callable[[bytes], tuple[bytes, bytes]]


@dataclass
class _Entry:
    generation: int = 0
    answered: bytes | None = None


class FakeTsmKernel(_Poller):
    """configfs-tsm ``report/`` under ``root`` with one provider.

    ``races``: how many of the next requests a racing writer overwrites (it writes its own inblob
    right after ours, so ``generation`` moves by two before the reader looks).
    """

    ATTRIBUTES = ("provider", "generation", "inblob", "outblob", "auxblob")

    def __init__(self, root: Path, provider: str, answer: Answer, *, races: int = 0) -> None:
        super().__init__()
        self.root = root
        self.provider = provider
        self.answer = answer
        self.races = races
        self.reports = root / TSM_REPORT_DIR
        self.reports.mkdir(parents=True)
        self._tmp = root / ".kernel-tmp"
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.created: list[str] = []
        self.removed: list[str] = []
        self.raced = 0
        self._real_rmdir = os.rmdir

    def step(self) -> None:
        with self._lock:
            for entry in self.reports.iterdir():
                if entry.name not in self._entries:
                    self._populate(entry)
                else:
                    self._maybe_answer(entry, self._entries[entry.name])

    def _populate(self, entry: Path) -> None:
        for name in ("inblob", "outblob", "auxblob"):
            (entry / name).write_bytes(b"")
        _publish(self._tmp, entry / "provider", f"{self.provider}\n".encode())
        _publish(self._tmp, entry / "generation", b"0\n")
        self._entries[entry.name] = _Entry()
        self.created.append(entry.name)

    def _maybe_answer(self, entry: Path, state: _Entry) -> None:
        inblob = (entry / "inblob").read_bytes()
        if len(inblob) != 64 or inblob == state.answered:
            return
        writes = 1
        if self.races > 0:
            # The racing writer's request replaces ours before anyone reads outblob.
            self.races -= 1
            self.raced += 1
            inblob = hashlib.sha512(b"racer" + inblob).digest()
            _publish(self._tmp, entry / "inblob", inblob)
            writes = 2
        outblob, auxblob = self.answer(inblob)
        _publish(self._tmp, entry / "outblob", outblob)
        _publish(self._tmp, entry / "auxblob", auxblob)
        state.generation += writes
        state.answered = inblob
        _publish(self._tmp, entry / "generation", f"{state.generation}\n".encode())

    def rmdir(self, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """configfs semantics: removing an entry removes its attributes too."""
        p = Path(path)
        if p.parent != self.reports:
            self._real_rmdir(path, *args, **kwargs)
            return
        with self._lock:
            for name in self.ATTRIBUTES:
                (p / name).unlink(missing_ok=True)
            self._real_rmdir(p)
            self._entries.pop(p.name, None)
            self.removed.append(p.name)

    def leftover_entries(self) -> list[str]:
        return sorted(e.name for e in self.reports.iterdir())


@contextmanager
def fake_tsm(
    root: Path, provider: str, answer: Answer, *, races: int = 0
) -> Iterator[FakeTsmKernel]:
    """Run the fake kernel, with ``os.rmdir`` given configfs semantics under its tree."""
    kernel = FakeTsmKernel(root, provider, answer, races=races)
    real = os.rmdir
    os.rmdir = kernel.rmdir  # type: ignore[assignment]
    kernel.start()
    try:
        yield kernel
    finally:
        os.rmdir = real
        kernel.stop()
        shutil.rmtree(kernel._tmp, ignore_errors=True)


def tdx_answer(platform: SimPlatform, manifest: Manifest | None = None) -> Answer:
    """tdx_guest: outblob is a TDX v4 quote from the simulation platform, no auxblob."""

    def answer(inblob: bytes) -> tuple[bytes, bytes]:
        return platform.quote("tdx", inblob, manifest), b""

    return answer


# --------------------------------------------------------------------------- a fake AMD chain

_T0 = datetime.now(UTC) - timedelta(days=30)
_PSS = amd_forge.PSS
_AMD = amd_forge.AMD_OID
_name = amd_forge.name
_der_int = amd_forge.der_int
_ia5 = amd_forge.ia5


def _ca(
    key: rsa.RSAPrivateKey, cn: str, issuer_key: rsa.RSAPrivateKey, issuer: str
) -> x509.Certificate:
    return amd_forge.ca(key, cn, issuer_key, issuer, not_before=_T0)


@dataclass(frozen=True)
class FakeAmd:
    """ARK -> ASK -> VCEK (for one chip and TCB) signing SNP reports."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    base: SnpReport

    @classmethod
    def create(cls, base_report: Path = SNP_BASE_REPORT) -> FakeAmd:
        base = parse_snp_report(base_report.read_bytes())
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ark = _ca(ark_key, "ARK-Test", ark_key, "ARK-Test")
        ask = _ca(ask_key, "SEV-Test", ark_key, "ARK-Test")
        tcb = base.reported_tcb.to_dict()
        key = ec.generate_private_key(ec.SECP384R1())
        spl = {
            "3.1": tcb["bootloader"],
            "3.2": tcb["tee"],
            "3.3": tcb["snp"],
            "3.8": tcb["microcode"],
            **{f"3.{i}": 0 for i in (4, 5, 6, 7)},
        }
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(ask.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(_T0)
            .not_valid_after(_T0 + timedelta(days=2555))
        )
        raw = {"1": _der_int(0), "2": _ia5("Milan-B0"), "4": base.chip_id}
        raw.update({k: _der_int(v) for k, v in spl.items()})
        for suffix, value in raw.items():
            oid = x509.ObjectIdentifier(_AMD + suffix)
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
        return cls(ark=ark, ask=ask, vcek=vcek, vcek_key=key, base=base)

    @property
    def trust(self) -> TrustRoots:
        return TrustRoots.from_certificates([self.ark])

    def report(self, report_data: bytes) -> bytes:
        """The base report with ``report_data``, signed by the VCEK (ECDSA P-384, SHA-384)."""
        unsigned = dataclasses.replace(self.base, report_data=report_data)
        body = unsigned.to_bytes()[:0x2A0]
        r, s = decode_dss_signature(self.vcek_key.sign(body, ec.ECDSA(hashes.SHA384())))
        signed = dataclasses.replace(
            unsigned, signature_r=r.to_bytes(72, "little"), signature_s=s.to_bytes(72, "little")
        )
        return signed.to_bytes()

    def cert_table(self) -> bytes:
        """The GHCB certificate table a host hands the guest (VCEK, ASK, ARK; DER)."""
        guid = {name: g for g, name in SNP_CERT_GUIDS.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the VCEK's serial 0, as AMD issues them
            vcek_der = self.vcek.public_bytes(Encoding.DER)
        return build_cert_table(
            {
                guid["vcek.der"]: vcek_der,
                guid["ask.pem"]: self.ask.public_bytes(Encoding.DER),
                guid["ark.pem"]: self.ark.public_bytes(Encoding.DER),
            }
        )

    def answer(self, inblob: bytes) -> tuple[bytes, bytes]:
        """sev_guest: outblob is the raw 1184-byte report, auxblob the certificate table."""
        return self.report(inblob), self.cert_table()
