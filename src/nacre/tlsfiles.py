"""TLS served from certificate files, reloaded when they change: a rotated Secret takes effect
without a restart (the admission webhook and ``nacre serve --tls-cert``).

Kubernetes updates a mounted Secret by swapping a symlink, so ``tls.crt`` and ``tls.key`` change
on disk while the server runs. :class:`ReloadingCertificate` owns the server's
:class:`ssl.SSLContext`; its SNI callback (which OpenSSL runs for every handshake, with or
without SNI) checks the files' identity (inode, size, mtime) at most every
:data:`RELOAD_CHECK_SECONDS`, loads a complete new context when they changed, and hands the
current one to the connection. New connections therefore get the new certificate; open ones keep
theirs. New files that do not load (half-written, key and certificate of different pairs, not
PEM) are logged once as an error and the previous certificate keeps being served.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography import x509

from nacre.errors import UsageError

__all__ = [
    "MIN_TLS_VERSION",
    "RELOAD_CHECK_SECONDS",
    "FileSignature",
    "ReloadingCertificate",
    "file_signature",
]

_log = logging.getLogger("nacre.tlsfiles")

#: How often at most the certificate files are looked at (on a handshake).
RELOAD_CHECK_SECONDS: Final = 10.0
#: TLS 1.2 and 1.3 only (the API server and every current client speak them).
MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2

FileSignature = tuple[tuple[int, int, int, int], ...]


def file_signature(*paths: Path) -> FileSignature:
    """What identifies the files' current contents without reading them."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _describe(cert_path: Path) -> str:
    """Subject, serial and expiry of the PEM certificate (for logs; never the key)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return "unreadable certificate"
    return (
        f"subject {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
        f"not after {cert.not_valid_after_utc.isoformat()}"
    )


class ReloadingCertificate:
    """The server context of ``cert_path``/``key_path``, reloading them when they change.

    The first load must succeed (a :class:`~nacre.errors.UsageError` names the file otherwise);
    later failed loads keep the last good certificate. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        cert_path: str | Path,
        key_path: str | Path,
        *,
        check_interval: float = RELOAD_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        hint: str = "mount the Secret holding tls.crt and tls.key",
    ) -> None:
        self._cert = Path(cert_path)
        self._key = Path(key_path)
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        try:
            signature = file_signature(self._cert, self._key)
            self._current = self._load()
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot load the TLS certificate: {exc}",
                field="tls_cert/tls_key",
                expected="a PEM certificate chain and its matching private key",
                actual=f"{self._cert}, {self._key}",
                hint=hint,
            ) from exc
        self._loaded = signature
        self._failed: FileSignature | None = None
        self._checked = clock()
        #: Successful reloads since start (observability; tests read it).
        self.reloads = 0
        self._outer = self._new_context()
        self._outer.load_cert_chain(self._cert, self._key)
        self._outer.sni_callback = self._on_handshake
        _log.info("serving TLS certificate %s", _describe(self._cert))

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MIN_TLS_VERSION
        return context

    def _load(self) -> ssl.SSLContext:
        context = self._new_context()
        context.load_cert_chain(self._cert, self._key)
        return context

    @property
    def context(self) -> ssl.SSLContext:
        """The context to serve with (its SNI callback swaps in the current certificate)."""
        return self._outer

    def check(self) -> bool:
        """Reload now if the files changed; True when a new certificate was loaded."""
        try:
            signature = file_signature(self._cert, self._key)
        except OSError as exc:
            self._report(None, f"cannot stat the certificate files: {exc}")
            return False
        if signature in (self._loaded, self._failed):
            return False
        try:
            context = self._load()
        except (OSError, ssl.SSLError) as exc:
            self._report(signature, f"{type(exc).__name__}: {exc}")
            return False
        self._current = context
        self._loaded = signature
        self._failed = None
        self.reloads += 1
        _log.info("reloaded TLS certificate: %s", _describe(self._cert))
        return True

    def _report(self, signature: FileSignature | None, reason: str) -> None:
        if signature is not None and signature == self._failed:
            return
        self._failed = signature
        _log.error(
            "the new TLS certificate %s / key %s does not load (%s); still serving the previous one",
            self._cert,
            self._key,
            reason,
        )

    def _on_handshake(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        with self._lock:
            now = self._clock()
            if now - self._checked >= self._interval:
                self._checked = now
                try:
                    self.check()
                except Exception:  # a reload bug must not break handshakes: keep serving
                    _log.exception("checking the TLS certificate files failed")
            connection.context = self._current
