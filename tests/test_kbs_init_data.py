"""KBS ``init-data`` end to end: the TOML a TEE was launched with, checked against CONFIGID (SGX)
or MRCONFIGID (TDX), carried in the token and usable by release policies; other init-data, or
malformed init-data, is refused and changes nothing stored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacre.sim import Manifest
from nacre.token import decrypt, verify_ear
from server_support import Env, Workload, make_env, snapshot
from test_store_support import BACKENDS

DOC = 'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\nenv = "prod"\n'
OTHER = 'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\nenv = "dev"\n'


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Env]:
    with make_env("sqlite", tmp_path) as e:
        yield e


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def _launched_with(doc: str) -> Manifest:
    """A workload whose launch measured ``doc`` into CONFIGID (MRCONFIGID: its first 48 bytes)."""
    return Manifest(config_id=hashlib.sha384(doc.encode()).digest().ljust(64, b"\x00"))


def _attest(w: Workload, manifest: Manifest, init_data: object) -> httpx.Response:
    assert w.auth().status_code == 200
    body: dict[str, Any] = w.attest_body(manifest=manifest)
    if init_data is not None:
        body["init-data"] = init_data
    r = w.client.post("/kbs/v0/attest", json=body)
    if r.status_code == 200:
        w.token = r.json()["token"]
    return r


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_matching_init_data_is_bound_and_released_on(env: Env, tee: str) -> None:
    env.put_secret("default/key/prod", b"prod key", policy='init_data.data["env"] == "prod"')
    w = Workload(env, tee=tee)
    r = _attest(w, _launched_with(DOC), {"format": "toml", "body": DOC})
    assert r.status_code == 200, r.text
    claims = verify_ear(w.token, env.client.get("/.well-known/jwks.json").json(), env.clock())
    init = claims.appraisal().annotated_evidence["init_data_claims"]
    assert init["digest"] == hashlib.sha384(DOC.encode()).hexdigest()
    assert init["data"] == {"env": "prod"}
    assert init["algorithm"] == "sha384"
    got = w.resource("default/key/prod")
    assert got.status_code == 200, got.text
    assert decrypt(got.json(), w.key) == b"prod key"


def test_other_init_data_is_refused(env: Env) -> None:
    w = Workload(env)
    assert w.auth().status_code == 200
    before = {k: v for k, v in snapshot(env.store).items() if k != "audit"}
    body = w.attest_body(manifest=_launched_with(DOC))
    body["init-data"] = {"format": "toml", "body": OTHER}
    p = _problem(w.client.post("/kbs/v0/attest", json=body), 403)
    assert p["code"] == "INIT_DATA_MISMATCH"
    assert p["check"] == "init_data"
    assert p["field"] == "config_id"
    assert p["expected"] == hashlib.sha384(OTHER.encode()).digest().ljust(64, b"\x00").hex()
    # Nothing stored changed: the session is still pending, its nonce unused.
    assert {k: v for k, v in snapshot(env.store).items() if k != "audit"} == before
    body["init-data"] = {"format": "toml", "body": DOC}
    assert w.client.post("/kbs/v0/attest", json=body).status_code == 200
    # Without init-data the same workload attests (init-data is the client's to ask for).
    assert _attest(Workload(env), _launched_with(DOC), None).status_code == 200


def test_a_release_policy_can_require_init_data(env: Env) -> None:
    env.put_secret("default/key/prod", b"k", policy='init_data.data["env"] == "prod"')
    w = Workload(env)
    assert _attest(w, _launched_with(DOC), None).status_code == 200
    r = w.resource("default/key/prod")
    assert r.status_code == 403, r.text


@pytest.mark.parametrize(
    ("init_data", "field"),
    [
        ({"format": "json", "body": "{}"}, "init-data.format"),
        ({"format": "toml", "body": "version = "}, "init-data.body"),
        ({"format": "toml", "body": 'version = "0.1.0"\nalgorithm = "md5"'}, "init-data.algorithm"),
        ("toml", "init-data"),
    ],
)
def test_malformed_init_data_is_a_400(env: Env, init_data: object, field: str) -> None:
    w = Workload(env)
    r = _attest(w, _launched_with(DOC), init_data)
    p = _problem(r, 400)
    assert p["field"] == field
    assert p["check"] == "init-data"
    # The nonce is still unused: a corrected request on the same session succeeds.
    body = w.attest_body(manifest=_launched_with(DOC))
    body["init-data"] = {"format": "toml", "body": DOC}
    assert w.client.post("/kbs/v0/attest", json=body).status_code == 200


def test_sdk_client_sends_its_init_data(env: Env) -> None:
    from nacre.cli.demo_cmd import LocalServer
    from nacre.errors import UsageError
    from nacre.sdk import KbsClient, KbsError
    from nacre.tee.sim import SimBackend

    env.put_secret("default/key/prod", b"prod key", policy='init_data.data["env"] == "prod"')
    backend = SimBackend(env.platform, manifest=_launched_with(DOC))
    with LocalServer(env.app) as server:
        with KbsClient(server.url, backend=backend, init_data=DOC) as client:
            assert client.get_resource("default/key/prod") == b"prod key"
        # Launched with DOC but presenting OTHER: the broker refuses the attestation.
        with (
            KbsClient(server.url, backend=backend, init_data=OTHER) as client,
            pytest.raises(KbsError) as info,
        ):
            client.get_resource("default/key/prod")
        assert "config_id" in str(info.value)
    # Malformed init-data never leaves the workload.
    with pytest.raises(UsageError):
        KbsClient("http://127.0.0.1:1", backend=backend, init_data="version = ")


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    init_data=st.one_of(
        _JSON,
        st.fixed_dictionaries({"format": st.sampled_from(["toml", "json", ""]), "body": _JSON}),
        st.fixed_dictionaries({"format": st.just("toml"), "body": st.text(max_size=200)}),
    )
)
def test_any_init_data_is_a_4xx_never_a_crash(lite: Env, init_data: object) -> None:
    """Whatever the init-data member holds, the answer is a 4xx naming it (or a 200 when it is
    the launch document), never a 5xx, and the session's nonce stays usable."""
    w = Workload(lite)
    assert w.auth().status_code == 200
    body = w.attest_body(manifest=_launched_with(DOC))
    body["init-data"] = init_data
    r = w.client.post("/kbs/v0/attest", json=body)
    assert r.status_code in (200, 400, 403), r.text
    if r.status_code != 200:
        assert r.json()["check"] in ("init-data", "init_data")
