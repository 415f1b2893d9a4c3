"""``nacre serve --tls-cert/--tls-key`` and the in-cluster path to it: a real server over HTTPS,
the certificate issued as ``nacre k8s webhook-certs --service nacre`` issues it, and
``nacre k8s init-secrets`` verifying it with the CA the webhook injects (``NACRE_KBS_CA_PEM``).
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nacre.errors import UsageError
from nacre.k8s.webhook import WebhookConfig
from nacre.k8s.webhook.kbsca import ENV_KBS_CA_PEM, KbsCaFile
from nacre.k8s.webhook.mutate import mutate_pod
from serve_process import ServeProcess, start_serve

SECRET = b"model key over TLS"
#: The in-cluster name of the KBS (its certificate's DNS name).
SERVICE_NAME = "nacre.nacre-system.svc"


def _issue(tmp: Path, tag: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (cert, key, CA) written under ``tmp``."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test KBS CA {tag}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName(SERVICE_NAME)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / f"{tag}.crt", tmp / f"{tag}.key", tmp / f"{tag}-ca.crt")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path, Path]]:
    tmp = tmp_path_factory.mktemp("serve-tls")
    tls = _issue(tmp, "kbs")
    server = start_serve(tmp / "data", tmp / "sim", tmp / "serve.log", tls=tls)
    try:
        verify = ssl.create_default_context(cafile=str(tls[2]))
        with httpx.Client(base_url=server.url, verify=verify, timeout=10) as http:
            r = http.put(
                "/admin/v1/resources/tls/model/key",
                json={"data": base64.b64encode(SECRET).decode()},
                headers=server.admin_headers(),
            )
            assert r.status_code == 200, r.text
        yield server, tls[2], tmp / "sim"
    finally:
        server.stop()


def _init_secrets(
    server: ServeProcess, sim_dir: Path, out: Path, ca_pem: str | None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NACRE_TEE": "sim", "NACRE_SIM_DIR": str(sim_dir)}
    env.pop(ENV_KBS_CA_PEM, None)
    if ca_pem is not None:
        env[ENV_KBS_CA_PEM] = ca_pem
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from nacre.cli import main; main()",
            "k8s",
            "init-secrets",
            "--kbs-url",
            server.url,
            "--out-dir",
            str(out),
            "--secret",
            f"tls/model/key={out}/model.key",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_serve_prints_https_and_refuses_plain_http(served: tuple[ServeProcess, Path, Path]) -> None:
    server, ca, _ = served
    assert server.url.startswith("https://127.0.0.1:")
    plain = server.url.replace("https://", "http://")
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.TransportError):
        http.get(f"{plain}/healthz")
    with httpx.Client(timeout=5, verify=ssl.create_default_context(cafile=str(ca))) as http:
        assert http.get(f"{server.url}/healthz").status_code == 200


def test_init_secrets_verifies_the_kbs_with_the_injected_ca(
    served: tuple[ServeProcess, Path, Path], tmp_path: Path
) -> None:
    server, ca, sim_dir = served
    out = tmp_path / "secrets"
    out.mkdir()
    done = _init_secrets(server, sim_dir, out, ca.read_text())
    assert done.returncode == 0, done.stderr
    assert (out / "model.key").read_bytes() == SECRET
    assert (out / "model.key").stat().st_mode & 0o777 == 0o400


def test_init_secrets_refuses_a_kbs_it_cannot_verify(
    served: tuple[ServeProcess, Path, Path], tmp_path: Path
) -> None:
    server, _, sim_dir = served
    other_ca = _issue(tmp_path, "other")[2].read_text()
    for ca_pem in (None, other_ca):
        out = tmp_path / f"secrets-{ca_pem is None}"
        out.mkdir()
        done = _init_secrets(server, sim_dir, out, ca_pem)
        assert done.returncode == 1, done.stderr
        assert "certificate" in done.stderr.lower() or "tls" in done.stderr.lower()
        assert not (out / "model.key").exists()


def test_serve_needs_both_tls_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nacre.cli import main; main()",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-cert",
            str(tmp_path / "x.crt"),
        ],
        env={**os.environ, "NACRE_SIM_DIR": str(tmp_path / "sim")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--tls-cert/--tls-key" in done.stderr


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "app",
        "labels": {"nacre.dev/confidential": "true"},
        "annotations": {
            "nacre.dev/tee": "tdx",
            "nacre.dev/secrets": "tls/model/key=/run/nacre/secrets/model.key",
        },
    },
    "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
}


def _init_env(config: WebhookConfig) -> dict[str, str]:
    patch, violations = mutate_pod(POD, config)
    assert not violations
    init = next(op["value"] for op in patch if op["path"].startswith("/spec/initContainers"))
    if isinstance(init, list):
        init = init[0]
    return {e["name"]: e["value"] for e in init["env"]}


def test_webhook_injects_the_kbs_ca_and_follows_its_renewal(tmp_path: Path) -> None:
    first = _issue(tmp_path, "a")[2]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(first.read_bytes())
    config = WebhookConfig(kbs_ca=KbsCaFile(ca_file))
    env = _init_env(config)
    assert env[ENV_KBS_CA_PEM] == first.read_text()
    # The Secret is renewed (new CA): the next pod gets the new certificates.
    renewed = _issue(tmp_path, "b")[2]
    ca_file.write_bytes(renewed.read_bytes())
    os.utime(ca_file, ns=(1, 1))
    assert _init_env(config)[ENV_KBS_CA_PEM] == renewed.read_text()
    # A damaged file keeps the last good certificates.
    ca_file.write_text("not a certificate")
    os.utime(ca_file, ns=(2, 2))
    assert _init_env(config)[ENV_KBS_CA_PEM] == renewed.read_text()
    # Without a CA file no variable is added.
    assert ENV_KBS_CA_PEM not in _init_env(WebhookConfig())


def test_kbs_ca_file_must_load_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("nope")
    for path in (bad, tmp_path / "missing.crt"):
        with pytest.raises(UsageError) as info:
            KbsCaFile(path)
        assert info.value.field == "--kbs-ca-file"


def _admin(server: ServeProcess, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from nacre.cli import main; main()",
            "secret",
            "list",
            "--json",
            "--server",
            server.url,
            "--admin-key",
            str(server.data_dir / "admin.key"),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admin_cli_over_a_port_forward(served: tuple[ServeProcess, Path, Path]) -> None:
    """The docs' path: kubectl port-forward to 127.0.0.1, the KBS's CA, its service name."""
    server, ca, _ = served
    ok = _admin(server, {"NACRE_CA_BUNDLE": str(ca), "NACRE_TLS_SERVER_NAME": SERVICE_NAME})
    assert ok.returncode == 0, ok.stderr
    assert "tls/model/key" in ok.stdout
    # Without the CA, or verifying as another name, the CLI refuses to talk to it.
    for env in ({}, {"NACRE_CA_BUNDLE": str(ca), "NACRE_TLS_SERVER_NAME": "other.example"}):
        refused = _admin(server, env)
        assert refused.returncode == 2, refused.stdout
        assert "UNREACHABLE" in refused.stdout
