"""SGX under Gramine: the ``/dev/attestation`` pseudo-files of Gramine's LibOS (DCAP only).

- ``attestation_type``: ``dcap``, ``epid`` or ``none`` (from ``sgx.remote_attestation`` in the
  manifest). nacre is DCAP-only, so the other two are refused with a hint.
- ``user_report_data``: write exactly 64 bytes; ``quote``: read the DCAP quote that carries them.
  Both are process-global, so this backend serialises its own callers with a lock and checks that
  the quote carries its report data (another thread of the enclave may have written in between).
- ``keys/_sgx_mrenclave``, ``keys/_sgx_mrsigner``: the 16-byte SGX seal keys Gramine obtains with
  EGETKEY. They are the sealing roots of :class:`nacre.tee.sealing.Sealer`. Gramine derives them
  for the enclave's current ISVSVN and CPUSVN, so on Gramine a new enclave version gets a new root
  and cannot unseal what an older version sealed (the simulator implements SGX's full SVN rule).

``identity()`` parses a fresh quote with zero report data: the report body states MRENCLAVE,
MRSIGNER, ISVPRODID and ISVSVN, and nothing else (``my_target_info`` lacks the signer) is needed.

Every path is under ``root`` (``/`` in production; a temp directory in tests).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Final

from nacre.errors import MalformedEvidenceError
from nacre.evidence.sgx import EnclaveReportBody
from nacre.limits import MAX_EVIDENCE_BYTES
from nacre.tee.backend import (
    REPORT_DATA_SIZE,
    SealPolicy,
    SgxIdentity,
    TeeError,
    TeeKind,
    TeeUnavailableError,
    UnsupportedOperationError,
    check_report_data,
)
from nacre.tee.sealing import Sealer

__all__ = ["GRAMINE_KEY_SIZE", "GRAMINE_QUOTE_SECONDS", "GramineBackend"]

#: Gramine's SGX seal keys are 128-bit.
GRAMINE_KEY_SIZE: Final = 16
#: How long to wait for a quote carrying our report data (Gramine answers at once; a concurrent
#: writer in the same enclave, or a slow fake, may need another read).
GRAMINE_QUOTE_SECONDS: Final = 5.0
_POLL_SECONDS: Final = 0.002
_ZERO: Final = bytes(REPORT_DATA_SIZE)


class GramineBackend:
    """SGX DCAP attestation and sealing through Gramine's ``/dev/attestation``."""

    def __init__(self, root: str | Path = "/") -> None:
        self._dev = Path(root) / "dev" / "attestation"
        self._lock = threading.Lock()
        self._identity: SgxIdentity | None = None
        self._check_attestation_type()

    @property
    def name(self) -> str:
        return "gramine"

    @property
    def tee(self) -> TeeKind:
        return "sgx"

    def _check_attestation_type(self) -> None:
        path = self._dev / "attestation_type"
        try:
            kind = path.read_bytes().decode("ascii", "replace").strip("\x00\n ")
        except FileNotFoundError:
            raise TeeUnavailableError(
                "not running under Gramine with SGX: /dev/attestation is missing",
                field=str(path),
                expected="a Gramine /dev/attestation pseudo-file",
                actual="no such file",
                hint="run the workload with gramine-sgx, or set NACRE_TEE=sim for development",
            ) from None
        except OSError as exc:
            raise TeeUnavailableError(
                f"cannot read {path}: {exc.strerror}", field=str(path)
            ) from exc
        if kind == "dcap":
            return
        hint = 'set sgx.remote_attestation = "dcap" in the Gramine manifest'
        if kind == "epid":
            raise UnsupportedOperationError(
                "Gramine is configured for EPID attestation; nacre supports DCAP only",
                field="attestation_type",
                expected="dcap",
                actual=kind,
                hint=hint,
            )
        if kind == "none":
            raise UnsupportedOperationError(
                "Gramine remote attestation is disabled (attestation_type is none); "
                "nacre needs DCAP",
                field="attestation_type",
                expected="dcap",
                actual=kind,
                hint=hint,
            )
        raise UnsupportedOperationError(
            "Gramine reports an unknown attestation type; nacre supports DCAP only",
            field="attestation_type",
            expected="dcap",
            actual=kind,
            hint=hint,
        )

    def quote(self, report_data: bytes) -> bytes:
        data = check_report_data(report_data)
        with self._lock:
            # 1. Write exactly 64 bytes of report data (Gramine refuses any other size).
            self._write_report_data(data)
            # 2. Read the quote until it carries our report data (bounded).
            return self._read_quote_for(data)

    def _write_report_data(self, data: bytes) -> None:
        path = self._dev / "user_report_data"
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise TeeError(
                f"cannot open {path} for writing: {exc.strerror}", field=str(path)
            ) from exc
        try:
            written = os.write(fd, data)
        except OSError as exc:
            raise TeeError(f"writing {path} failed: {exc.strerror}", field=str(path)) from exc
        finally:
            os.close(fd)
        if written != len(data):
            raise TeeError(
                "Gramine accepted only part of the report data",
                field="user_report_data",
                expected=f"{len(data)} bytes written",
                actual=f"{written} bytes written",
            )

    def _read_quote_for(self, data: bytes) -> bytes:
        path = self._dev / "quote"
        deadline = time.monotonic() + GRAMINE_QUOTE_SECONDS
        seen = b""
        while True:
            try:
                with path.open("rb") as f:
                    quote = f.read(MAX_EVIDENCE_BYTES + 1)
            except FileNotFoundError:
                quote = b""
            except OSError as exc:
                raise TeeError(
                    f"reading {path} failed: {exc.strerror}",
                    field=str(path),
                    hint="check that the AESM service is reachable from the enclave",
                ) from exc
            if quote:
                body = _sgx_body(quote)
                if body.report_data == data:
                    return quote
                seen = body.report_data
            if time.monotonic() >= deadline:
                raise TeeError(
                    "the Gramine quote does not carry the report data written: another thread "
                    "of this enclave wrote user_report_data at the same time",
                    code="TEE_RACE",
                    field="report_data",
                    expected=data.hex(),
                    actual=seen.hex() if seen else "no quote",
                    hint="serialise quote requests inside the enclave (one GramineBackend)",
                )
            time.sleep(_POLL_SECONDS)

    def identity(self) -> SgxIdentity:
        if self._identity is None:
            body = _sgx_body(self.quote(_ZERO))
            self._identity = SgxIdentity.from_report_body(body)
        return self._identity

    def _sealing_root(self, policy: SealPolicy) -> bytes:
        path = self._dev / "keys" / f"_sgx_{policy}"
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise TeeError(
                f"cannot read the Gramine sealing key {path}: {exc.strerror}",
                field=str(path),
                hint="Gramine >= 1.4 exposes /dev/attestation/keys/_sgx_mrenclave and _sgx_mrsigner",
            ) from exc
        if len(key) != GRAMINE_KEY_SIZE:
            raise TeeError(
                "the Gramine sealing key has an unexpected size",
                field=f"keys/_sgx_{policy}",
                expected=f"{GRAMINE_KEY_SIZE} bytes",
                actual=f"{len(key)} bytes",
            )
        return key

    def _sealer(self) -> Sealer:
        return Sealer(self.identity(), self._sealing_root)

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        return self._sealer().seal(data, policy=policy, aad=aad)

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        return self._sealer().unseal(blob, aad=aad)


def _sgx_body(quote: bytes) -> EnclaveReportBody:
    from nacre.evidence import parse_quote

    if len(quote) > MAX_EVIDENCE_BYTES:
        raise TeeError(
            "Gramine returned a quote larger than any quote",
            field="quote",
            expected=f"<= {MAX_EVIDENCE_BYTES} bytes",
            actual=f"> {MAX_EVIDENCE_BYTES} bytes",
        )
    body = parse_quote(quote).body
    if not isinstance(body, EnclaveReportBody):
        raise MalformedEvidenceError(
            "Gramine returned a TDX quote where an SGX quote was expected",
            field="quote body",
            expected="SGX enclave report body",
            actual="TD report",
        )
    return body
