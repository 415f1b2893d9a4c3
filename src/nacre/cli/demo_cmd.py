"""``nacre demo``: the end-to-end story on the local stack, on embedded defaults.

1. Start the attestation service + key broker in-process (uvicorn on 127.0.0.1, a free port,
   SQLite in the data directory, simulation trust on) beside a simulated SGX platform.
2. Measure a small model-serving workload (two files and a manifest), encrypt its "model" with a
   fresh AES-256 key, and register that key as ``models/llm/key`` with a release policy of CEL rules
   that allows only that MRENCLAVE with ISVSVN >= 1, through the admin API with the bootstrap
   admin key.
3. (a) The measured workload attests (:class:`nacre.sdk.KbsClient` over the simulated TEE),
   receives its model key and decrypts the model.
4. (b) A modified workload (one line added to one file: another MRENCLAVE) is refused; the failed
   check from the 403 body is printed.
5. (c) A key signs inside the service (``POST /kms/v1/keys/{id}/sign``, the workload's EAR token
   as Bearer credential) for the attested workload, and not for the modified one (403 naming the
   failed check); the signature verifies with the key's public PEM.
6. (d) The hash-chained audit log verifies (``GET /admin/v1/audit/verify`` and offline, as
   ``nacre audit verify`` does).

Exit 0 only when every step behaved as expected (the refusal in (b) is expected), 1 when one did
not, 2 when the demo cannot run at all (the server package missing, an unusable data directory).
``--json`` prints one summary object. Nothing secret (keys, tokens) is printed.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.markup import escape

from nacre.errors import NacreError, UsageError
from nacre.sdk import KbsClient, KbsDeniedError, KbsError
from nacre.sim import Manifest, SimPlatform
from nacre.tee.sim import SimBackend

__all__ = ["RESOURCE", "LocalServer", "demo_command", "server_config"]

RESOURCE = "models/llm/key"
STEP_COUNT = 6
_MODEL_AAD = b"nacre-demo-model-v1"
_SERVE_PY = """\
# tiny-llm model server: fetch the model key from the key broker, decrypt the weights, serve.
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacre.sdk import KbsClient


def load_model(kbs_url: str, blob: bytes) -> bytes:
    key = KbsClient(kbs_url).get_resource("models/llm/key")
    return AESGCM(key).decrypt(blob[:12], blob[12:], b"nacre-demo-model-v1")
"""
_MODEL_TOML = """\
name = "tiny-llm"
max_tokens = 256
temperature = 0.2
"""
_MANIFEST = """\
name = "tiny-llm-server"
entrypoint = "serve.py"
isv_prod_id = 1
isv_svn = 1

[[files]]
path = "serve.py"

[[files]]
path = "model.toml"
"""
_MODEL_WEIGHTS = b"tiny-llm weights v1:" + bytes(range(256)) * 4


class DemoError(NacreError):
    """A demo step did not behave as the story says it should."""

    default_code = "DEMO_STEP_FAILED"


@dataclass
class StepResult:
    number: int
    name: str
    expected: str
    ok: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "name": self.name,
            "ok": self.ok,
            "expected": self.expected,
            "facts": self.facts,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


class _Ui:
    """Numbered steps with a spinner on stdout, or nothing at all with ``--json``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=True)

    def print(self, text: str) -> None:
        if not self.quiet:
            self.out.print(text)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        if self.quiet or not self.out.is_terminal:
            yield
            return
        with self.out.status(text):
            yield


# -- the local stack ------------------------------------------------------------------------------


class LocalServer:
    """An ASGI app served by uvicorn on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: Any, *, lifespan: Literal["on", "off"] = "on") -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DemoError(
                    "the in-process server did not start",
                    field="server",
                    expected="uvicorn serving on 127.0.0.1",
                    actual="exited" if not self._thread.is_alive() else "timed out",
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self._sock.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_config(data_dir: Path, platform: SimPlatform) -> Any:
    """A ``nacre.server.ServerConfig`` on embedded defaults: SQLite in ``data_dir``, the
    simulated platform as the service's own TEE (it seals the KEK) and as a trusted simulation
    root with its collateral. A UsageError names what is missing when the server is not there."""
    try:
        from nacre.server import ServerConfig
        from nacre.store import default_url
    except ImportError as exc:
        raise UsageError(
            "nacre demo needs the attestation service (nacre.server), which is not importable",
            field="nacre.server",
            expected="an installed nacre with the server and its dependencies (fastapi, uvicorn)",
            actual=f"{type(exc).__name__}: {exc}",
            hint="reinstall nacre: pip install -e .",
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerConfig(
        database_url=default_url(data_dir),
        data_dir=data_dir,
        sealer=SimBackend(platform),
        trust_sim=True,
        sim_trust=platform.trust_roots(),
        collateral_provider=platform.bundle,
    )


def _create_app(config: Any) -> Any:
    from nacre.server import create_app

    return create_app(config)


# -- the demo -------------------------------------------------------------------------------------


class Demo:
    """The story's steps over one running stack; each step records what it saw."""

    def __init__(self, data_dir: Path, ui: _Ui, platform: SimPlatform, url: str) -> None:
        self.data_dir = data_dir
        self.server_dir = data_dir / "server"
        self.ui = ui
        self.platform = platform
        self.url = url
        self.steps: list[StepResult] = []
        self.http = httpx.Client(timeout=30.0)
        self._admin_key: Any = None
        self._manifest: Manifest | None = None
        self._model = b""

    def close(self) -> None:
        self.http.close()

    # -- plumbing --------------------------------------------------------------------------------

    def step(self, name: str, expected: str, body: Callable[[StepResult], None]) -> bool:
        result = StepResult(len(self.steps) + 1, name, expected)
        self.steps.append(result)
        self.ui.print(f"\n[bold]{result.number}. {escape(name)}[/]")
        started = time.monotonic()
        try:
            with self.ui.status(f"{name} ..."):
                body(result)
            result.ok = True
        except NacreError as exc:
            result.error = exc.to_dict()
            self.ui.print(f"   [red]✘ {escape(str(exc))}[/]")
        except (httpx.HTTPError, OSError, ValueError) as exc:
            result.error = {"code": "DEMO_IO", "message": f"{type(exc).__name__}: {exc}"}
            self.ui.print(f"   [red]✘ {escape(type(exc).__name__)}: {escape(str(exc))}[/]")
        result.seconds = time.monotonic() - started
        if result.ok:
            self.ui.print(f"   [green]✔ {escape(expected)}[/] [dim]({result.seconds:.2f}s)[/]")
        return result.ok

    def say(self, text: str) -> None:
        self.ui.print(f"   {text}")

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise DemoError("the workload has not been measured", field="workload")
        return self._manifest

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One admin-API call with a fresh short-lived JWT signed by the bootstrap admin key."""
        from nacre.server import sign_admin_token

        token = sign_admin_token(self._admin_key, now=datetime.now(UTC))
        response = self.http.request(
            method, f"{self.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text[:200]}
        if response.status_code >= 400 or not isinstance(answer, dict):
            problem = answer if isinstance(answer, dict) else {}
            raise DemoError(
                f"admin {method} {path} answered {response.status_code}: "
                f"{problem.get('detail') or problem.get('title')}",
                field=str(problem.get("field") or path),
                expected=problem.get("expected"),
                actual=problem.get("actual"),
            )
        return answer

    def workload(self, manifest: Manifest) -> KbsClient:
        """A KBS client inside the (simulated) TEE that runs ``manifest``."""
        return KbsClient(self.url, backend=SimBackend(self.platform, manifest=manifest))

    def modified_manifest(self) -> Manifest:
        """The same workload with one line added to serve.py: another MRENCLAVE."""
        evil = self.data_dir / "workload-modified"
        if not (evil / "manifest.toml").is_file():
            shutil.copytree(self.data_dir / "workload", evil, dirs_exist_ok=True)
            with (evil / "serve.py").open("a") as f:
                f.write("\nimport urllib.request  # ... and send the key elsewhere\n")
        return Manifest.load(evil / "manifest.toml")

    # -- the steps -------------------------------------------------------------------------------

    def stack_up(self, r: StepResult) -> None:
        from nacre.server import ADMIN_KEY_FILE, load_admin_key

        health = self.http.get(f"{self.url}/healthz")
        if health.status_code != 200:
            raise DemoError(
                "the service is not healthy",
                field="/healthz",
                expected="200",
                actual=str(health.status_code),
            )
        key_path = self.server_dir / ADMIN_KEY_FILE
        self._admin_key = load_admin_key(key_path)
        r.facts.update(
            url=self.url,
            database=str(self.server_dir / "nacre.db"),
            admin_key=str(key_path),
            platform=str(self.platform.dir),
            tcb_status=self.platform.tcb_status,
            trust_sim=True,
        )
        self.say(f"key broker at [cyan]{self.url}[/], SQLite {escape(str(self.server_dir))}")
        self.say(f"bootstrap admin key {escape(str(key_path))} (mode 0600)")
        self.say(
            f"simulated SGX platform {escape(str(self.platform.dir))}, "
            f"TCB {self.platform.tcb_status}, trusted as simulation (results say sim: true)"
        )

    def register(self, r: StepResult) -> None:
        app = self.data_dir / "workload"
        app.mkdir(parents=True, exist_ok=True)
        (app / "serve.py").write_text(_SERVE_PY)
        (app / "model.toml").write_text(_MODEL_TOML)
        (app / "manifest.toml").write_text(_MANIFEST)
        self._manifest = Manifest.load(app / "manifest.toml")
        m = self.platform.measure(self._manifest)
        mrenclave = m.mr_enclave.hex()
        model_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        self._model = nonce + AESGCM(model_key).encrypt(nonce, _MODEL_WEIGHTS, _MODEL_AAD)
        (app / "model.enc").write_bytes(self._model)
        policy = _release_policy(mrenclave)
        stored = self.admin(
            "PUT",
            f"/admin/v1/resources/{RESOURCE}",
            {"data": base64.b64encode(model_key).decode("ascii"), "policy": policy},
        )
        del model_key
        rule = f'claims.mrenclave == "{mrenclave}" && claims.isv_svn >= 1'
        r.facts.update(
            workload=str(app),
            mrenclave=mrenclave,
            mrsigner=m.mr_signer.hex(),
            isv_svn=m.isv_svn,
            resource=RESOURCE,
            resource_version=stored.get("version"),
            policy_id=stored.get("policy_id"),
            release_policy=rule,
            encrypted_model=str(app / "model.enc"),
        )
        self.say(f"workload {escape(str(app))}: serve.py, model.toml, manifest.toml")
        self.say(f"MRENCLAVE [cyan]{mrenclave}[/]  ISVSVN {m.isv_svn}")
        self.say(f"encrypted model {escape(str(app / 'model.enc'))} (AES-256-GCM)")
        self.say(
            f"resource [cyan]{RESOURCE}[/] stored (envelope-encrypted), released only when "
            f"[yellow]{escape(rule)}[/]"
        )

    def attest_and_receive(self, r: StepResult) -> None:
        with self.workload(self.manifest) as kbs:
            key = kbs.get_resource(RESOURCE)
        weights = AESGCM(key).decrypt(self._model[:12], self._model[12:], _MODEL_AAD)
        if weights != _MODEL_WEIGHTS:
            raise DemoError("the decrypted model is not the model", field="model")
        r.facts.update(key_bytes=len(key), model_bytes=len(weights))
        self.say("auth -> quote(report_data = SHA-384 of nonce + TEE key) -> attest -> EAR token")
        self.say(
            f"received the {len(key)}-byte model key as a JWE to the TEE's ephemeral key "
            f"(not printed) and decrypted the model: {len(weights)} bytes"
        )

    def refuse_modified(self, r: StepResult) -> None:
        manifest = self.modified_manifest()
        mrenclave = self.platform.measure(manifest).mr_enclave.hex()
        self.say(f"serve.py changed by one line: MRENCLAVE [cyan]{mrenclave}[/]")
        try:
            with self.workload(manifest) as kbs:
                kbs.get_resource(RESOURCE)
        except KbsDeniedError as exc:
            r.facts.update(
                mrenclave=mrenclave,
                status=exc.status,
                check=exc.check,
                detail=exc.detail,
                expected=exc.expected,
                actual=exc.actual,
            )
            self.say(
                f"[bold]refused[/]: HTTP {exc.status}, failed check "
                f"[yellow]{escape(str(exc.check))}[/]: {escape(exc.detail or '')}"
            )
            if not exc.check:
                raise DemoError(
                    "the refusal does not name the failed check", field="check"
                ) from exc
            return
        except KbsError as exc:
            raise DemoError(
                f"the modified workload was refused, but not by the release policy: {exc}",
                field="status",
                expected="403 with the failed check",
                actual=str(exc.status),
            ) from exc
        raise DemoError(
            "the modified workload received the model key",
            field="release",
            expected="refused",
            actual="released",
        )

    def sign_inside(self, r: StepResult) -> None:
        """An attested workload signs with a service-held P-256 key whose policy names its
        MRENCLAVE, over HTTP (``POST /kms/v1/keys/{id}/sign``) with its EAR token as the Bearer
        credential; the modified workload's token is refused with the failed check named. The
        key is created (and its public PEM read) through the same API with the admin key."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        mrenclave = self.platform.measure(self.manifest).mr_enclave.hex()
        policy_id = "demo-model-signer"
        self.admin(
            "PUT",
            f"/admin/v1/policies/{policy_id}",
            {"kind": "resource", "document": _signing_policy(mrenclave)},
        )
        key = self.admin(
            "POST",
            "/kms/v1/keys",
            {
                "type": "EC-P256",
                "name": f"model-signer-{secrets.token_hex(3)}",
                "policy_id": policy_id,
            },
        )
        key_id = str(key["id"])
        with self.workload(self.manifest) as kbs:
            token = kbs.attest()
        with self.workload(self.modified_manifest()) as kbs:
            other_token = kbs.attest()
        message = b"tiny-llm release manifest, weights sha256 " + secrets.token_hex(32).encode()
        body = {"message": base64.b64encode(message).decode("ascii")}
        sign_path = f"{self.url}/kms/v1/keys/{key_id}/sign"
        signed = self.http.post(sign_path, json=body, headers={"Authorization": f"Bearer {token}"})
        if signed.status_code != 200:
            problem = _json_or_empty(signed)
            raise DemoError(
                f"the attested workload could not sign: HTTP {signed.status_code} "
                f"{problem.get('detail') or problem.get('title')}",
                field=str(problem.get("check") or problem.get("field") or "sign"),
                expected="200",
                actual=str(signed.status_code),
            )
        answer = _json_or_empty(signed)
        signature = base64.b64decode(str(answer.get("signature", "")))
        refused_http = self.http.post(
            sign_path, json=body, headers={"Authorization": f"Bearer {other_token}"}
        )
        refusal = _json_or_empty(refused_http)
        if refused_http.status_code != 403 or not refusal.get("check"):
            raise DemoError(
                "the modified workload was not refused with the failed check named",
                field="key policy",
                expected="403 naming the check",
                actual=f"HTTP {refused_http.status_code}",
            )
        refused = str(refusal["check"])
        pem = str(self.admin("GET", f"/kms/v1/keys/{key_id}").get("public_key_pem") or "")
        public = serialization.load_pem_public_key(pem.encode("ascii"))
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise DemoError("the signing key is not an EC key", field="public_key")
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DemoError("the signature does not verify", field="signature") from None
        r.facts.update(
            key_id=key_id,
            key_type="EC-P256",
            algorithm=answer.get("algorithm"),
            signature_bytes=len(signature),
            verified=True,
            modified_workload_refused=refused,
            modified_workload_status=refused_http.status_code,
            via=f"POST /kms/v1/keys/{key_id}/sign with the workload's EAR token (Bearer)",
        )
        self.say(
            f"key [cyan]{escape(key_id)}[/] (EC P-256) made inside the service; it never leaves it"
        )
        self.say(
            f"the attested workload sent its EAR token and {len(message)} bytes to "
            f"POST /kms/v1/keys/{escape(key_id)}/sign ({answer.get('algorithm')}); "
            "the signature verifies with the key's public PEM"
        )
        self.say(
            f"the modified workload's token is refused: HTTP {refused_http.status_code}, "
            f"failed check [yellow]{escape(refused)}[/]: {escape(str(refusal.get('detail', '')))}"
        )

    def audit(self, r: StepResult) -> None:
        from nacre.store import default_url, open_store, verify_chain

        online = self.admin("GET", "/admin/v1/audit/verify")
        if online.get("ok") is not True:
            raise DemoError(
                "the service reports a broken audit chain",
                field=str(online.get("field") or "audit"),
                expected=online.get("expected"),
                actual=online.get("actual"),
            )
        # What `nacre audit verify --data-dir` does: recompute every hash, offline, read-only.
        with open_store(default_url(self.server_dir), migrate=False) as store:
            offline = verify_chain(store)
        if not offline.ok:
            raise DemoError(
                f"the audit chain is broken at entry {offline.broken_seq}: {offline.reason}",
                field=offline.field or "audit",
                expected=offline.expected,
                actual=offline.actual,
            )
        entries = self.admin(
            "GET", f"/admin/v1/audit?after={max(0, offline.entries - 200)}&limit=200"
        )
        outcomes: dict[str, int] = {}
        for e in entries.get("entries", []):
            if isinstance(e, dict):
                k = f"{e.get('action')}:{e.get('outcome')}"
                outcomes[k] = outcomes.get(k, 0) + 1
        r.facts.update(
            entries=offline.entries,
            head_seq=offline.head_seq,
            head_hash=offline.head_hash,
            outcomes=outcomes,
            via=["GET /admin/v1/audit/verify", f"nacre audit verify --data-dir {self.server_dir}"],
        )
        self.say(f"{offline.entries} entries chained, head [cyan]{offline.head_hash}[/]")
        for k, n in sorted(outcomes.items()):
            self.say(f"[dim]{n:3d} x {escape(k)}[/]")
        self.say("verified by GET /admin/v1/audit/verify and offline (nacre audit verify)")

    def run(self) -> bool:
        ok = self.step(
            "Start the key broker beside a simulated SGX platform",
            "service up on loopback, simulation trust on",
            self.stack_up,
        )
        ok = ok and self.step(
            "Measure the model server and register its model key",
            "model key stored with its release policy",
            self.register,
        )
        if ok:
            self.step(
                "(a) The measured workload attests and receives its model key",
                "key released, model decrypted",
                self.attest_and_receive,
            )
            self.step(
                "(b) A modified workload is refused",
                "refused, with the failed check named",
                self.refuse_modified,
            )
            self.step(
                "(c) A key signs inside the service",
                "signed for the attested workload only; signature verifies",
                self.sign_inside,
            )
            self.step("(d) The audit log verifies", "hash chain intact", self.audit)
        return len(self.steps) == STEP_COUNT and all(s.ok for s in self.steps)


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _signing_policy(mrenclave: str) -> str:
    """The signing key's policy: only the measured model server may have things signed."""
    return (
        "version: 1\n"
        "rules:\n"
        "  - name: mrenclave\n"
        f"    expr: claims.mrenclave == '{mrenclave}'\n"
        "    message: only the measured tiny-llm model server may sign with this key\n"
    )


def _release_policy(mrenclave: str) -> str:
    """The model key's release policy: named CEL rules, so a refusal names the one that failed."""
    return (
        "version: 1\n"
        "rules:\n"
        "  - name: mrenclave\n"
        f"    expr: claims.mrenclave == '{mrenclave}'\n"
        "    message: only the measured tiny-llm model server may receive its key\n"
        "  - name: isv_svn\n"
        "    expr: claims.isv_svn >= 1\n"
        "    message: the model server must be ISVSVN 1 or newer\n"
    )


def _run(root: Path, ui: _Ui) -> tuple[bool, Demo | None]:
    platform = SimPlatform.load_or_init(root / "platform")
    config = server_config(root / "server", platform)
    server = LocalServer(_create_app(config))
    with ui.status("starting the service ..."):
        server.start()
    demo = Demo(root, ui, platform, server.url)
    try:
        return demo.run(), demo
    finally:
        demo.close()
        server.stop()


def demo_command(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Keep the demo's state here (default: a temporary dir)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary object.")] = False,
) -> None:
    """The key broker end to end: attest, release a model key, refuse a modified workload, sign
    inside the service, verify the audit log."""
    ui = _Ui(quiet=as_json)
    temp = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="nacre-demo-")) if data_dir is None else data_dir
    started = time.monotonic()
    ui.print("[bold]nacre demo[/]: a model key released only to the measured model server")
    try:
        root.mkdir(parents=True, exist_ok=True)
        ok, demo = _run(root, ui)
    except (NacreError, OSError) as exc:
        error = (
            exc.to_dict()
            if isinstance(exc, NacreError)
            else {"code": "DEMO_IO", "message": f"{type(exc).__name__}: {exc}"}
        )
        if as_json:
            sys.stdout.write(json.dumps({"ok": False, "error": error}, indent=2) + "\n")
        else:
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[bold red]error[/]: {escape(str(error['message']))}"
            )
        raise typer.Exit(2) from None
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)
    steps = demo.steps if demo is not None else []
    summary = {
        "ok": ok,
        "url": demo.url if demo is not None else None,
        "data_dir": None if temp else str(root),
        "seconds": round(time.monotonic() - started, 3),
        "steps": [s.to_dict() for s in steps],
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        verdict = (
            "[bold green]every step behaved as expected[/]"
            if ok
            else "[bold red]a step did not behave as expected[/]"
        )
        where = "" if temp else f"; state kept in {escape(str(root))}"
        ui.print(f"\n{verdict} ({summary['seconds']:.1f}s{where})")
    raise typer.Exit(0 if ok else 1)
