"""The KBS's CA certificates, handed to the init container so it can verify the KBS over TLS.

The KBS serves TLS with a certificate from its own CA (Secret ``nacre-kbs-tls``, issued by
``nacre k8s webhook-certs --service nacre``). Workloads live in other namespaces and cannot mount
that Secret, so the webhook, which mounts its ``ca.crt``, writes the PEM into the init container's
``NACRE_KBS_CA_PEM`` (public data: CA certificates only). The file is re-read when its identity
changes (a renewed Secret; :func:`nacre.tlsfiles.file_signature`, as for the certificate files),
and a file that stops loading keeps the last good certificates, logged once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.errors import UsageError
from nacre.tlsfiles import FileSignature, file_signature

__all__ = ["ENV_KBS_CA_PEM", "MAX_CA_FILE_BYTES", "KbsCaFile"]

_log = logging.getLogger("nacre.k8s.webhook")

#: The init container's variable (read by ``nacre k8s init-secrets --ca-pem``).
ENV_KBS_CA_PEM: Final = "NACRE_KBS_CA_PEM"
#: A CA bundle larger than this is not a CA bundle (and would bloat every pod spec).
MAX_CA_FILE_BYTES: Final = 64 * 1024


class KbsCaFile:
    """PEM CA certificates from ``path``, re-read when the file's identity changes."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            self._signature = file_signature(self._path)
            self._pem = self._load()
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot load the KBS CA certificates: {exc}",
                field="--kbs-ca-file",
                expected=f"PEM CA certificates (at most {MAX_CA_FILE_BYTES} bytes)",
                actual=str(self._path),
                hint="mount ca.crt of the nacre-kbs-tls Secret (nacre k8s webhook-certs "
                "--service nacre --secret nacre-kbs-tls --webhook-config '')",
            ) from exc
        self._failed: FileSignature | None = None

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> str:
        data = self._path.read_bytes()
        if len(data) > MAX_CA_FILE_BYTES:
            raise ValueError(f"{len(data)} bytes is more than {MAX_CA_FILE_BYTES}")
        certs = x509.load_pem_x509_certificates(data)
        # Normalised: nothing but the certificates reaches pod specs.
        return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs)

    def pem(self) -> str:
        """The current certificates as PEM text."""
        with self._lock:
            try:
                signature = file_signature(self._path)
            except OSError as exc:
                self._report(None, f"cannot stat it: {exc}")
                return self._pem
            if signature in (self._signature, self._failed):
                return self._pem
            try:
                self._pem = self._load()
            except (OSError, ValueError) as exc:
                self._report(signature, str(exc))
                return self._pem
            self._signature, self._failed = signature, None
            _log.info("reloaded the KBS CA certificates from %s", self._path)
            return self._pem

    def _report(self, signature: FileSignature | None, reason: str) -> None:
        if signature is not None and signature == self._failed:
            return
        self._failed = signature
        _log.error(
            "the KBS CA file %s does not load (%s); still using the previous certificates",
            self._path,
            reason,
        )
