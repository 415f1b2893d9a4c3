"""RA-TLS over the standard library's :mod:`ssl`: every connection is attested before it is used.

Python's ``ssl`` cannot call back into Python to verify a peer certificate during the handshake, and
OpenSSL refuses a self-signed client certificate that is not in the server's trust store (it aborts
the handshake as soon as verification fails, ``CERT_OPTIONAL`` or not). So nacre does this:

**Server attestation.** The client context uses ``CERT_NONE`` and no hostname check at the TLS layer
(the peer's identity is its measurement, not a name). TLS 1.3 still proves that the server holds the
private key of the certificate it presented (CertificateVerify is checked whatever the verify mode).
:meth:`RatlsContext.wrap_socket` completes the handshake and then verifies the peer certificate
(``getpeercert(binary_form=True)``) with the RA-TLS verifier before it returns the socket; on any
failure it closes the connection and raises. No code path hands out an unverified connected socket:
``wrap_socket`` refuses unconnected client sockets, deferred handshakes and session resumption,
and ``wrap_bio`` (memory-BIO TLS, asyncio) is refused because it could not verify before use.

**Client attestation (mutual).** The server cannot make OpenSSL request and accept an arbitrary
self-signed client certificate, so the client proves itself inside the channel, before any
application data:

1. after verifying the server, the client sends one frame
   ``b"NACRE-RATLS-CLIENT-AUTH/1" || u32be len || client cert DER || u16be len || signature``;
2. the signature is made with the client's RA-TLS key over
   ``b"nacre RA-TLS client attestation v1\\0" || SHA-256(server cert DER) || SHA-256(client cert
   DER) || u8 len || tls-unique``, where tls-unique is ``get_channel_binding("tls-unique")``;
3. the server verifies the certificate (evidence, key binding, validity, policy) and the signature
   with the certified key, then answers one status byte (0 accepted, 1 refused) and, on refusal,
   closes. The server's ``wrap_socket`` returns only after all of this succeeded, so the server
   application never reads a byte from an unattested client.

Both sides must agree on mutual attestation (there is no in-band negotiation yet): a server with
``verify_client`` refuses a client that sends anything else first (``RATLS_CLIENT_AUTH_MISSING``);
a client with credentials facing a server without it gets no verdict (``RATLS_TIMEOUT``).

Channel binding: Python 3.11's ``ssl`` offers no TLS exporter (RFC 9266 ``tls-exporter``), only
``tls-unique``, which OpenSSL computes from the handshake's first Finished message (here the
client's). nacre requires TLS 1.3, where Finished is a MAC over the whole transcript (both key shares,
the server's certificate and CertificateVerify) under keys from the (EC)DHE secret: it differs on
every connection and a man in the middle cannot make two connections share it, so a proof cannot be
replayed or relayed onto another connection. (TLS 1.2's tls-unique, open to the triple-handshake
attack without extended master secret, is never used: TLS 1.2 is not negotiated.) Session tickets
are disabled so every connection makes a full handshake and presents its certificate.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from nacre.appraisal.baseline import BaselinePolicy
from nacre.collateral.trust import TrustRoots
from nacre.errors import NacreError, UsageError
from nacre.ratls._cert import (
    MAX_RATLS_CERT_BYTES,
    CollateralSource,
    PrivateKey,
    RatlsError,
    load_certificate,
    spki_der,
    verify_ratls_certificate,
)
from nacre.verify import VerifyCache
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "CLIENT_AUTH_MAGIC",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "RatlsContext",
    "RatlsSocket",
    "RatlsVerifier",
    "Verifier",
    "accept_verified",
    "client_context",
    "server_context",
    "wrap_client",
    "wrap_server",
]

#: Wall-clock bound on one TLS handshake plus the attestation exchange.
HANDSHAKE_TIMEOUT_SECONDS: Final = 10.0
#: First bytes of the client attestation frame (protocol name and version).
CLIENT_AUTH_MAGIC: Final = b"NACRE-RATLS-CLIENT-AUTH/1"
_SIG_CONTEXT: Final = b"nacre RA-TLS client attestation v1\x00"
_MAX_SIGNATURE_BYTES: Final = 1024
_STATUS_OK: Final = b"\x00"
_STATUS_REFUSED: Final = b"\x01"


class Verifier(Protocol):
    """Anything that turns a peer certificate into verified evidence, or raises a nacre error."""

    def verify_certificate(self, cert: x509.Certificate | bytes) -> VerifiedEvidence: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RatlsVerifier:
    """:func:`nacre.ratls.verify_ratls_certificate` with its arguments fixed, for live connections.

    ``clock`` gives the verification time of each connection (the current UTC time by default).
    """

    collateral: CollateralSource
    trust: TrustRoots | None = None
    policy: Callable[[VerifiedEvidence], None] | None = None
    baseline: BaselinePolicy | None = None
    clock: Callable[[], datetime] = field(default=_utcnow)
    cache: VerifyCache | None = None

    def verify_certificate(self, cert: x509.Certificate | bytes) -> VerifiedEvidence:
        return verify_ratls_certificate(
            cert,
            collateral=self.collateral,
            now=self.clock(),
            trust=self.trust,
            policy=self.policy,
            baseline=self.baseline,
            cache=self.cache,
        )


class RatlsSocket(ssl.SSLSocket):
    """A TLS socket whose peer was attested; ``ratls_peer`` holds the peer's verified evidence.

    ``ratls_peer`` is ``None`` only on a server connection whose context does not attest clients
    (and on a listening socket).
    """

    ratls_peer: VerifiedEvidence | None = None


@dataclass(frozen=True, slots=True)
class _Credentials:
    key: PrivateKey
    cert: x509.Certificate
    der: bytes


@dataclass(frozen=True, slots=True)
class _Settings:
    server: bool
    verifier: Verifier | None
    credentials: _Credentials | None
    timeout: float


class RatlsContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` whose ``wrap_socket`` attests the peer before returning.

    Build one with :func:`client_context` or :func:`server_context`; it can be passed where the
    standard library takes a context and wraps connected sockets (``http.client``, ``socketserver``
    with ``wrap_socket``): the attestation still happens.
    """

    _ratls: _Settings

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        settings = getattr(self, "_ratls", None)
        if not isinstance(settings, _Settings):
            raise UsageError(
                "build RA-TLS contexts with client_context() or server_context()",
                field="context",
                expected="a configured RatlsContext",
                actual="RatlsContext without a verifier",
            )
        if server_side != settings.server:
            raise UsageError(
                "this RA-TLS context is for the other side of the connection",
                field="server_side",
                expected=settings.server,
                actual=server_side,
            )
        if session is not None:
            raise UsageError(
                "RA-TLS does not resume sessions: every connection presents fresh evidence",
                field="session",
                expected=None,
                actual="a session",
            )
        if not do_handshake_on_connect:
            raise UsageError(
                "RA-TLS completes the handshake and the attestation in wrap_socket",
                field="do_handshake_on_connect",
                expected=True,
                actual=False,
                hint="a deferred handshake would let data flow before the peer is verified",
            )
        connected = _is_connected(sock)
        if not connected and not server_side:
            raise UsageError(
                "connect the socket before wrapping it with an RA-TLS client context",
                field="sock",
                expected="a connected socket",
                actual="not connected",
            )
        ssl_sock = super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=not connected,  # a listener: accept() comes back here
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
        )
        if not connected:
            return ssl_sock
        try:
            if not isinstance(ssl_sock, RatlsSocket):
                raise UsageError(
                    "the context's sslsocket_class was replaced",
                    field="sslsocket_class",
                    expected="RatlsSocket",
                    actual=type(ssl_sock).__name__,
                )
            _establish(ssl_sock, settings)
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        raise UsageError(
            "RA-TLS contexts wrap sockets only",
            field="wrap_bio",
            expected="wrap_socket on a connected socket",
            actual="memory BIO (asyncio)",
            hint="an SSLObject could carry data before the peer is attested",
        )


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EINVAL):
            return False
        raise
    return True


def _protocol_error(message: str, code: str, **kwargs: Any) -> RatlsError:
    return RatlsError(message, code=code, step="ra-tls handshake", **kwargs)


def _recv_exact(sock: ssl.SSLSocket, n: int, deadline: float, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _protocol_error(
                f"the peer did not send its {what} in time",
                "RATLS_TIMEOUT",
                field=what,
                expected=f"{n} bytes within the handshake timeout",
                actual=f"{len(buf)} bytes",
            )
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError as exc:
            raise _protocol_error(
                f"the peer did not send its {what} in time",
                "RATLS_TIMEOUT",
                field=what,
                expected=f"{n} bytes within the handshake timeout",
                actual=f"{len(buf)} bytes",
            ) from exc
        if not chunk:
            raise _protocol_error(
                f"the peer closed the connection instead of sending its {what}",
                "RATLS_PEER_CLOSED",
                field=what,
                expected=f"{n} bytes",
                actual=f"{len(buf)} bytes",
            )
        buf += chunk
    return bytes(buf)


def _channel_binding(sock: ssl.SSLSocket) -> bytes:
    version = sock.version()
    if version != "TLSv1.3":
        raise _protocol_error(
            "RA-TLS requires TLS 1.3",
            "RATLS_TLS_VERSION",
            field="TLS version",
            expected="TLSv1.3",
            actual=version,
        )
    binding = sock.get_channel_binding("tls-unique")
    if not binding:
        raise _protocol_error(
            "no channel binding is available", "RATLS_NO_CHANNEL_BINDING", field="tls-unique"
        )
    return binding


def _proof_message(server_der: bytes, client_der: bytes, binding: bytes) -> bytes:
    return (
        _SIG_CONTEXT
        + hashlib.sha256(server_der).digest()
        + hashlib.sha256(client_der).digest()
        + bytes([len(binding)])
        + binding
    )


def _sign(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
            hashes.SHA256(),
        )
    return key.sign(message)


def _check_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> None:
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(
                signature,
                message,
                padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
                ),
                hashes.SHA256(),
            )
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            raise _protocol_error(
                "the client's key type cannot sign an RA-TLS proof",
                "RATLS_CLIENT_PROOF_INVALID",
                field="client key",
                expected="EC, RSA or Ed25519",
                actual=type(public).__name__,
            )
    except InvalidSignature as exc:
        raise _protocol_error(
            "the client did not prove possession of its RA-TLS key on this connection",
            "RATLS_CLIENT_PROOF_INVALID",
            field="client proof signature",
            expected="a signature over this connection's tls-unique by the certified key",
            actual="invalid signature",
            hint="a replayed or relayed client certificate, or a client without the key",
        ) from exc


def _send_client_proof(sock: ssl.SSLSocket, creds: _Credentials, server_der: bytes) -> None:
    binding = _channel_binding(sock)
    signature = _sign(creds.key, _proof_message(server_der, creds.der, binding))
    frame = (
        CLIENT_AUTH_MAGIC
        + len(creds.der).to_bytes(4, "big")
        + creds.der
        + len(signature).to_bytes(2, "big")
        + signature
    )
    sock.sendall(frame)


def _read_client_proof(sock: ssl.SSLSocket, deadline: float) -> tuple[bytes, bytes]:
    magic = _recv_exact(sock, len(CLIENT_AUTH_MAGIC), deadline, "client attestation")
    if magic != CLIENT_AUTH_MAGIC:
        raise _protocol_error(
            "the client did not start with its RA-TLS attestation",
            "RATLS_CLIENT_AUTH_MISSING",
            field="client attestation frame",
            expected=CLIENT_AUTH_MAGIC.decode(),
            actual=magic[:32].hex(),
            hint="the client must use an RA-TLS client context with its own key and certificate",
        )
    cert_len = int.from_bytes(_recv_exact(sock, 4, deadline, "client certificate length"), "big")
    if not 0 < cert_len <= MAX_RATLS_CERT_BYTES:
        raise _protocol_error(
            "the client's certificate length is out of bounds",
            "RATLS_CLIENT_AUTH_MALFORMED",
            field="client certificate length",
            expected=f"1..{MAX_RATLS_CERT_BYTES}",
            actual=cert_len,
        )
    cert_der = _recv_exact(sock, cert_len, deadline, "client certificate")
    sig_len = int.from_bytes(_recv_exact(sock, 2, deadline, "client signature length"), "big")
    if not 0 < sig_len <= _MAX_SIGNATURE_BYTES:
        raise _protocol_error(
            "the client's signature length is out of bounds",
            "RATLS_CLIENT_AUTH_MALFORMED",
            field="client signature length",
            expected=f"1..{_MAX_SIGNATURE_BYTES}",
            actual=sig_len,
        )
    return cert_der, _recv_exact(sock, sig_len, deadline, "client signature")


def _establish(sock: RatlsSocket, settings: _Settings) -> None:
    """Handshake, then attest the peer (and, for mutual RA-TLS, the client) before any data."""
    previous_timeout = sock.gettimeout()
    deadline = time.monotonic() + settings.timeout
    sock.settimeout(settings.timeout)
    sock.do_handshake()
    if not settings.server:
        # Client: verify the server's certificate, then (mutual) prove ourselves.
        server_der = sock.getpeercert(binary_form=True)
        if not server_der:
            raise _protocol_error(
                "the server presented no certificate", "RATLS_NO_PEER_CERTIFICATE", field="peer"
            )
        _channel_binding(sock)  # refuses anything but TLS 1.3
        assert settings.verifier is not None
        sock.ratls_peer = settings.verifier.verify_certificate(server_der)
        if settings.credentials is not None:
            _send_client_proof(sock, settings.credentials, server_der)
            status = _recv_exact(sock, 1, deadline, "attestation verdict")
            if status != _STATUS_OK:
                raise _protocol_error(
                    "the server refused this client's attestation",
                    "RATLS_PEER_REFUSED",
                    field="server verdict",
                    expected="accepted",
                    actual="refused",
                    hint="the server's log names the reason",
                )
    elif settings.verifier is not None:
        # Server: nothing from the client is processed until its attestation checks out.
        assert settings.credentials is not None
        try:
            binding = _channel_binding(sock)
            cert_der, signature = _read_client_proof(sock, deadline)
            verified = settings.verifier.verify_certificate(cert_der)
            client_cert = load_certificate(cert_der)
            message = _proof_message(settings.credentials.der, cert_der, binding)
            _check_signature(client_cert, signature, message)
        except NacreError:
            with contextlib.suppress(OSError):
                sock.sendall(_STATUS_REFUSED)
            raise
        sock.sendall(_STATUS_OK)
        sock.ratls_peer = verified
    sock.settimeout(previous_timeout)


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for ``load_cert_chain``: an anonymous memfd where there is one."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("nacre-ratls-key", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="nacre-ratls-") as tmp:  # mode 0700
        path = Path(tmp) / "key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield str(path)


def _credentials(key: PrivateKey, cert: x509.Certificate) -> _Credentials:
    if spki_der(key) != spki_der(cert):
        raise UsageError(
            "the private key does not belong to the certificate",
            field="key",
            expected="the key certified by cert",
            actual="another key",
        )
    return _Credentials(key, cert, cert.public_bytes(Encoding.DER))


def _base_context(protocol: int, settings: _Settings) -> RatlsContext:
    ctx = RatlsContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    # The TLS layer proves key possession; the RA-TLS verifier (never skipped) checks the peer.
    ctx.verify_mode = ssl.CERT_NONE
    ctx.sslsocket_class = RatlsSocket
    ctx._ratls = settings
    return ctx


def _check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise UsageError(
            "the handshake timeout must be positive", field="handshake_timeout", actual=timeout
        )
    return float(timeout)


def server_context(
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    verify_client: Verifier | None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
) -> RatlsContext:
    """A server context presenting ``cert``; with ``verify_client``, clients must attest too.

    ``verify_client=None`` is an explicit choice (server-only attestation), not a default.
    """
    creds = _credentials(key, cert)
    settings = _Settings(True, verify_client, creds, _check_timeout(handshake_timeout))
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, settings)
    ctx.num_tickets = 0  # no resumption: every connection shows its certificate again
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + cert.public_bytes(
        Encoding.PEM
    )
    with _pem_file(pem) as path:
        ctx.load_cert_chain(path)
    return ctx


def client_context(
    verifier: Verifier,
    *,
    key: PrivateKey | None = None,
    cert: x509.Certificate | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
) -> RatlsContext:
    """A client context that attests the server with ``verifier``.

    With ``key`` and ``cert`` (an RA-TLS certificate of this client) the client also attests itself
    to servers that ask for it (mutual RA-TLS).
    """
    if (key is None) != (cert is None):
        raise UsageError(
            "pass both key and cert for mutual RA-TLS, or neither",
            field="key/cert",
            expected="both or neither",
            actual="key only" if cert is None else "cert only",
        )
    creds = _credentials(key, cert) if key is not None and cert is not None else None
    settings = _Settings(False, verifier, creds, _check_timeout(handshake_timeout))
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, settings)


def wrap_client(
    sock: socket.socket,
    verifier: Verifier,
    server_hostname: str | None = None,
    *,
    key: PrivateKey | None = None,
    cert: x509.Certificate | None = None,
) -> RatlsSocket:
    """Handshake on a connected socket and attest the server; ``server_hostname`` is SNI only."""
    ctx = client_context(verifier, key=key, cert=cert)
    wrapped = ctx.wrap_socket(sock, server_hostname=server_hostname)
    assert isinstance(wrapped, RatlsSocket)
    return wrapped


def wrap_server(
    sock: socket.socket,
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    verify_client: Verifier | None,
) -> RatlsSocket:
    """Handshake on an accepted socket as the server; attest the client if ``verify_client``."""
    ctx = server_context(key, cert, verify_client=verify_client)
    wrapped = ctx.wrap_socket(sock, server_side=True)
    assert isinstance(wrapped, RatlsSocket)
    return wrapped


def accept_verified(listener: socket.socket, ctx: RatlsContext) -> tuple[RatlsSocket, Any]:
    """Accept one connection and complete its RA-TLS handshake (and client attestation).

    On any failure the accepted connection is closed and the error raised; the listener stays open.
    The handshake runs in the calling thread, bounded by the context's handshake timeout: serve
    each accepted connection from a worker if slow clients must not hold up the accept loop.
    """
    conn, address = listener.accept()
    try:
        wrapped = ctx.wrap_socket(conn, server_side=True)
    except BaseException:
        conn.close()  # no-op once wrap_socket took it over (and closed it)
        raise
    assert isinstance(wrapped, RatlsSocket)
    return wrapped, address
