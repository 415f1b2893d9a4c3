"""TDX and SEV-SNP guests through Linux configfs-tsm (``/sys/kernel/config/tsm/report``, Linux >= 6.7).

One report request (Documentation/ABI/testing/configfs-tsm-report):

1. ``mkdir report/<fresh name>``: the kernel populates the entry with its attributes;
2. read ``provider`` (``tdx_guest`` or ``sev_guest``) and ``generation``;
3. write ``inblob`` (our 64 bytes of report data); the kernel bumps ``generation`` on every write;
4. read ``outblob`` (a TDX quote, or the raw 1184-byte SNP ATTESTATION_REPORT) and, for SNP,
   ``auxblob`` (the certificate table: VCEK or VLEK, ASK, ARK);
5. read ``generation`` again: it must be exactly one write after step 2. More means another writer
   changed the request between our write and our read, so the outblob may carry its data: the
   request is retried in a fresh entry (at most :data:`TSM_RACE_RETRIES` times), then refused;
6. ``rmdir`` the entry.

configfs-tsm has no sealing key: TDX and SNP sealing needs a key the key broker releases after
attestation, so :meth:`TsmBackend.seal` refuses instead of pretending.

Every path is under ``root`` (``/`` in production; a temp directory in tests). On a real kernel
every read answers at once; the bounded waits only matter for a userspace fake of the kernel.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import threading
import time
import uuid
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from nacre.errors import MalformedEvidenceError
from nacre.evidence import parse_quote
from nacre.evidence.snp import parse_snp_report
from nacre.evidence.tdx import TdReport10
from nacre.limits import MAX_EVIDENCE_BYTES
from nacre.tee.backend import (
    REPORT_DATA_SIZE,
    SealPolicy,
    SnpIdentity,
    TdxIdentity,
    TeeError,
    TeeKind,
    TeeUnavailableError,
    UnsupportedOperationError,
    check_report_data,
)

__all__ = [
    "MAX_AUXBLOB_BYTES",
    "MAX_CERT_TABLE_ENTRIES",
    "PROVIDERS",
    "SNP_CERT_GUIDS",
    "TSM_RACE_RETRIES",
    "TSM_REPORT_DIR",
    "TSM_SETTLE_SECONDS",
    "CertTableEntry",
    "TsmBackend",
    "TsmReport",
    "build_cert_table",
    "parse_cert_table",
]

#: Where configfs-tsm report entries live, relative to the root.
TSM_REPORT_DIR: Final = Path("sys/kernel/config/tsm/report")
#: Fresh attempts after a racing writer was detected through ``generation``.
TSM_RACE_RETRIES: Final = 3
#: Bound on waiting for an entry's attributes and for our write to show in ``generation``.
TSM_SETTLE_SECONDS: Final = 5.0
#: The SNP certificate table is a few KiB (three certificates).
MAX_AUXBLOB_BYTES: Final = 64 * 1024
#: Entries in one certificate table (VCEK/VLEK, ASK, ARK, a few more in future firmware).
MAX_CERT_TABLE_ENTRIES: Final = 32
#: configfs-tsm provider name -> TEE kind.
PROVIDERS: Final[Mapping[str, TeeKind]] = {"tdx_guest": "tdx", "sev_guest": "snp"}
#: GHCB certificate table GUIDs -> the collateral file name nacre uses for that certificate.
SNP_CERT_GUIDS: Final[Mapping[uuid.UUID, str]] = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek.der",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek.der",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask.pem",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark.pem",
}

_POLL_SECONDS: Final = 0.002
_ENTRY: Final = struct.Struct("<16sII")
_ZERO: Final = bytes(REPORT_DATA_SIZE)


@dataclass(frozen=True, slots=True)
class TsmReport:
    """One answered configfs-tsm request."""

    provider: str
    generation: int
    outblob: bytes
    auxblob: bytes


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    """One certificate of an SNP certificate table (GUID, DER bytes)."""

    guid: uuid.UUID
    data: bytes

    @property
    def collateral_name(self) -> str | None:
        return SNP_CERT_GUIDS.get(self.guid)


def _bad_table(message: str, field: str, expected: object, actual: object) -> NoReturn:
    raise MalformedEvidenceError(
        message, code="CERT_TABLE_MALFORMED", field=field, expected=expected, actual=actual
    )


def parse_cert_table(aux: bytes) -> tuple[CertTableEntry, ...]:
    """Decode a GHCB certificate table: (GUID, u32 offset, u32 length) entries, a zero entry last.

    Offsets count from the start of the table. GUIDs are in RFC 4122 byte order (as go-sev-guest
    and virtee/sev read them).
    """
    if len(aux) > MAX_AUXBLOB_BYTES:
        _bad_table(
            "the SNP certificate table is too large",
            "auxblob size",
            f"<= {MAX_AUXBLOB_BYTES}",
            len(aux),
        )
    entries: list[CertTableEntry] = []
    pos = 0
    while True:
        if pos + _ENTRY.size > len(aux):
            _bad_table(
                "the SNP certificate table ends without its zero entry",
                "auxblob",
                "a terminating all-zero entry",
                f"{len(aux)} bytes, entry {len(entries)} cut short",
            )
        raw_guid, offset, length = _ENTRY.unpack_from(aux, pos)
        pos += _ENTRY.size
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            return tuple(entries)
        if len(entries) >= MAX_CERT_TABLE_ENTRIES:
            _bad_table(
                "the SNP certificate table has too many entries",
                "auxblob entries",
                f"<= {MAX_CERT_TABLE_ENTRIES}",
                f"> {MAX_CERT_TABLE_ENTRIES}",
            )
        if offset + length > len(aux) or length == 0:
            _bad_table(
                "an SNP certificate table entry points outside the table",
                f"auxblob entry {len(entries)}",
                f"offset + length <= {len(aux)}, length > 0",
                f"offset {offset}, length {length}",
            )
        entries.append(CertTableEntry(uuid.UUID(bytes=raw_guid), aux[offset : offset + length]))


def build_cert_table(certs: Mapping[uuid.UUID, bytes]) -> bytes:
    """Encode a certificate table (as a hypervisor does; used by fakes and tests)."""
    header_size = _ENTRY.size * (len(certs) + 1)
    head = b""
    body = b""
    for guid, der in certs.items():
        head += _ENTRY.pack(guid.bytes, header_size + len(body), len(der))
        body += der
    return head + _ENTRY.pack(bytes(16), 0, 0) + body


def _pem(der: bytes) -> bytes:
    text = b64encode(der)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


class _RacedError(Exception):
    def __init__(self, before: int, after: int) -> None:
        super().__init__(f"generation {before} -> {after}")
        self.before = before
        self.after = after


class TsmBackend:
    """TDX or SEV-SNP evidence through configfs-tsm."""

    def __init__(self, root: str | Path = "/", *, expect: TeeKind | None = None) -> None:
        self._reports = Path(root) / TSM_REPORT_DIR
        self._lock = threading.Lock()
        self._last_aux: bytes | None = None
        if not self._reports.is_dir():
            raise TeeUnavailableError(
                "configfs-tsm is not available: no report directory",
                field=str(self._reports),
                expected="a directory (Linux >= 6.7 in a TDX or SEV-SNP guest, configfs mounted)",
                actual="missing",
                hint="mount configfs (mount -t configfs none /sys/kernel/config) and load "
                "tdx_guest or sev_guest; or set NACRE_TEE=sim for development",
            )
        self._provider = self._probe_provider()
        tee = PROVIDERS.get(self._provider)
        if tee is None:
            raise UnsupportedOperationError(
                "configfs-tsm reports a provider nacre does not support",
                field="provider",
                expected=" or ".join(PROVIDERS),
                actual=self._provider or "(none)",
            )
        if expect is not None and tee != expect:
            raise TeeUnavailableError(
                f"NACRE_TEE asks for {expect}, but this guest's configfs-tsm provider is "
                f"{self._provider}",
                field="provider",
                expected=next(p for p, k in PROVIDERS.items() if k == expect),
                actual=self._provider,
            )
        self._tee: TeeKind = tee

    @property
    def name(self) -> str:
        return "tsm"

    @property
    def tee(self) -> TeeKind:
        return self._tee

    @property
    def provider(self) -> str:
        return self._provider

    # ------------------------------------------------------------------ configfs plumbing

    def _new_entry(self) -> Path:
        entry = self._reports / f"nacre-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            os.mkdir(entry)
        except OSError as exc:
            raise TeeError(
                f"cannot create a configfs-tsm report entry: {exc.strerror}",
                field=str(entry),
                hint="the process needs write access to /sys/kernel/config/tsm/report",
            ) from exc
        return entry

    def _read(self, entry: Path, name: str, *, limit: int, optional: bool = False) -> bytes:
        path = entry / name
        deadline = time.monotonic() + TSM_SETTLE_SECONDS
        while True:
            try:
                with path.open("rb") as f:
                    data = f.read(limit + 1)
                break
            except FileNotFoundError:
                if optional and (entry / "generation").exists():
                    return b""
                if time.monotonic() >= deadline:
                    raise TeeError(
                        f"configfs-tsm entry has no {name} attribute",
                        field=str(path),
                        expected="a configfs-tsm attribute",
                        actual="missing",
                    ) from None
                time.sleep(_POLL_SECONDS)
            except OSError as exc:
                raise TeeError(
                    f"reading configfs-tsm {name} failed: {exc.strerror}", field=str(path)
                ) from exc
        if len(data) > limit:
            raise TeeError(
                f"configfs-tsm {name} is larger than expected",
                field=name,
                expected=f"<= {limit} bytes",
                actual=f"> {limit} bytes",
            )
        return data

    def _generation(self, entry: Path) -> int:
        text = self._read(entry, "generation", limit=32).decode("ascii", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise TeeError(
                "configfs-tsm generation is not a number",
                field="generation",
                expected="a decimal counter",
                actual=text,
            ) from None

    def _write_inblob(self, entry: Path, data: bytes) -> None:
        path = entry / "inblob"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise TeeError(
                f"cannot open configfs-tsm inblob: {exc.strerror}", field=str(path)
            ) from exc
        try:
            written = os.write(fd, data)
        except OSError as exc:
            raise TeeError(
                f"writing configfs-tsm inblob failed: {exc.strerror}", field=str(path)
            ) from exc
        finally:
            os.close(fd)
        if written != len(data):
            raise TeeError(
                "configfs-tsm accepted only part of the inblob",
                field="inblob",
                expected=f"{len(data)} bytes",
                actual=f"{written} bytes",
            )

    def _probe_provider(self) -> str:
        entry = self._new_entry()
        try:
            provider = self._read(entry, "provider", limit=64)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(entry)
        return provider.decode("ascii", "replace").strip()

    # ------------------------------------------------------------------ one request

    def _exchange(self, entry: Path, data: bytes) -> TsmReport:
        # 2. Provider and generation before our write.
        provider = self._read(entry, "provider", limit=64).decode("ascii", "replace").strip()
        if provider != self._provider:
            raise TeeError(
                "the configfs-tsm provider changed",
                field="provider",
                expected=self._provider,
                actual=provider,
            )
        before = self._generation(entry)
        # 3. Write inblob and wait (bounded) until generation accounts for a write.
        self._write_inblob(entry, data)
        deadline = time.monotonic() + TSM_SETTLE_SECONDS
        while self._generation(entry) <= before:
            if time.monotonic() >= deadline:
                raise TeeError(
                    "configfs-tsm did not account for the inblob write",
                    field="generation",
                    expected=f"> {before}",
                    actual=before,
                )
            time.sleep(_POLL_SECONDS)
        # 4. outblob, and auxblob for SNP.
        outblob = self._read(entry, "outblob", limit=MAX_EVIDENCE_BYTES)
        auxblob = b""
        if self._tee == "snp":
            auxblob = self._read(entry, "auxblob", limit=MAX_AUXBLOB_BYTES, optional=True)
        # 5. Exactly one write since step 2, or someone else wrote too.
        after = self._generation(entry)
        if after != before + 1:
            raise _RacedError(before, after)
        return TsmReport(provider=provider, generation=after, outblob=outblob, auxblob=auxblob)

    def request(self, report_data: bytes) -> TsmReport:
        """One configfs-tsm request, retried in a fresh entry when a racing writer is detected."""
        data = check_report_data(report_data)
        raced: _RacedError | None = None
        with self._lock:
            for _attempt in range(1 + TSM_RACE_RETRIES):
                # 1. A fresh entry per attempt.
                entry = self._new_entry()
                try:
                    report = self._exchange(entry, data)
                except _RacedError as exc:
                    raced = exc
                    continue
                finally:
                    # 6. rmdir the entry, whatever happened.
                    with contextlib.suppress(OSError):
                        os.rmdir(entry)
                self._check_outblob(report.outblob, data)
                self._last_aux = report.auxblob
                return report
        assert raced is not None
        raise TeeError(
            f"a racing writer changed the configfs-tsm request {1 + TSM_RACE_RETRIES} times in a "
            "row (generation advanced by more than our one write)",
            code="TSM_GENERATION_RACE",
            field="generation",
            expected=raced.before + 1,
            actual=raced.after,
            hint="another process is writing to nacre's configfs-tsm entries; find and stop it",
        )

    def _check_outblob(self, outblob: bytes, data: bytes) -> None:
        if not outblob:
            raise TeeError(
                "configfs-tsm returned an empty outblob",
                field="outblob",
                expected="a report",
                actual="0 bytes",
            )
        carried = self._parse_report_data(outblob)
        if carried != data:
            raise TeeError(
                "the configfs-tsm report does not carry the report data written",
                field="report_data",
                expected=data.hex(),
                actual=carried.hex(),
            )

    def _parse_report_data(self, outblob: bytes) -> bytes:
        if self._tee == "snp":
            return parse_snp_report(outblob).report_data
        quote = parse_quote(outblob)
        if not isinstance(quote.body, TdReport10):
            raise MalformedEvidenceError(
                "tdx_guest returned a quote that is not a TDX quote",
                field="quote body",
                expected="TD report",
                actual="SGX report body",
            )
        return quote.body.report_data

    # ------------------------------------------------------------------ TeeBackend

    def quote(self, report_data: bytes) -> bytes:
        return self.request(report_data).outblob

    def evidence_certificates(self) -> dict[str, bytes]:
        """The SNP certificates the host supplied with the last report (``auxblob``).

        Keys are nacre collateral file names (``vcek.der`` or ``vlek.der``, ``ask.pem``,
        ``ark.pem``), so they drop into a :class:`nacre.collateral.bundle.CollateralBundle`.
        Nothing here is trusted: the verifier checks the chain against pinned roots. Empty for TDX
        and when the host supplies no certificates. Requests a report first if none was made.
        """
        if self._tee != "snp":
            return {}
        if self._last_aux is None:
            self.request(_ZERO)
        out: dict[str, bytes] = {}
        for entry in parse_cert_table(self._last_aux or b""):
            name = entry.collateral_name
            if name is None:
                continue
            out[name] = _pem(entry.data) if name.endswith(".pem") else entry.data
        return out

    def identity(self) -> TdxIdentity | SnpIdentity:
        outblob = self.quote(_ZERO)
        if self._tee == "snp":
            report = parse_snp_report(outblob)
            return SnpIdentity(
                measurement=report.measurement,
                host_data=report.host_data,
                guest_svn=report.guest_svn,
            )
        body = parse_quote(outblob).body
        assert isinstance(body, TdReport10)  # checked by request()
        return TdxIdentity(mr_td=body.mr_td, rtmrs=(body.rtmr0, body.rtmr1, body.rtmr2, body.rtmr3))

    def _no_sealing(self) -> NoReturn:
        raise UnsupportedOperationError(
            f"{self._tee.upper()} guests have no sealing key in configfs-tsm: sealing there needs "
            "a key released by the key broker (KBS) after attestation, which nacre does not "
            "provide yet",
            field="sealing key",
            expected="a KBS-provided key",
            actual="none (configfs-tsm offers reports only)",
            hint="keep secrets in the KBS and fetch them after attestation",
        )

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        self._no_sealing()

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        self._no_sealing()
