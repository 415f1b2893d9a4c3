"""An in-process fake of the few Kubernetes API server endpoints the node agent and webhook-certs use.

A real HTTP server on 127.0.0.1 (``ThreadingHTTPServer`` in a thread) holding objects in memory:

- ``GET`` / ``PATCH /api/v1/nodes/{name}``: the PATCH must carry the content type the node agent
  claims (``application/merge-patch+json``); the server applies the RFC 7386 merge patch itself.
- ``GET`` / ``POST`` / ``PUT /api/v1/namespaces/{ns}/secrets[/{name}]``: POST answers 409 when the
  Secret exists, PUT 409 when ``metadata.resourceVersion`` is stale (optimistic concurrency, as the
  real API server does).
- ``GET`` / ``PATCH /apis/admissionregistration.k8s.io/v1/{mutating,validating}webhookconfigurations/
  {name}``: the PATCH must be an RFC 6902 JSON Patch (``application/json-patch+json``), applied with
  the independent ``jsonpatch`` implementation, so a failed ``test`` op answers 422.

Every request is recorded (method, path, content type, parsed body). ``forbid`` makes chosen
(method, path) pairs answer 403 with a Status naming the verb, as RBAC does; ``fail_next`` queues
error statuses for the next requests (transient 5xx and the like). Errors are ``Status`` objects.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_NODE = re.compile(r"^/api/v1/nodes/([^/]+)$")
_SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets$")
_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/]+)$")
_WEBHOOK = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/(mutating|validating)webhookconfigurations/([^/]+)$"
)
#: How often the serving thread checks for shutdown (keeps fixture teardown fast).
_POLL_SECONDS = 0.02
_VERBS = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update"}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake saw it."""

    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None = None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 §2 MergePatch, written from the RFC's pseudocode."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    """Holds the objects; ``url`` is the base URL to point the official client at."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhooks: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.forbidden: set[tuple[str, str]] = set()
        self.failures: list[int] = []
        self.lock = threading.Lock()
        self._version = 100
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": _POLL_SECONDS}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- fixtures for tests -----------------------------------------------------------------

    def next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        meta: dict[str, Any] = {"name": name, "resourceVersion": self.next_version()}
        if labels is not None:
            meta["labels"] = dict(labels)
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        self.nodes[name] = {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {}}

    def add_webhook_configuration(self, kind: str, name: str, webhook_names: list[str]) -> None:
        """``kind``: ``mutating`` or ``validating``."""
        self.webhooks[(kind, name)] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": f"{kind.capitalize()}WebhookConfiguration",
            "metadata": {"name": name, "resourceVersion": self.next_version()},
            "webhooks": [
                {
                    "name": w,
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "clientConfig": {
                        "service": {"namespace": "nacre-system", "name": "nacre-webhook"}
                    },
                }
                for w in webhook_names
            ],
        }

    def forbid(self, method: str, path: str) -> None:
        self.forbidden.add((method, path))

    def fail_next(self, *statuses: int) -> None:
        self.failures.extend(statuses)

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _AnswerError(Exception):
    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(code)
        self.code = code
        self.body = body


def _fail(code: int, reason: str, message: str) -> _AnswerError:
    return _AnswerError(code, _status(code, reason, message))


def _make_handler(fake: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            content_type = self.headers.get("Content-Type")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            with fake.lock:
                auth = self.headers.get("Authorization")
                fake.requests.append(Recorded(self.command, path, content_type, body, auth))
                try:
                    code, answer = self._route(path, content_type, body)
                except _AnswerError as exc:
                    code, answer = exc.code, exc.body
            self._reply(code, answer)

        def do_GET(self) -> None:
            self._handle()

        def do_PATCH(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def _route(self, path: str, ctype: str | None, body: Any) -> tuple[int, dict[str, Any]]:
            method = self.command
            if (method, path) in fake.forbidden:
                raise _fail(
                    403,
                    "Forbidden",
                    f'{path} is forbidden: User "system:serviceaccount:nacre-system:test" '
                    f"cannot {_VERBS.get(method, method.lower())} this resource",
                )
            if fake.failures:
                code = fake.failures.pop(0)
                raise _fail(code, "InternalError", f"injected failure {code}")
            if m := _NODE.match(path):
                return self._node(m.group(1), ctype, body)
            if m := _SECRETS.match(path):
                return self._create_secret(m.group(1), body)
            if m := _SECRET.match(path):
                return self._secret(m.group(1), m.group(2), body)
            if m := _WEBHOOK.match(path):
                return self._webhook(m.group(1), m.group(2), ctype, body)
            raise _fail(404, "NotFound", f"the fake has no route {method} {path}")

        def _node(self, name: str, ctype: str | None, body: Any) -> tuple[int, dict[str, Any]]:
            node = fake.nodes.get(name)
            if node is None:
                raise _fail(404, "NotFound", f'nodes "{name}" not found')
            if self.command == "GET":
                return 200, node
            if self.command != "PATCH":
                raise _fail(405, "MethodNotAllowed", self.command)
            if ctype != MERGE_PATCH:
                raise _fail(415, "UnsupportedMediaType", f"the fake expects {MERGE_PATCH}: {ctype}")
            if not isinstance(body, dict):
                raise _fail(400, "BadRequest", "a merge patch must be a JSON object")
            patched = merge_patch(node, body)
            patched["metadata"]["resourceVersion"] = fake.next_version()
            fake.nodes[name] = patched
            return 200, patched

        def _create_secret(self, ns: str, body: Any) -> tuple[int, dict[str, Any]]:
            if self.command != "POST" or not isinstance(body, dict):
                raise _fail(405, "MethodNotAllowed", self.command)
            name = body.get("metadata", {}).get("name")
            if not name:
                raise _fail(422, "Invalid", "metadata.name is required")
            if (ns, name) in fake.secrets:
                raise _fail(409, "AlreadyExists", f'secrets "{name}" already exists')
            stored = copy.deepcopy(body)
            stored["metadata"]["namespace"] = ns
            stored["metadata"]["resourceVersion"] = fake.next_version()
            fake.secrets[(ns, name)] = stored
            return 201, stored

        def _secret(self, ns: str, name: str, body: Any) -> tuple[int, dict[str, Any]]:
            current = fake.secrets.get((ns, name))
            if self.command == "GET":
                if current is None:
                    raise _fail(404, "NotFound", f'secrets "{name}" not found')
                return 200, current
            if self.command != "PUT" or not isinstance(body, dict):
                raise _fail(405, "MethodNotAllowed", self.command)
            if current is None:
                raise _fail(404, "NotFound", f'secrets "{name}" not found')
            wanted = body.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                raise _fail(409, "Conflict", "the object has been modified")
            if body.get("type") != current.get("type"):
                raise _fail(422, "Invalid", "type: field is immutable")
            stored = copy.deepcopy(body)
            stored["metadata"]["namespace"] = ns
            stored["metadata"]["resourceVersion"] = fake.next_version()
            fake.secrets[(ns, name)] = stored
            return 200, stored

        def _webhook(
            self, kind: str, name: str, ctype: str | None, body: Any
        ) -> tuple[int, dict[str, Any]]:
            current = fake.webhooks.get((kind, name))
            if current is None:
                raise _fail(
                    404,
                    "NotFound",
                    f'{kind}webhookconfigurations.admissionregistration.k8s.io "{name}" not found',
                )
            if self.command == "GET":
                return 200, current
            if self.command != "PATCH":
                raise _fail(405, "MethodNotAllowed", self.command)
            if ctype != JSON_PATCH:
                raise _fail(415, "UnsupportedMediaType", f"the fake expects {JSON_PATCH}: {ctype}")
            try:
                patched = jsonpatch.JsonPatch(body).apply(current)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _fail(422, "Invalid", f"the JSON patch does not apply: {exc}") from None
            patched["metadata"]["resourceVersion"] = fake.next_version()
            fake.webhooks[(kind, name)] = patched
            return 200, patched

    return Handler


@contextmanager
def running() -> Iterator[FakeApiServer]:
    """A started fake, stopped on exit."""
    fake = FakeApiServer()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
