"""The official Kubernetes client, configured one of three ways, and its errors in nacre's words.

Where the API server is and how to authenticate, first match wins:

1. an explicit ``server`` URL (``--api-server``), optionally with a bearer-token file and a CA file
   (plain ``http://`` only to a loopback address: tests and ``kubectl proxy``);
2. a kubeconfig file (``--kubeconfig`` or ``$KUBECONFIG``);
3. the in-cluster service account (``KUBERNETES_SERVICE_HOST`` and the mounted token).

Anything else is a usage error: there is no silent fallback to ``~/.kube/config`` inside a pod.

Requests are answered as raw JSON (``_preload_content=False``) and read with :func:`read_json`, so
the processes work on plain dicts the way the API server sends them (no model round trip that could
drop unknown fields). :func:`api_error` turns an :class:`~kubernetes.client.ApiException` into a
:class:`KubernetesApiError` that names the object, the verb and, on 403, the missing RBAC rule.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from nacre.errors import NacreError, UsageError

__all__ = [
    "API_TIMEOUT_SECONDS",
    "MAX_RESPONSE_BYTES",
    "RETRYABLE_STATUSES",
    "ApiTarget",
    "KubernetesApiError",
    "api_error",
    "build_api_client",
    "read_json",
]

#: Connect and read timeout of one API request (the API server answers a GET in milliseconds).
API_TIMEOUT_SECONDS: Final = 15.0
#: Largest API response read (a Node object with images and conditions is tens of KiB).
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
#: Statuses worth retrying: throttling, conflicts and server-side trouble.
RETRYABLE_STATUSES: Final = frozenset({409, 429, 500, 502, 503, 504})

_SA_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kubernetes.config carries no annotations (unlike kubernetes.client): give its loaders types.
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config
_load_incluster_config: Callable[..., None] = k8s_config.load_incluster_config


class KubernetesApiError(NacreError):
    """The API server refused or failed a request; ``status`` is its HTTP status (0: unreachable)."""

    default_code = "K8S_API_ERROR"

    def __init__(self, message: str, *, status: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later without anyone changing anything."""
        return self.status == 0 or self.status in RETRYABLE_STATUSES


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """One request's subject, for error messages and RBAC hints."""

    verb: str  # RBAC verb: get, create, update, patch
    resource: str  # plural, e.g. nodes, secrets, mutatingwebhookconfigurations
    name: str
    api_group: str = ""  # "" is the core group
    namespace: str | None = None

    def describe(self) -> str:
        group = f".{self.api_group}" if self.api_group else ""
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.resource}{group} {self.name!r}{where}"


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            return body[:300]
        if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
            return str(decoded["message"])[:300]
    return str(exc.reason or "")


def api_error(exc: BaseException, target: ApiTarget) -> KubernetesApiError:
    """``exc`` (an ApiException, or a connection error) as a :class:`KubernetesApiError`."""
    if not isinstance(exc, ApiException):
        return KubernetesApiError(
            f"cannot reach the Kubernetes API server to {target.verb} {target.describe()}: {exc}",
            status=0,
            code="K8S_UNREACHABLE",
            field="API server",
            expected="a reachable API server",
            actual=type(exc).__name__,
            hint="check --api-server / --kubeconfig, the network policy and the API server",
        )
    status = int(exc.status or 0)
    detail = _status_message(exc)
    if status == 403:
        scope = f"a Role in namespace {target.namespace}" if target.namespace else "a ClusterRole"
        group = target.api_group or '"" (core)'
        return KubernetesApiError(
            f"forbidden: the service account may not {target.verb} {target.describe()}"
            f" (RBAC verb {target.verb!r} on {target.resource!r} is missing): {detail}",
            status=status,
            code="K8S_FORBIDDEN",
            field=f"RBAC {target.verb} {target.resource}",
            expected=f"verb {target.verb} granted on {target.resource}",
            actual="forbidden",
            hint=f"grant it through {scope}: apiGroups [{group}], resources "
            f"[{target.resource}], verbs [{target.verb}]",
        )
    if status == 404:
        return KubernetesApiError(
            f"{target.describe()} not found",
            status=status,
            code="K8S_NOT_FOUND",
            field=target.resource,
            expected=f"an existing {target.resource} object named {target.name}",
            actual="not found",
        )
    if status == 401:
        return KubernetesApiError(
            f"the API server does not accept our credentials ({target.verb} {target.describe()})",
            status=status,
            code="K8S_UNAUTHORIZED",
            field="credentials",
            expected="a valid service-account token or kubeconfig user",
            actual=f"401 {detail}",
        )
    return KubernetesApiError(
        f"{target.verb} {target.describe()} failed: HTTP {status} {detail}",
        status=status,
        field=target.resource,
        expected="HTTP 2xx",
        actual=f"HTTP {status}",
    )


def read_json(response: Any, target: ApiTarget) -> dict[str, Any]:
    """The JSON object of a raw (``_preload_content=False``) response."""
    try:
        data = response.read(MAX_RESPONSE_BYTES + 1)
    finally:
        response.release_conn()
    if len(data) > MAX_RESPONSE_BYTES:
        raise KubernetesApiError(
            f"the answer to {target.verb} {target.describe()} is too large",
            status=0,
            code="K8S_BAD_RESPONSE",
            field="response body",
            expected=f"<= {MAX_RESPONSE_BYTES} bytes",
            actual=f"> {MAX_RESPONSE_BYTES} bytes",
        )
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise KubernetesApiError(
            f"the answer to {target.verb} {target.describe()} is not a JSON object",
            status=0,
            code="K8S_BAD_RESPONSE",
            field="response body",
            expected="a JSON object",
            actual=repr(data[:80]),
        )
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _explicit(
    server: str, token_file: Path | None, ca_file: Path | None
) -> k8s_client.Configuration:
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            "--api-server is not an http(s) URL",
            field="--api-server",
            expected="https://HOST[:PORT] (http only to a loopback address)",
            actual=server,
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UsageError(
            "--api-server: plain http is allowed only to a loopback address",
            field="--api-server",
            expected="https://... (or http://127.0.0.1:PORT, e.g. kubectl proxy)",
            actual=server,
        )
    cfg = k8s_client.Configuration()
    cfg.host = server.rstrip("/")
    if ca_file is not None:
        cfg.ssl_ca_cert = str(ca_file)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read the token file {token_file}: {exc.strerror}",
                field="--token-file",
                expected="a readable file holding a bearer token",
                actual=str(token_file),
            ) from exc
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg


def build_api_client(
    *,
    server: str | None = None,
    token_file: Path | None = None,
    ca_file: Path | None = None,
    kubeconfig: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> k8s_client.ApiClient:
    """An :class:`~kubernetes.client.ApiClient` for the first configuration that applies."""
    env = os.environ if environ is None else environ
    if server:
        cfg = _explicit(server, token_file, ca_file)
    else:
        kube_file = kubeconfig or (Path(env["KUBECONFIG"]) if env.get("KUBECONFIG") else None)
        cfg = k8s_client.Configuration()
        try:
            if kube_file is not None:
                _load_kube_config(
                    config_file=str(kube_file), client_configuration=cfg, persist_config=False
                )
            elif env.get("KUBERNETES_SERVICE_HOST"):
                _load_incluster_config(client_configuration=cfg)
            else:
                raise UsageError(
                    "no Kubernetes API server configured",
                    field="--api-server",
                    expected="--api-server URL, --kubeconfig FILE ($KUBECONFIG), or running in "
                    f"a pod (KUBERNETES_SERVICE_HOST and {_SA_DIR})",
                    actual="none of them",
                )
        except (ConfigException, OSError) as exc:
            where = str(kube_file) if kube_file is not None else "in-cluster service account"
            raise UsageError(
                f"cannot load the Kubernetes client configuration ({where}): {exc}",
                field="--kubeconfig" if kube_file is not None else "in-cluster config",
                expected="a valid kubeconfig or a mounted service-account token",
                actual=where,
            ) from exc
    # Our own loops retry with backoff; urllib3 should not add hidden retries underneath.
    cfg.retries = urllib3.Retry(total=0, raise_on_status=False)
    return k8s_client.ApiClient(cfg)
