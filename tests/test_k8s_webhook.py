"""The admission webhook against AdmissionReview fixtures, end to end through the ASGI app.

Every file in ``tests/fixtures/admission`` holds a review (or a raw body), the path it is posted
to, and the exact expected answer: the JSONPatch list, the denial's code/reason/message, or the
HTTP 400 problem's field and detail. Each allowed pod is patched with the independent
``jsonpatch`` library and validated against the Kubernetes API schema (``kubernetes-validate``,
strict: unknown fields fail). Mutated pods are mutated again (no operations: reinvocation-safe)
and pass the matching validating path. Hypothesis feeds arbitrary bodies: never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import latest_version  # type: ignore[import-untyped]

from nacre.errors import UsageError
from nacre.k8s.initsecrets import parse_secret_list
from nacre.k8s.webhook import MAX_REVIEW_BYTES, PATHS, WebhookConfig, create_app
from nacre.k8s.webhook.mutate import escape_token
from nacre.k8s.webhook.review import MAX_JSON_DEPTH

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
K8S_VERSION = latest_version()
_FILES = sorted(FIXTURES.glob("*.json"))


class Client:
    """One event loop driving ``httpx.AsyncClient`` over ``ASGITransport`` synchronously."""

    def __init__(self, config: WebhookConfig | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(config or WebhookConfig())),
            base_url="https://nacre-webhook.nacre-system.svc",
        )

    def post(self, path: str, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        return self._loop.run_until_complete(self._client.post(path, content=body, headers=headers))

    def get(self, path: str) -> httpx.Response:
        return self._loop.run_until_complete(self._client.get(path))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


def _load(path: Path) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads(path.read_text())
    return fixture


def _post(fixture: dict[str, Any], default: Client) -> httpx.Response:
    body = fixture["body"].encode() if "body" in fixture else json.dumps(fixture["review"]).encode()
    if "config" not in fixture:
        return default.post(fixture["path"], body)
    own = Client(WebhookConfig(**_config_args(fixture["config"])))
    try:
        return own.post(fixture["path"], body)
    finally:
        own.close()


def _config_args(raw: dict[str, Any]) -> dict[str, Any]:
    args = dict(raw)
    if "sandboxed_classes" in args:
        args["sandboxed_classes"] = frozenset(args["sandboxed_classes"])
    return args


def _patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        assert "patchType" not in response
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    assert ops, "an empty patch is sent as no patch"
    return ops


def _validate_k8s(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_fixture_set_covers_every_kind_of_answer() -> None:
    fixtures = [_load(f) for f in _FILES]
    assert len(fixtures) >= 20
    expects = [f["expect"] for f in fixtures]
    mutated = [e for e in expects if e["status"] == 200 and e["allowed"] and e["patch"]]
    allowed = [e for e in expects if e["status"] == 200 and e["allowed"] and not e["patch"]]
    denied = [e for e in expects if e["status"] == 200 and not e["allowed"]]
    malformed = [e for e in expects if e["status"] == 400]
    assert len(mutated) >= 5
    assert len(allowed) >= 5
    assert len(denied) >= 5
    assert len(malformed) >= 5
    assert {f["path"] for f in fixtures} == set(PATHS)
    assert K8S_VERSION >= "1.34"


@pytest.mark.parametrize("path", _FILES, ids=[f.stem for f in _FILES])
def test_fixture(path: Path, client: Client) -> None:
    fixture = _load(path)
    expect = fixture["expect"]
    response = _post(fixture, client)
    assert response.status_code == expect["status"], response.text
    if expect["status"] != 200:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == expect["status"]
        assert problem["field"] == expect["field"]
        assert problem["detail"] == expect["detail"]
        return
    review = response.json()
    request = fixture["review"]["request"]
    assert set(review) == {"apiVersion", "kind", "response"}
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    answer = review["response"]
    assert answer["uid"] == request["uid"]
    assert answer["allowed"] is expect["allowed"]
    if not expect["allowed"]:
        assert set(answer) == {"uid", "allowed", "status"}
        assert answer["status"] == {
            "code": expect["code"],
            "reason": expect["reason"],
            "message": expect["message"],
        }
        return
    assert "status" not in answer
    ops = _patch_of(answer)
    assert ops == expect["patch"]
    obj = request["object"]
    if obj is None:
        assert not ops
        return
    patched = jsonpatch.apply_patch(obj, ops)
    _validate_k8s(patched)


def _mutated_fixtures() -> list[Path]:
    out = []
    for path in _FILES:
        e = _load(path)["expect"]
        if e["status"] == 200 and e["allowed"] and e["patch"]:
            out.append(path)
    return out


@pytest.mark.parametrize("path", _mutated_fixtures(), ids=lambda p: p.stem)
def test_mutation_is_idempotent_and_passes_validation(path: Path, client: Client) -> None:
    fixture = _load(path)
    review = copy.deepcopy(fixture["review"])
    review["request"]["object"] = jsonpatch.apply_patch(
        review["request"]["object"], fixture["expect"]["patch"]
    )
    again = fixture | {"review": review}
    answer = _post(again, client).json()["response"]
    assert answer["allowed"] is True
    assert _patch_of(answer) == []
    validating = fixture["path"].replace("/mutate", "/validate")
    verdict = _post(again | {"path": validating}, client).json()["response"]
    assert verdict["allowed"] is True, verdict


def test_injected_init_command_parses_as_init_secrets_arguments() -> None:
    fixture = _load(FIXTURES / "mutate_sgx_secrets_provision.json")
    init_op = next(op for op in fixture["expect"]["patch"] if op["path"] == "/spec/initContainers")
    command = init_op["value"][0]["command"]
    assert command[:3] == ["nacre", "k8s", "init-secrets"]
    secrets = [command[i + 1] for i, arg in enumerate(command) if arg == "--secret"]
    specs = parse_secret_list(secrets)
    assert [s.resource for s in specs] == ["models/llm/key", "tls/server/cert"]
    assert [str(s.path) for s in specs] == [
        "/run/nacre/secrets/model.key",
        "/run/nacre/secrets/tls/server.pem",
    ]


def test_json_pointer_tokens_are_escaped() -> None:
    assert escape_token("nacre.dev/sgx-epc-mib") == "nacre.dev~1sgx-epc-mib"
    assert escape_token("a~b/c") == "a~0b~1c"
    assert escape_token(3) == "3"


def test_healthz_and_methods(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/mutate").status_code == 405
    assert client.post("/nope", b"{}").status_code == 404


def test_body_over_the_limit_is_413(client: Client) -> None:
    response = client.post("/validate", b" " * (MAX_REVIEW_BYTES + 1))
    assert response.status_code == 413
    assert str(MAX_REVIEW_BYTES) in response.json()["title"]


def test_deep_nesting_is_400_not_a_crash(client: Client) -> None:
    fixture = _load(FIXTURES / "mutate_sgx_minimal.json")
    review = copy.deepcopy(fixture["review"])
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = [deep]
    review["request"]["object"]["spec"]["containers"][0]["args"] = deep
    response = client.post("/mutate", json.dumps(review).encode())
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    very_deep = b"[" * 100_000 + b"]" * 100_000
    assert client.post("/mutate", very_deep).status_code == 400


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(UsageError) as ei:
        WebhookConfig(epc_resource="example.com/epc")
    assert ei.value.field == "epc_resource"
    with pytest.raises(UsageError) as ei:
        WebhookConfig(kbs_url="http://kbs.example:8080")
    assert ei.value.field == "url"
    with pytest.raises(UsageError) as ei:
        WebhookConfig(runtime_class="Kata_QEMU")
    assert ei.value.field == "runtime_class"
    with pytest.raises(UsageError) as ei:
        WebhookConfig(tee_backend="sgx")
    assert ei.value.field == "tee_backend"
    config = WebhookConfig(runtime_class="my-kata", sandboxed_classes=frozenset({"rund"}))
    assert config.sandboxed_classes == {"my-kata", "rund"}


def test_user_env_and_mounts_are_not_overwritten(client: Client) -> None:
    fixture = _load(FIXTURES / "mutate_sgx_minimal.json")
    review = copy.deepcopy(fixture["review"])
    app = review["request"]["object"]["spec"]["containers"][0]
    app["env"] = [{"name": "NACRE_TEE", "value": "sim"}, {"name": "NACRE_KBS_URL", "value": "x"}]
    app["volumeMounts"] = [{"name": "host-aesm", "mountPath": "/var/run/aesmd"}]
    ops = _patch_of(client.post("/mutate", json.dumps(review).encode()).json()["response"])
    paths = [op["path"] for op in ops]
    assert not any(p.startswith("/spec/containers/0/env") for p in paths)
    assert not any(p.startswith("/spec/containers/0/volumeMounts") for p in paths)


def test_epc_annotation_wins_over_a_different_user_request(client: Client) -> None:
    fixture = _load(FIXTURES / "mutate_sgx_minimal.json")
    review = copy.deepcopy(fixture["review"])
    app = review["request"]["object"]["spec"]["containers"][0]
    app["resources"] = {"limits": {"nacre.dev/sgx-epc-mib": "32"}}
    ops = _patch_of(client.post("/mutate", json.dumps(review).encode()).json()["response"])
    assert ops[1:3] == [
        {
            "op": "add",
            "path": "/spec/containers/0/resources/requests",
            "value": {"nacre.dev/sgx-epc-mib": "64"},
        },
        {
            "op": "replace",
            "path": "/spec/containers/0/resources/limits/nacre.dev~1sgx-epc-mib",
            "value": "64",
        },
    ]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()),
    path=st.sampled_from(PATHS),
)
def test_arbitrary_bodies_never_5xx(client: Client, body: bytes, path: str) -> None:
    response = client.post(path, body)
    assert response.status_code in (200, 400), response.text


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    index=st.integers(min_value=0, max_value=len(_FILES) - 1),
    steps=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=10),
    value=_JSON,
    path=st.sampled_from(PATHS),
    in_pod=st.booleans(),
)
def test_damaged_reviews_never_5xx(
    client: Client, index: int, steps: list[int], value: Any, path: str, in_pod: bool
) -> None:
    """Real reviews with one value somewhere inside (half the time inside the pod) replaced."""
    review: Any = copy.deepcopy(_load(_FILES[index]).get("review", {}))
    node: Any = review
    if in_pod and isinstance(review.get("request", {}).get("object"), dict):
        node = review["request"]["object"]
    for depth, step in enumerate(steps):
        keys: list[Any] = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        child = node[key]
        if depth == len(steps) - 1 or not isinstance(child, (dict, list)) or not child:
            node[key] = value
            break
        node = child
    response = client.post(path, json.dumps(review).encode())
    assert response.status_code in (200, 400), response.text
