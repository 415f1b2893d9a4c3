"""``nacre k8s webhook-certs`` against the in-process fake API server (tests/k8s_fake_apiserver.py)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes.client import ApiClient
from typer.testing import CliRunner

from k8s_fake_apiserver import JSON_PATCH, FakeApiServer, running
from nacre.cli import app
from nacre.errors import NacreError, UsageError
from nacre.k8s.apiclient import KubernetesApiError, build_api_client
from nacre.k8s.webhookcerts import (
    CERT_VALIDITY,
    RENEW_BEFORE,
    WebhookCertsConfig,
    ensure_webhook_certs,
    ensure_with_retries,
    issue_tls,
)

NS = "nacre-system"
SECRET = "nacre-webhook-tls"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/nacre-webhook"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/nacre-webhook"
NAMES = {
    "nacre-webhook",
    "nacre-webhook.nacre-system",
    "nacre-webhook.nacre-system.svc",
    "nacre-webhook.nacre-system.svc.cluster.local",
}
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONFIG = WebhookCertsConfig()


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with running() as server:
        server.add_webhook_configuration(
            "mutating", "nacre-webhook", ["pod.nacre.dev", "ns.nacre.dev"]
        )
        server.add_webhook_configuration("validating", "nacre-webhook", ["untrusted.nacre.dev"])
        yield server


@pytest.fixture
def api(fake: FakeApiServer) -> Iterator[ApiClient]:
    with build_api_client(server=fake.url) as client:
        yield client


def secret_data(fake: FakeApiServer) -> dict[str, bytes]:
    data = fake.secrets[(NS, SECRET)]["data"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def bundles(fake: FakeApiServer) -> list[list[x509.Certificate]]:
    """The caBundle certificates of every webhook, mutating first."""
    out = []
    for kind in ("mutating", "validating"):
        for hook in fake.webhooks[(kind, "nacre-webhook")]["webhooks"]:
            pem = base64.b64decode(hook["clientConfig"]["caBundle"])
            out.append(x509.load_pem_x509_certificates(pem))
    return out


def writes(fake: FakeApiServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests if r.method != "GET"]


def test_first_run_creates_secret_and_patches_every_webhook(
    fake: FakeApiServer, api: ApiClient
) -> None:
    result = ensure_webhook_certs(api, CONFIG, now=T0)
    assert result.action == "created"
    assert result.patched == (
        "MutatingWebhookConfiguration nacre-webhook",
        "ValidatingWebhookConfiguration nacre-webhook",
    )
    assert writes(fake) == [f"POST {SECRETS}", f"PATCH {MUTATING}", f"PATCH {VALIDATING}"]
    secret = fake.secrets[(NS, SECRET)]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    ca = x509.load_pem_x509_certificate(secret_data(fake)["ca.crt"])
    assert bundles(fake) == [[ca], [ca], [ca]]
    for patch in fake.calls("PATCH"):
        assert patch.content_type == JSON_PATCH
        ops = patch.body
        assert [op["op"] for op in ops][:2] == ["test", "add"]
        assert ops[0]["path"] == "/webhooks/0/name"
    assert result.not_after == T0 + CERT_VALIDITY


def test_certificate_chains_to_ca_and_names_the_service(
    fake: FakeApiServer, api: ApiClient
) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    data = secret_data(fake)
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    cert.verify_directly_issued_by(ca)
    assert key.public_key() == cert.public_key()
    for c in (cert, ca):
        public = c.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
        assert c.not_valid_before_utc == T0 - timedelta(minutes=5)
        assert c.not_valid_after_utc == T0 + CERT_VALIDITY
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == NAMES
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def _handshake(tmp_path: Path, tls: dict[str, bytes], hostname: str) -> None:
    """A TLS handshake between a server holding tls.crt/tls.key and a client trusting ca.crt."""
    (tmp_path / "tls.crt").write_bytes(tls["tls.crt"])
    (tmp_path / "tls.key").write_bytes(tls["tls.key"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=tls["ca.crt"].decode())
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as c:
            assert c.recv(2) == b"ok"
    finally:
        a.close()
        thread.join(timeout=5)


def test_tls_handshake_with_the_issued_material(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    tls = issue_tls(CONFIG.dns_names, now=now, validity=CERT_VALIDITY)
    material = {"tls.crt": tls.cert_pem, "tls.key": tls.key_pem, "ca.crt": tls.ca_pem}
    for name in sorted(NAMES):
        _handshake(tmp_path, material, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, material, "nacre.nacre-system.svc")
    assert "key_pem" not in repr(tls)


def test_second_run_reuses(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    before = secret_data(fake)
    n_writes = len(writes(fake))
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=100))
    assert result.action == "reused"
    assert result.patched == ()
    assert secret_data(fake) == before
    assert len(writes(fake)) == n_writes  # no new key, no PUT, no PATCH


def test_reuse_still_repairs_a_stale_ca_bundle(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    ca = x509.load_pem_x509_certificate(secret_data(fake)["ca.crt"])
    other = issue_tls(("x",), now=T0, validity=CERT_VALIDITY).ca_pem
    hook = fake.webhooks[("mutating", "nacre-webhook")]["webhooks"][1]
    hook["clientConfig"]["caBundle"] = base64.b64encode(other).decode()
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=1))
    assert result.action == "reused"
    assert result.patched == ("MutatingWebhookConfiguration nacre-webhook",)
    (patch,) = fake.calls("PATCH", MUTATING)[1:]
    assert [op["path"] for op in patch.body] == [
        "/webhooks/1/name",
        "/webhooks/1/clientConfig/caBundle",
    ]
    assert bundles(fake) == [[ca], [ca], [ca]]


def test_near_expiry_renews_and_keeps_the_old_ca_during_rotation(
    fake: FakeApiServer, api: ApiClient
) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    old = secret_data(fake)
    old_ca = x509.load_pem_x509_certificate(old["ca.crt"])
    later = T0 + CERT_VALIDITY - RENEW_BEFORE + timedelta(hours=1)
    result = ensure_webhook_certs(api, CONFIG, now=later)
    assert result.action == "renewed"
    assert "renewal threshold" in result.reason
    new = secret_data(fake)
    assert new["tls.key"] != old["tls.key"]
    assert new["ca.crt"] != old["ca.crt"]
    new_ca = x509.load_pem_x509_certificate(new["ca.crt"])
    assert bundles(fake) == [[new_ca, old_ca]] * 3
    put = fake.calls("PUT")
    assert [r.path for r in put] == [f"{SECRETS}/{SECRET}"]
    assert put[0].body["metadata"]["resourceVersion"]  # optimistic concurrency
    # The next run keeps both: the old CA is still valid and the new one is present.
    assert ensure_webhook_certs(api, CONFIG, now=later + timedelta(days=1)).patched == ()
    # Once the old CA expired, the bundle is the new CA alone.
    after = T0 + CERT_VALIDITY + timedelta(days=1)
    assert ensure_webhook_certs(api, CONFIG, now=after).action == "reused"
    assert bundles(fake) == [[new_ca]] * 3


def test_expired_secret_renews_without_the_expired_ca(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    result = ensure_webhook_certs(api, CONFIG, now=T0 + CERT_VALIDITY + timedelta(days=1))
    assert result.action == "renewed"
    new_ca = x509.load_pem_x509_certificate(secret_data(fake)["ca.crt"])
    assert bundles(fake) == [[new_ca]] * 3


def test_wrong_san_renews(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, WebhookCertsConfig(cluster_domain="corp.example"), now=T0)
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=1))
    assert result.action == "renewed"
    assert "the service needs" in result.reason
    cert = x509.load_pem_x509_certificate(secret_data(fake)["tls.crt"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == NAMES


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d.update({"tls.key": d["ca.crt"]}), "unusable"),
        (lambda d: d.pop("ca.crt"), "ca.crt is missing"),
        (lambda d: d.update({"tls.crt": "not base64!"}), "not base64"),
    ],
)
def test_damaged_secret_renews(
    fake: FakeApiServer, api: ApiClient, damage: Any, reason: str
) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    damage(fake.secrets[(NS, SECRET)]["data"])
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=1))
    assert result.action == "renewed"
    assert reason in result.reason


def test_foreign_key_renews(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    other = issue_tls(CONFIG.dns_names, now=T0, validity=CERT_VALIDITY)
    fake.secrets[(NS, SECRET)]["data"]["tls.key"] = base64.b64encode(other.key_pem).decode()
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=1))
    assert result.action == "renewed"
    assert result.reason == "tls.key does not belong to tls.crt"


def test_cert_not_from_ca_renews(fake: FakeApiServer, api: ApiClient) -> None:
    ensure_webhook_certs(api, CONFIG, now=T0)
    other = issue_tls(CONFIG.dns_names, now=T0, validity=CERT_VALIDITY)
    fake.secrets[(NS, SECRET)]["data"]["ca.crt"] = base64.b64encode(other.ca_pem).decode()
    result = ensure_webhook_certs(api, CONFIG, now=T0 + timedelta(days=1))
    assert result.action == "renewed"
    assert result.reason == "tls.crt is not issued by ca.crt"


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("mutating", "MutatingWebhookConfiguration"),
        ("validating", "ValidatingWebhookConfiguration"),
    ],
)
def test_missing_webhook_configuration_is_named(
    fake: FakeApiServer, api: ApiClient, kind: str, label: str
) -> None:
    del fake.webhooks[(kind, "nacre-webhook")]
    with pytest.raises(KubernetesApiError) as info:
        ensure_webhook_certs(api, CONFIG, now=T0)
    assert f"{label} 'nacre-webhook' does not exist" in info.value.message
    assert info.value.field == f"{label}/nacre-webhook"
    assert writes(fake) == []  # nothing written before both configurations are known


def test_secret_of_another_type_is_refused(fake: FakeApiServer, api: ApiClient) -> None:
    fake.secrets[(NS, SECRET)] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "7"},
        "type": "Opaque",
        "data": {},
    }
    with pytest.raises(UsageError, match="a Secret's type cannot be changed") as info:
        ensure_webhook_certs(api, CONFIG, now=T0)
    assert info.value.expected == "kubernetes.io/tls"
    assert writes(fake) == []


def test_forbidden_secret_create_names_verb_and_namespace(
    fake: FakeApiServer, api: ApiClient
) -> None:
    fake.forbid("POST", SECRETS)
    with pytest.raises(KubernetesApiError) as info:
        ensure_webhook_certs(api, CONFIG, now=T0)
    assert info.value.code == "K8S_FORBIDDEN"
    assert "RBAC verb 'create' on 'secrets' is missing" in info.value.message
    assert info.value.hint is not None
    assert f"a Role in namespace {NS}" in info.value.hint


def test_forbidden_webhook_patch_names_the_group(fake: FakeApiServer, api: ApiClient) -> None:
    fake.forbid("PATCH", VALIDATING)
    with pytest.raises(KubernetesApiError) as info:
        ensure_webhook_certs(api, CONFIG, now=T0)
    assert "RBAC verb 'patch' on 'validatingwebhookconfigurations'" in info.value.message
    assert info.value.hint is not None
    assert "admissionregistration.k8s.io" in info.value.hint


def test_conflicts_are_retried_and_bounded(fake: FakeApiServer, api: ApiClient) -> None:
    slept: list[float] = []
    fake.fail_next(409, 503)
    result = ensure_with_retries(api, CONFIG, sleep=slept.append, clock=lambda: T0)
    assert result.action == "created"
    assert slept == [1.0, 2.0]
    fake.fail_next(*[500] * 3)
    with pytest.raises(KubernetesApiError, match="HTTP 500"):
        ensure_with_retries(api, CONFIG, attempts=3, sleep=slept.append, clock=lambda: T0)
    assert slept == [1.0, 2.0, 1.0, 2.0]


def test_not_found_is_not_retried(fake: FakeApiServer, api: ApiClient) -> None:
    del fake.webhooks[("mutating", "nacre-webhook")]
    slept: list[float] = []
    with pytest.raises(KubernetesApiError):
        ensure_with_retries(api, CONFIG, sleep=slept.append)
    assert slept == []


def test_renewal_threshold_must_be_below_validity() -> None:
    with pytest.raises(UsageError, match="renewal threshold"):
        WebhookCertsConfig(validity=timedelta(days=10), renew_before=timedelta(days=10))


def test_cli(fake: FakeApiServer) -> None:
    runner = CliRunner()
    env = {"NACRE_K8S_API_SERVER": fake.url}
    result = runner.invoke(app, ["k8s", "webhook-certs", "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["action"] == "created"
    assert out["error"] is None
    assert "-----BEGIN" not in result.output  # no key (or certificate) material printed
    result = runner.invoke(app, ["k8s", "webhook-certs"], env=env)
    assert result.exit_code == 0, result.output
    assert "reused" in result.output
    result = runner.invoke(
        app, ["k8s", "webhook-certs", "--webhook-config", "missing", "--json"], env=env
    )
    assert result.exit_code == 1
    err = json.loads(result.output.strip().splitlines()[-1])["error"]
    assert err["code"] == "K8S_NOT_FOUND"
    assert "MutatingWebhookConfiguration 'missing'" in err["message"]
    no_cluster = {"KUBERNETES_SERVICE_HOST": "", "KUBECONFIG": "", "NACRE_K8S_API_SERVER": ""}
    result = runner.invoke(app, ["k8s", "webhook-certs"], env=no_cluster)
    assert result.exit_code == 2
    assert "no Kubernetes API server configured" in result.output


@pytest.mark.parametrize("webhooks", [[], [{"name": "x.nacre.dev"}], None])
def test_configuration_without_usable_webhooks_is_refused_before_writing(
    fake: FakeApiServer, api: ApiClient, webhooks: Any
) -> None:
    fake.webhooks[("validating", "nacre-webhook")]["webhooks"] = webhooks
    with pytest.raises(NacreError) as info:
        ensure_webhook_certs(api, CONFIG, now=T0)
    assert info.value.code == "K8S_WEBHOOK_CONFIG_INVALID"
    assert "ValidatingWebhookConfiguration 'nacre-webhook'" in info.value.message
    assert writes(fake) == []


def test_service_certificate_alone_for_the_kbs(fake: FakeApiServer, api: ApiClient) -> None:
    """An empty webhook configuration name issues the KBS's serving certificate: no webhook
    configuration is read or patched, the Secret names the KBS Service."""
    config = WebhookCertsConfig(service="nacre", secret="nacre-kbs-tls", webhook_config="")
    result = ensure_webhook_certs(api, config, now=T0)
    assert result.action == "created"
    assert result.patched == ()
    assert writes(fake) == [f"POST {SECRETS}"]
    assert not any("webhookconfigurations" in r.path for r in fake.requests)
    data = {k: base64.b64decode(v) for k, v in fake.secrets[(NS, "nacre-kbs-tls")]["data"].items()}
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nacre.nacre-system.svc" in names.get_values_for_type(x509.DNSName)
    again = ensure_webhook_certs(api, config, now=T0 + timedelta(days=1))
    assert again.action == "reused"


def test_cli_issues_the_kbs_certificate_as_the_job_does(fake: FakeApiServer) -> None:
    """The Job's second container: ``--service=nacre --secret=nacre-kbs-tls --webhook-config=``."""
    args = ["k8s", "webhook-certs", "--service=nacre", "--secret=nacre-kbs-tls"]
    result = CliRunner().invoke(
        app, [*args, "--webhook-config=", "--json"], env={"NACRE_K8S_API_SERVER": fake.url}
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["action"] == "created"
    assert (NS, "nacre-kbs-tls") in fake.secrets
    assert not any("webhookconfigurations" in r.path for r in fake.requests)
