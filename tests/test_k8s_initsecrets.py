"""``nacre k8s init-secrets`` end to end: the real KBS server in-process on 127.0.0.1, the
simulated TEE selected the way the webhook selects it (``NACRE_TEE`` env), secrets written 0400.
"""

from __future__ import annotations

import base64
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from nacre.cli import app as nacre_app
from nacre.cli.demo_cmd import LocalServer, server_config
from nacre.errors import UsageError
from nacre.k8s.initsecrets import (
    DEFAULT_OUT_DIR,
    SecretFetchError,
    fetch_secrets,
    parse_secret_list,
    parse_secret_spec,
    write_secret,
)
from nacre.sdk import KbsClient
from nacre.server import create_app, load_admin_key, sign_admin_token
from nacre.sim import SimPlatform
from nacre.tee import current

MODEL_KEY = b"\x00model key\xff" * 3
DB_PASSWORD = b"correct horse battery staple"


@dataclass(frozen=True)
class Kbs:
    url: str
    sim_dir: Path


def _put(
    http: httpx.Client, url: str, admin: Any, name: str, data: bytes, policy: str | None
) -> None:
    body: dict[str, Any] = {"data": base64.b64encode(data).decode()}
    if policy is not None:
        body["policy"] = policy
    token = sign_admin_token(admin, now=datetime.now(UTC))
    answer = http.put(
        f"{url}/admin/v1/resources/{name}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    sim_dir = tmp_path_factory.mktemp("sim") / "platform"
    platform = SimPlatform.init(sim_dir)
    data_dir = tmp_path_factory.mktemp("server")
    with (
        LocalServer(create_app(server_config(data_dir, platform))) as server,
        httpx.Client() as http,
    ):
        admin = load_admin_key(data_dir / "admin.key")
        _put(http, server.url, admin, "models/llm/key", MODEL_KEY, None)
        _put(http, server.url, admin, "db/creds/password", DB_PASSWORD, None)
        only_other = (
            "version: 1\nrules:\n  - name: mrenclave\n"
            f"    expr: claims.mrenclave == '{'00' * 32}'\n    message: another enclave only\n"
        )
        _put(http, server.url, admin, "locked/for/other", b"x", only_other)
        yield Kbs(server.url, sim_dir)


def _env(kbs: Kbs) -> dict[str, str]:
    return {"NACRE_TEE": "sim", "NACRE_SIM_TEE": "sgx", "NACRE_SIM_DIR": str(kbs.sim_dir)}


def _run(kbs: Kbs, *args: str, url: str | None = None) -> Any:
    return CliRunner().invoke(
        nacre_app,
        ["k8s", "init-secrets", "--kbs-url", url or kbs.url, *args],
        env=_env(kbs),
    )


def test_writes_every_secret_0400(kbs: Kbs, tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    result = _run(
        kbs,
        "--out-dir",
        str(out),
        "--secret",
        f"models/llm/key={out}/model.key",
        "--secret",
        f"db/creds/password={out}/db/password",
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.key").read_bytes() == MODEL_KEY
    assert (out / "db" / "password").read_bytes() == DB_PASSWORD
    for path in (out / "model.key", out / "db" / "password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE((out / "db").stat().st_mode) == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["db", "model.key"]  # no temporary files
    # A restarted init container writes them again over the read-only files.
    again = _run(kbs, "--out-dir", str(out), "--secret", f"models/llm/key={out}/model.key")
    assert again.exit_code == 0, again.output
    assert (out / "model.key").read_bytes() == MODEL_KEY


def test_missing_resource_fails_naming_it_and_writes_nothing(kbs: Kbs, tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    result = _run(
        kbs,
        "--out-dir",
        str(out),
        "--secret",
        f"models/llm/key={out}/model.key",
        "--secret",
        f"models/llm/nope={out}/nope",
    )
    assert result.exit_code == 1, result.output
    assert "models/llm/nope" in result.output
    assert "404" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_policy_denial_fails_naming_resource_and_check(kbs: Kbs, tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    result = _run(kbs, "--out-dir", str(out), "--secret", f"locked/for/other={out}/x")
    assert result.exit_code == 1, result.output
    assert "locked/for/other" in result.output
    assert "mrenclave" in result.output


def test_unreachable_kbs_fails(kbs: Kbs, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "secrets"
    result = _run(
        kbs,
        "--out-dir",
        str(out),
        "--secret",
        f"models/llm/key={out}/k",
        url=f"http://127.0.0.1:{port}",
    )
    assert result.exit_code == 1, result.output
    assert "models/llm/key" in result.output


@pytest.mark.parametrize(
    ("secret", "named"),
    [
        ("models/llm/key=/etc/passwd", "inside"),
        ("models/llm/key={out}/../escape", "'..'"),
        ("models/llm/key={out}", "inside"),
        ("models/llm/key=relative/file", "absolute"),
        ("models/llm=/x", "does not name a KBS resource"),
        ("no-equals-sign", "repo/type/tag=/path"),
    ],
)
def test_usage_errors_exit_2(kbs: Kbs, tmp_path: Path, secret: str, named: str) -> None:
    out = tmp_path / "secrets"
    result = _run(kbs, "--out-dir", str(out), "--secret", secret.format(out=out))
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not out.exists()


def test_non_loopback_http_kbs_is_a_usage_error(kbs: Kbs, tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    result = _run(
        kbs, "--out-dir", str(out), "--secret", f"a/b/c={out}/c", url="http://kbs.example:8080"
    )
    assert result.exit_code == 2, result.output
    assert "https" in result.output


def test_fetch_secrets_default_layout_through_the_sdk(
    kbs: Kbs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(kbs).items():
        monkeypatch.setenv(name, value)
    specs = parse_secret_list(["models/llm/key=/run/nacre/secrets/model.key"])
    with KbsClient(kbs.url, backend=current()) as client:
        written = fetch_secrets(client, specs, root=tmp_path)
    assert written == (tmp_path / "run/nacre/secrets/model.key",)
    assert written[0].read_bytes() == MODEL_KEY


class _Failing:
    def get_resource(self, path: str) -> bytes:
        raise UsageError("boom", field="x")


def test_fetch_error_is_typed() -> None:
    specs = parse_secret_list(["a/b/c=/run/nacre/secrets/c"])
    with pytest.raises(SecretFetchError) as ei:
        fetch_secrets(_Failing(), specs, root=Path("/nonexistent"))
    assert "a/b/c" in ei.value.message
    assert "/run/nacre/secrets/c" in ei.value.message


def test_spec_rules() -> None:
    spec = parse_secret_spec(" models/llm/key = /run/nacre/secrets/sub/model.key ")
    assert spec.resource == "models/llm/key"
    assert str(spec.path) == "/run/nacre/secrets/sub/model.key"
    assert str(spec) == "models/llm/key=/run/nacre/secrets/sub/model.key"
    assert DEFAULT_OUT_DIR == "/run/nacre/secrets"
    for bad in (
        "a/b/c=/run/nacre/secrets//x",
        "a/b/c=/run/nacre/secrets/./x",
        "a/b/c=/run/nacre/secretsX/x",
        "a/b/../c=/run/nacre/secrets/x",
    ):
        with pytest.raises(UsageError):
            parse_secret_spec(bad)
    with pytest.raises(UsageError, match="same file"):
        parse_secret_list(["a/b/c=/run/nacre/secrets/x", "d/e/f=/run/nacre/secrets/x"])
    with pytest.raises(UsageError, match="no secret"):
        parse_secret_list([])


def test_write_secret_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "s" / "file"
    write_secret(target, b"one")
    write_secret(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert os.listdir(target.parent) == ["file"]
