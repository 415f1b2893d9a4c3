"""The webhook over real TLS on 127.0.0.1, and certificate rotation without a restart.

The certificate files are laid out the way the kubelet mounts a Secret (``tls.crt`` ->
``..data/tls.crt``, ``..data`` -> a timestamped directory, swapped atomically on rotation).
After a rotation a *new* TLS connection must see the new certificate; files that do not load
must leave the old certificate in service and log one error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from nacre.cli import app as nacre_app
from nacre.errors import UsageError
from nacre.k8s.webhook import ReloadingCertificate, WebhookConfig, create_app

SERVICE_DNS = "nacre-webhook.nacre-system.svc"
FIXTURES = Path(__file__).parent / "fixtures" / "admission"


class Pair:
    """A self-signed certificate for the webhook Service and 127.0.0.1, and its key."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(SERVICE_DNS), x509.IPAddress(IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class SecretMount:
    """A directory laid out like a kubelet Secret volume, rotated the same way."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def publish(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.generation += 1
        data = self.root / f"..gen_{self.generation}"
        data.mkdir()
        (data / "tls.crt").write_bytes(cert_pem)
        (data / "tls.key").write_bytes(key_pem)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


class TlsServer:
    """The webhook app served by uvicorn over TLS on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, certificate: ReloadingCertificate) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

        def factory(_config: Any, _default: Any) -> ssl.SSLContext:
            return certificate.context

        config = uvicorn.Config(
            create_app(WebhookConfig()),
            ssl_context_factory=factory,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> TlsServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()

    def served(self, server_name: str | None = None) -> x509.Certificate:
        """The certificate a new TLS connection is given (no verification: we only look)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


@pytest.fixture
def mount(tmp_path: Path) -> SecretMount:
    return SecretMount(tmp_path / "webhook-tls")


@pytest.fixture
def serve() -> Iterator[Callable[[ReloadingCertificate], TlsServer]]:
    started: list[TlsServer] = []

    def start(certificate: ReloadingCertificate) -> TlsServer:
        server = TlsServer(certificate).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_rotation_reaches_new_connections(
    mount: SecretMount, serve: Callable[[ReloadingCertificate], TlsServer], tmp_path: Path
) -> None:
    a, b = Pair("cert-a"), Pair("cert-b")
    mount.publish(a.cert_pem, a.key_pem)
    certificate = ReloadingCertificate(mount.cert, mount.key, check_interval=0)
    server = serve(certificate)
    assert server.served() == a.cert
    assert server.served(SERVICE_DNS) == a.cert
    mount.publish(b.cert_pem, b.key_pem)
    assert server.served(SERVICE_DNS) == b.cert
    assert server.served() == b.cert  # without SNI too (the callback runs on every handshake)
    assert certificate.reloads == 1
    # A verified HTTPS request trusting only B: the whole webhook answers over the new cert.
    ca = tmp_path / "ca-b.pem"
    ca.write_bytes(b.cert_pem)
    review = json.loads((FIXTURES / "validate_missing_runtime_class.json").read_text())["review"]
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as http:
        answer = http.post(f"https://127.0.0.1:{server.port}/validate", json=review)
    assert answer.status_code == 200
    assert answer.json()["response"]["allowed"] is False


def test_bad_new_files_keep_the_old_certificate(
    mount: SecretMount,
    serve: Callable[[ReloadingCertificate], TlsServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, c = Pair("cert-a"), Pair("cert-b"), Pair("cert-c")
    mount.publish(a.cert_pem, a.key_pem)
    certificate = ReloadingCertificate(mount.cert, mount.key, check_interval=0)
    server = serve(certificate)
    caplog.set_level(logging.INFO, logger="nacre.tlsfiles")
    # Half a rotation: B's certificate with A's key (a mismatched pair).
    mount.publish(b.cert_pem, a.key_pem)
    assert server.served() == a.cert
    assert server.served() == a.cert
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "the same bad files are reported once"
    assert "still serving the previous one" in errors[0].getMessage()
    assert str(mount.cert) in errors[0].getMessage()
    # Not PEM at all.
    mount.publish(b"not a certificate", b"not a key")
    assert server.served() == a.cert
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    # Nothing secret in any log line.
    assert all(a.key_pem.decode() not in r.getMessage() for r in caplog.records)
    # Good files again: picked up.
    mount.publish(c.cert_pem, c.key_pem)
    assert server.served() == c.cert
    assert certificate.reloads == 1


def test_files_are_checked_at_most_every_interval(
    mount: SecretMount, serve: Callable[[ReloadingCertificate], TlsServer]
) -> None:
    a, b = Pair("cert-a"), Pair("cert-b")
    mount.publish(a.cert_pem, a.key_pem)
    now = [1000.0]
    certificate = ReloadingCertificate(
        mount.cert, mount.key, check_interval=10.0, clock=lambda: now[0]
    )
    server = serve(certificate)
    mount.publish(b.cert_pem, b.key_pem)
    now[0] += 9.0
    assert server.served() == a.cert
    now[0] += 1.0
    assert server.served() == b.cert


def test_first_load_must_succeed(mount: SecretMount, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as ei:
        ReloadingCertificate(tmp_path / "missing.crt", tmp_path / "missing.key")
    assert ei.value.field == "tls_cert/tls_key"
    a, b = Pair("cert-a"), Pair("cert-b")
    mount.publish(a.cert_pem, b.key_pem)
    with pytest.raises(UsageError):
        ReloadingCertificate(mount.cert, mount.key)


def test_tls_versions(
    mount: SecretMount, serve: Callable[[ReloadingCertificate], TlsServer]
) -> None:
    a = Pair("cert-a")
    mount.publish(a.cert_pem, a.key_pem)
    certificate = ReloadingCertificate(mount.cert, mount.key)
    assert certificate.context.minimum_version == ssl.TLSVersion.TLSv1_2
    server = serve(certificate)
    for highest, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (None, "TLSv1.3")):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=a.cert_pem.decode())
        if highest is not None:
            context.maximum_version = highest
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
        ):
            assert tls.version() == expected


def test_cli_refuses_unloadable_certificate_and_bad_settings(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope.crt"
    result = runner.invoke(
        nacre_app, ["k8s", "webhook", "--tls-cert", str(missing), "--tls-key", str(missing)]
    )
    assert result.exit_code == 2, result.output
    assert "tls_cert/tls_key" in result.output
    result = runner.invoke(
        nacre_app,
        [
            "k8s",
            "webhook",
            "--tls-cert",
            str(missing),
            "--tls-key",
            str(missing),
            "--epc-resource",
            "example.com/epc",
        ],
    )
    assert result.exit_code == 2
    assert "epc_resource" in result.output
