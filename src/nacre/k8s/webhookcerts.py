"""``nacre k8s webhook-certs``: the TLS of the admission webhook, issued and kept current by a Job.

The API server calls the webhook over HTTPS at ``<service>.<namespace>.svc`` and checks the
certificate against the ``caBundle`` of each webhook in the Mutating- and
ValidatingWebhookConfiguration. This job:

1. reads both webhook configurations (``admissionregistration.k8s.io/v1``); a missing one is an
   error that names it, and nothing is written;
2. reads the Secret (``kubernetes.io/tls``: ``tls.crt``, ``tls.key``, ``ca.crt``) and keeps its
   certificate when it chains to ``ca.crt``, matches ``tls.key``, names exactly the service's DNS
   names and stays valid for more than :data:`RENEW_BEFORE`; otherwise
3. issues a new CA (ECDSA P-256) and a serving certificate signed by it, and creates the Secret
   (POST) or replaces it (PUT with the read ``resourceVersion``, so a concurrent writer makes us
   fail with 409 instead of silently overwriting). The CA's private key is never stored: the CA
   signs exactly one certificate, and nobody can mint another one for the webhook's names;
4. makes every webhook's ``caBundle`` trust the Secret's CA, with one RFC 6902 JSON Patch per
   configuration (``test`` the webhook's name at its index, then ``add`` its ``caBundle``), sent
   only when a bundle differs. After a renewal the bundle also keeps the previous CA while it is
   still valid, so webhook pods still serving the old certificate (until the kubelet refreshes the
   mounted Secret) are trusted during the switch.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client import AdmissionregistrationV1Api, ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.client.models import V1ObjectMeta, V1Secret
from urllib3.exceptions import HTTPError

from nacre.errors import NacreError, UsageError
from nacre.k8s.apiclient import (
    API_TIMEOUT_SECONDS,
    ApiTarget,
    KubernetesApiError,
    api_error,
    read_json,
)

__all__ = [
    "CERT_VALIDITY",
    "CLOCK_SKEW",
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SECRET",
    "DEFAULT_SERVICE",
    "DEFAULT_WEBHOOK_CONFIG",
    "JSON_PATCH_CONTENT_TYPE",
    "RENEW_BEFORE",
    "RETRY_ATTEMPTS",
    "SECRET_TYPE_TLS",
    "TlsMaterial",
    "WebhookCertsConfig",
    "WebhookCertsResult",
    "assess_secret",
    "ensure_webhook_certs",
    "ensure_with_retries",
    "issue_tls",
]

DEFAULT_NAMESPACE: Final = "nacre-system"
DEFAULT_SERVICE: Final = "nacre-webhook"
DEFAULT_SECRET: Final = "nacre-webhook-tls"  # noqa: S105 (a Secret object's name)
DEFAULT_WEBHOOK_CONFIG: Final = "nacre-webhook"
DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"
SECRET_TYPE_TLS: Final = "kubernetes.io/tls"  # noqa: S105 (a Secret type)

#: Lifetime of the CA and the serving certificate it signs (the CA signs only this one).
CERT_VALIDITY: Final = timedelta(days=365)
#: A certificate with less than this left is renewed (the Job runs at install and on a schedule).
RENEW_BEFORE: Final = timedelta(days=30)
#: notBefore is backdated by this much, for API servers whose clock runs slightly behind.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: Most CA certificates a caBundle keeps (the current CA and the previous one during rotation).
MAX_BUNDLE_CAS: Final = 2
JSON_PATCH_CONTENT_TYPE: Final = "application/json-patch+json"

_ADMISSION_GROUP: Final = "admissionregistration.k8s.io"
_KINDS: Final = (
    ("MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
    ("ValidatingWebhookConfiguration", "validatingwebhookconfigurations"),
)
_SECRET_KEYS: Final = ("tls.crt", "tls.key", "ca.crt")
_PEM: Final = serialization.Encoding.PEM

_log = logging.getLogger("nacre.k8s.webhookcerts")


@dataclass(frozen=True, slots=True)
class WebhookCertsConfig:
    namespace: str = DEFAULT_NAMESPACE
    service: str = DEFAULT_SERVICE
    secret: str = DEFAULT_SECRET
    webhook_config: str = DEFAULT_WEBHOOK_CONFIG
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    validity: timedelta = CERT_VALIDITY
    renew_before: timedelta = RENEW_BEFORE

    def __post_init__(self) -> None:
        if self.renew_before >= self.validity:
            raise UsageError(
                "the renewal threshold must be shorter than the certificate's validity",
                field="renew_before",
                expected=f"< {self.validity}",
                actual=str(self.renew_before),
            )

    @property
    def dns_names(self) -> tuple[str, ...]:
        """Every name the webhook is reached by; the first (``<service>.<namespace>.svc``, the
        name the API server dials) is also the certificate's common name."""
        svc = f"{self.service}.{self.namespace}.svc"
        return (
            svc,
            f"{svc}.{self.cluster_domain}",
            f"{self.service}.{self.namespace}",
            self.service,
        )


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes of the three Secret entries. ``key_pem`` is secret: never logged or printed."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


Action = Literal["created", "renewed", "reused"]


@dataclass(frozen=True, slots=True)
class WebhookCertsResult:
    action: Action
    reason: str
    not_after: datetime
    #: "MutatingWebhookConfiguration nacre-webhook" etc. whose caBundle was patched.
    patched: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------
# Certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_tls(dns_names: tuple[str, ...], *, now: datetime, validity: timedelta) -> TlsMaterial:
    """A fresh CA and a serving certificate for ``dns_names`` (the first is the common name).

    The CA's private key is discarded once the serving certificate is signed.
    """
    if not dns_names:
        raise UsageError(
            "a serving certificate needs at least one DNS name",
            field="dns_names",
            expected="one or more names",
            actual="none",
        )
    not_before = now - CLOCK_SKEW
    not_after = now + validity
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"nacre webhook CA {now.strftime('%Y%m%dT%H%M%SZ')}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TlsMaterial(ca.public_bytes(_PEM), cert.public_bytes(_PEM), key_pem)


def _secret_bytes(data: dict[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"{key} is not base64") from None


def assess_secret(
    secret: dict[str, Any], config: WebhookCertsConfig, *, now: datetime
) -> tuple[TlsMaterial | None, str]:
    """The Secret's material if it can be kept, else None; and the reason either way."""
    if secret.get("type") != SECRET_TYPE_TLS:
        return None, f"the Secret has type {secret.get('type')!r}, not {SECRET_TYPE_TLS}"
    data = secret.get("data")
    if not isinstance(data, dict):
        return None, "the Secret has no data"
    try:
        cert_pem, key_pem, ca_pem = (_secret_bytes(data, k) for k in _SECRET_KEYS)
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return None, f"the Secret's TLS entries are unusable: {exc}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return None, "tls.crt is not issued by ca.crt"
    if key.public_key() != cert.public_key():
        return None, "tls.key does not belong to tls.crt"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = set()
    if names != set(config.dns_names):
        return None, (
            f"tls.crt names {sorted(names)}, the service needs {sorted(config.dns_names)}"
        )
    not_after = min(cert.not_valid_after_utc, ca.not_valid_after_utc)
    if cert.not_valid_before_utc > now:
        return None, f"tls.crt is not valid before {cert.not_valid_before_utc.isoformat()}"
    if not_after - now <= config.renew_before:
        return None, (
            f"tls.crt expires {not_after.isoformat()}, within the renewal threshold "
            f"{config.renew_before.days} days"
        )
    return TlsMaterial(ca_pem, cert_pem, key_pem), f"valid until {not_after.isoformat()}"


# ---------------------------------------------------------------------------------------------------
# caBundle


def _bundle_certs(b64: object) -> list[x509.Certificate] | None:
    if not isinstance(b64, str) or not b64:
        return None
    try:
        return x509.load_pem_x509_certificates(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error):
        return None


def _desired_bundle(
    current: object, ca_pem: bytes, previous: Iterable[bytes], now: datetime
) -> str:
    """The caBundle a webhook should carry: ``current`` if it already trusts the CA correctly."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    certs = _bundle_certs(current)
    if (
        certs is not None
        and ca in certs
        and len(certs) <= MAX_BUNDLE_CAS
        and all(c.not_valid_after_utc > now for c in certs)
        and isinstance(current, str)
    ):
        return current
    pems = [ca_pem]
    for pem in previous:
        try:
            old = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        if old != ca and old.not_valid_after_utc > now and len(pems) < MAX_BUNDLE_CAS:
            pems.append(pem)
    return base64.b64encode(b"".join(pems)).decode("ascii")


# ---------------------------------------------------------------------------------------------------
# The API


class _Api:
    """The five requests this job makes, as plain JSON, with errors in nacre's words."""

    def __init__(self, api: ApiClient, config: WebhookCertsConfig) -> None:
        self._core = CoreV1Api(api)
        self._admission = AdmissionregistrationV1Api(api)
        self._config = config

    def _secret_target(self, verb: str) -> ApiTarget:
        c = self._config
        return ApiTarget(verb=verb, resource="secrets", name=c.secret, namespace=c.namespace)

    def _webhook_target(self, verb: str, resource: str) -> ApiTarget:
        name = self._config.webhook_config
        return ApiTarget(verb=verb, resource=resource, name=name, api_group=_ADMISSION_GROUP)

    def read_secret(self) -> dict[str, Any] | None:
        target = self._secret_target("get")
        try:
            response = self._core.read_namespaced_secret(
                self._config.secret,
                self._config.namespace,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(exc, target) from exc
        except (HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        return read_json(response, target)

    def write_secret(self, tls: TlsMaterial, existing: dict[str, Any] | None) -> None:
        c = self._config
        meta = existing.get("metadata", {}) if existing else {}
        data: dict[str, bytes | str] = {
            "tls.crt": base64.b64encode(tls.cert_pem).decode("ascii"),
            "tls.key": base64.b64encode(tls.key_pem).decode("ascii"),
            "ca.crt": base64.b64encode(tls.ca_pem).decode("ascii"),
        }
        labels = dict(meta.get("labels") or {})
        labels.setdefault("app.kubernetes.io/part-of", "nacre")
        labels.setdefault("app.kubernetes.io/component", "webhook")
        body = V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=V1ObjectMeta(
                name=c.secret,
                namespace=c.namespace,
                labels=labels,
                annotations=meta.get("annotations") or None,
                resource_version=meta.get("resourceVersion"),
            ),
            type=SECRET_TYPE_TLS,
            data=data,
        )
        target = self._secret_target("update" if existing else "create")
        try:
            if existing is None:
                response = self._core.create_namespaced_secret(
                    c.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=API_TIMEOUT_SECONDS,
                )
            else:
                response = self._core.replace_namespaced_secret(
                    c.secret,
                    c.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=API_TIMEOUT_SECONDS,
                )
        except (ApiException, HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        read_json(response, target)

    def read_webhook_config(self, kind: str, resource: str) -> dict[str, Any]:
        name = self._config.webhook_config
        target = self._webhook_target("get", resource)
        read = (
            self._admission.read_mutating_webhook_configuration
            if kind.startswith("Mutating")
            else self._admission.read_validating_webhook_configuration
        )
        try:
            response = read(name, _preload_content=False, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status == 404:
                raise KubernetesApiError(
                    f"{kind} {name!r} does not exist: install the webhook manifests before "
                    "running webhook-certs",
                    status=404,
                    code="K8S_NOT_FOUND",
                    field=f"{kind}/{name}",
                    expected=f"an existing {kind} named {name}",
                    actual="not found",
                    hint="apply the nacre webhook manifests (or pass --webhook-config NAME)",
                ) from exc
            raise api_error(exc, target) from exc
        except (HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        return read_json(response, target)

    def patch_webhook_config(self, kind: str, resource: str, ops: list[dict[str, Any]]) -> None:
        name = self._config.webhook_config
        target = self._webhook_target("patch", resource)
        patch = (
            self._admission.patch_mutating_webhook_configuration
            if kind.startswith("Mutating")
            else self._admission.patch_validating_webhook_configuration
        )
        try:
            response = patch(
                name,
                ops,
                _content_type=JSON_PATCH_CONTENT_TYPE,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except (ApiException, HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        read_json(response, target)


def _webhooks(obj: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The ``webhooks`` of a configuration, each with a ``clientConfig`` (raise otherwise)."""
    webhooks = obj.get("webhooks")
    name = obj.get("metadata", {}).get("name")
    if not isinstance(webhooks, list) or not webhooks:
        raise NacreError(
            f"{kind} {name!r} has no webhooks whose caBundle could be set",
            code="K8S_WEBHOOK_CONFIG_INVALID",
            field=f"{kind}/{name}.webhooks",
            expected="at least one webhook",
            actual="none",
            hint="re-apply the nacre webhook manifests",
        )
    for i, hook in enumerate(webhooks):
        if not isinstance(hook, dict) or not isinstance(hook.get("clientConfig"), dict):
            raise NacreError(
                f"{kind} {name!r} webhook #{i} has no clientConfig",
                code="K8S_WEBHOOK_CONFIG_INVALID",
                field=f"{kind}/{name}.webhooks[{i}].clientConfig",
                expected="an object",
                actual=type(hook.get("clientConfig") if isinstance(hook, dict) else hook).__name__,
            )
    return webhooks


def _bundle_ops(
    obj: dict[str, Any], kind: str, ca_pem: bytes, previous: tuple[bytes, ...], now: datetime
) -> list[dict[str, Any]]:
    """JSON Patch ops setting every webhook's caBundle that differs from what it should be."""
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(_webhooks(obj, kind)):
        current = hook["clientConfig"].get("caBundle")
        wanted = _desired_bundle(current, ca_pem, previous, now)
        if wanted != current:
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")})
            ops.append(
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted}
            )
    return ops


def ensure_webhook_certs(
    api: ApiClient, config: WebhookCertsConfig, *, now: datetime | None = None
) -> WebhookCertsResult:
    """Steps 1-4 of the module docstring; raises :class:`KubernetesApiError` / :class:`NacreError`."""
    at = now if now is not None else datetime.now(UTC)
    client = _Api(api, config)
    # 1. Both webhook configurations must exist before anything is written. An empty name
    #    issues a serving certificate alone (the KBS's: its clients get ca.crt another way).
    configs = (
        [(kind, res, client.read_webhook_config(kind, res)) for kind, res in _KINDS]
        if config.webhook_config
        else []
    )
    for kind, _, obj in configs:
        _webhooks(obj, kind)
    # 2. Keep the Secret's certificate if it is still good.
    secret = client.read_secret()
    previous: tuple[bytes, ...] = ()
    action: Action
    tls: TlsMaterial | None
    if secret is None:
        tls, action, reason = None, "created", "no Secret yet"
    else:
        tls, reason = assess_secret(secret, config, now=at)
        action = "reused" if tls is not None else "renewed"
        data = secret.get("data")
        if tls is None and isinstance(data, dict):
            try:
                previous = (_secret_bytes(data, "ca.crt"),)
            except ValueError:
                previous = ()
    # 3. Otherwise issue and store new material.
    if tls is None:
        if secret is not None and secret.get("type") != SECRET_TYPE_TLS:
            raise UsageError(
                f"Secret {config.namespace}/{config.secret} exists with type "
                f"{secret.get('type')!r}; a Secret's type cannot be changed",
                field=f"Secret {config.secret}.type",
                expected=SECRET_TYPE_TLS,
                actual=str(secret.get("type")),
                hint=f"delete it (kubectl -n {config.namespace} delete secret {config.secret}) "
                "and run webhook-certs again",
            )
        tls = issue_tls(config.dns_names, now=at, validity=config.validity)
        client.write_secret(tls, secret)
    _log.info("Secret %s/%s: %s (%s)", config.namespace, config.secret, action, reason)
    # 4. Every webhook's caBundle trusts the Secret's CA.
    patched: list[str] = []
    for kind, resource, obj in configs:
        ops = _bundle_ops(obj, kind, tls.ca_pem, previous, at)
        if ops:
            client.patch_webhook_config(kind, resource, ops)
            patched.append(f"{kind} {config.webhook_config}")
            _log.info(
                "%s %s: caBundle set on %d webhook(s)", kind, config.webhook_config, len(ops) // 2
            )
    return WebhookCertsResult(
        action=action,
        reason=reason,
        not_after=tls.not_after,
        patched=tuple(patched),
    )


#: Attempts of the whole job when the API server answers with a retryable error (409 from a
#: concurrent writer, 429, 5xx, unreachable), with exponential backoff from RETRY_INITIAL_SECONDS.
RETRY_ATTEMPTS: Final = 5
RETRY_INITIAL_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0


def ensure_with_retries(
    api: ApiClient,
    config: WebhookCertsConfig,
    *,
    attempts: int = RETRY_ATTEMPTS,
    initial_delay: float = RETRY_INITIAL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> WebhookCertsResult:
    """:func:`ensure_webhook_certs`, retried on retryable API errors; re-raises the last one.

    Every attempt starts over from reading the objects, so a retry after a 409 sees what the
    concurrent writer stored (and usually reuses it).
    """
    delay = initial_delay
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return ensure_webhook_certs(api, config, now=clock())
        except KubernetesApiError as exc:
            if not exc.retryable or attempt == attempts:
                raise
            _log.warning(
                "attempt %d/%d failed, retrying in %.1fs: %s",
                attempt,
                attempts,
                delay,
                exc,
                extra={"code": exc.code, "status": exc.status},
            )
            sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
    raise AssertionError("unreachable: the last attempt returns or raises")
