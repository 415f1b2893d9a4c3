"""The mutating half: turn a confidential pod into one that runs sandboxed, with its TEE wired in.

For a pod that asks for confidential computing the patch

1. sets ``spec.runtimeClassName`` to the configured sandboxed class when the pod names none;
2. for SGX (``nacre.dev/tee``, default ``sgx``): requests and limits the EPC of
   ``nacre.dev/epc-mib`` on the **first app container** (``spec.containers[0]``: the enclave
   runs there; the other containers are helpers and get no EPC, so the scheduler books the
   pod's EPC once), plus the provisioning resource when ``nacre.dev/sgx-provision: "true"``,
   and mounts the AESM socket directory (hostPath ``/var/run/aesmd``, read-only) into it;
3. adds ``NACRE_KBS_URL`` and ``NACRE_TEE`` to every init and app container that does not set
   them already (a user's value is never overwritten);
4. requires nodes labelled ``nacre.dev/tee In [<tee>]`` and ``nacre.dev/sandbox-runtime Exists``
   (a TEE alone is not enough: the node must also run a sandbox runtime), ANDed into every
   existing required node-selector term;
5. with ``nacre.dev/secrets``: an in-memory emptyDir ``nacre-secrets``, mounted read-only at
   ``/run/nacre/secrets`` in every app container, filled by the init container
   ``nacre-init-secrets``, which runs first and fetches each secret through the KBS.

Every step checks the pod first and adds only what is missing, so mutating an already mutated
pod yields no operations (``reinvocationPolicy: IfNeeded`` is safe). JSON pointers escape ``~``
and ``/`` (RFC 6901); missing parent objects and arrays are created by the operation itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Final

from nacre.k8s.webhook.config import (
    AESM_DIR,
    AESM_VOLUME,
    ENV_KBS_URL,
    ENV_SIM_DIR,
    ENV_SIM_TEE,
    ENV_TEE,
    INIT_CONTAINER,
    INIT_CONTAINER_UID,
    NODE_LABEL_SANDBOX,
    NODE_LABEL_TEE,
    SECRETS_DIR,
    SECRETS_VOLUME,
    SECRETS_VOLUME_SIZE,
    SIM_DIR,
    SIM_VOLUME,
    WebhookConfig,
)
from nacre.k8s.webhook.kbsca import ENV_KBS_CA_PEM
from nacre.k8s.webhook.pod import (
    Intent,
    Violation,
    container_list,
    list_at,
    object_at,
    read_intent,
    spec_of,
)
from nacre.k8s.webhook.review import MalformedReviewError, shown

__all__ = ["JsonPatch", "escape_token", "mutate_pod"]

JsonPatch = list[dict[str, Any]]
Token = str | int

_REQUIRED: Final = "requiredDuringSchedulingIgnoredDuringExecution"


def escape_token(token: Token) -> str:
    """One JSON-pointer reference token (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def _pointer(tokens: Sequence[Token]) -> str:
    return "".join("/" + escape_token(t) for t in tokens)


class _Patch:
    """JSONPatch operations recorded while the same changes are made to a private copy of the
    pod, so each step sees what the earlier ones added (indices stay right)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._doc: dict[str, Any] = copy.deepcopy(dict(doc))
        self.ops: JsonPatch = []

    def _emit(self, op: str, tokens: Sequence[Token], value: Any) -> None:
        self.ops.append({"op": op, "path": _pointer(tokens), "value": copy.deepcopy(value)})

    def set(self, tokens: Sequence[Token], value: Any) -> None:
        """Make ``tokens`` hold ``value``, creating missing parent objects (object keys only)."""
        node: Any = self._doc
        for i, token in enumerate(tokens):
            if isinstance(token, int):
                node = node[token]
                continue
            current = node.get(token)
            if i == len(tokens) - 1:
                if current == value and token in node:
                    return
                self._emit("replace" if current is not None else "add", tokens, value)
                node[token] = copy.deepcopy(value)
                return
            if current is None:
                nested = value
                for later in reversed(tokens[i + 1 :]):
                    nested = {later: nested}
                self._emit("add", tokens[: i + 1], nested)
                node[token] = copy.deepcopy(nested)
                return
            node = current

    def get(self, tokens: Sequence[Token]) -> Any:
        node: Any = self._doc
        for token in tokens:
            if isinstance(token, int):
                node = node[token]
            else:
                node = node.get(token)
                if node is None:
                    return None
        return node

    def insert(self, list_tokens: Sequence[Token], index: int | None, value: Any) -> None:
        """Insert ``value`` at ``index`` (None: append) of the array at ``list_tokens``,
        creating the array when it is missing."""
        items = self.get(list_tokens)
        if items is None:
            self.set(list_tokens, [value])
            return
        at = len(items) if index is None else index
        self._emit("add", [*list_tokens, at], value)
        items.insert(at, copy.deepcopy(value))


def _named(items: Sequence[Mapping[str, Any]], name: str) -> bool:
    return any(item.get("name") == name for item in items)


def _checked_entries(container: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    entries = list_at(container, key, where) or []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise MalformedReviewError(
                f"{where}[{i}] is not a JSON object",
                field=f"{where}[{i}]",
                expected="an object",
                actual=shown(entry),
            )
    return entries


def _env_for(intent: Intent, config: WebhookConfig) -> list[dict[str, str]]:
    backend = config.backend_for(intent.tee)
    env = [{"name": ENV_KBS_URL, "value": config.kbs_url}, {"name": ENV_TEE, "value": backend}]
    if backend == "sim" and intent.tee in ("sgx", "tdx"):
        env.append({"name": ENV_SIM_TEE, "value": intent.tee})
    if backend == "sim" and config.sim_platform_secret is not None:
        env.append({"name": ENV_SIM_DIR, "value": SIM_DIR})
    return env


def _sim_mount() -> dict[str, Any]:
    return {"name": SIM_VOLUME, "mountPath": SIM_DIR, "readOnly": True}


def _sim_platform(patch: _Patch, config: WebhookConfig, containers: int) -> None:
    """Development clusters: the simulated platform the KBS trusts, in every container."""
    assert config.sim_platform_secret is not None
    _add_volume(
        patch,
        {
            "name": SIM_VOLUME,
            "secret": {"secretName": config.sim_platform_secret, "defaultMode": 0o444},
        },
    )
    for i in range(containers):
        _add_mount(patch, ["spec", "containers", i], _sim_mount(), f"spec.containers[{i}]")


def _add_env(patch: _Patch, base: list[Token], wanted: list[dict[str, str]], where: str) -> None:
    existing = _checked_entries(patch.get(base) or {}, "env", f"{where}.env")
    missing = [e for e in wanted if not _named(existing, e["name"])]
    if not missing:
        return
    if patch.get([*base, "env"]) is None:
        patch.set([*base, "env"], missing)
        return
    for entry in missing:
        patch.insert([*base, "env"], None, entry)


def _add_mount(patch: _Patch, base: list[Token], mount: dict[str, Any], where: str) -> None:
    mounts = _checked_entries(patch.get(base) or {}, "volumeMounts", f"{where}.volumeMounts")
    if _named(mounts, mount["name"]) or any(
        m.get("mountPath") == mount["mountPath"] for m in mounts
    ):
        return
    patch.insert([*base, "volumeMounts"], None, mount)


def _add_volume(patch: _Patch, volume: dict[str, Any]) -> None:
    volumes = _checked_entries(patch.get(["spec"]) or {}, "volumes", "spec.volumes")
    if not _named(volumes, volume["name"]):
        patch.insert(["spec", "volumes"], None, volume)


def _epc_resources(intent: Intent, config: WebhookConfig, *, provision: bool) -> dict[str, str]:
    """The extended resources an SGX container requests (and limits: extended resources cannot
    be overcommitted, so both are equal)."""
    flavour = config.epc
    assert intent.epc_mib is not None
    wanted = {flavour.name: flavour.mib_quantity(intent.epc_mib)}
    if flavour.enclave_resource is not None:
        wanted[flavour.enclave_resource] = "1"
    if provision and flavour.provision_resource is not None:
        wanted[flavour.provision_resource] = "1"
    return wanted


def _aesm_mount() -> dict[str, Any]:
    return {"name": AESM_VOLUME, "mountPath": AESM_DIR, "readOnly": True}


def _sgx(patch: _Patch, intent: Intent, config: WebhookConfig) -> None:
    first: list[Token] = ["spec", "containers", 0]
    wanted = _epc_resources(intent, config, provision=intent.provision)
    resources = object_at(patch.get(first), "resources", "spec.containers[0].resources") or {}
    for section in ("requests", "limits"):
        object_at(resources, section, f"spec.containers[0].resources.{section}")
        for name, quantity in wanted.items():
            patch.set([*first, "resources", section, name], quantity)
    _add_volume(patch, {"name": AESM_VOLUME, "hostPath": {"path": AESM_DIR, "type": "Directory"}})
    _add_mount(patch, first, _aesm_mount(), "spec.containers[0]")


def _affinity(
    patch: _Patch, intent: Intent, spec: Mapping[str, Any], config: WebhookConfig
) -> None:
    wanted: list[dict[str, Any]] = [
        {"key": NODE_LABEL_TEE, "operator": "In", "values": [intent.tee]},
        {"key": NODE_LABEL_SANDBOX, "operator": "Exists"},
    ]
    if config.simulated:  # any node with the sandboxed runtime: the TEE is simulated
        wanted = wanted[1:]
    base: list[Token] = ["spec", "affinity", "nodeAffinity", _REQUIRED, "nodeSelectorTerms"]
    affinity = object_at(spec, "affinity", "spec.affinity") or {}
    node = object_at(affinity, "nodeAffinity", "spec.affinity.nodeAffinity") or {}
    required = object_at(node, _REQUIRED, f"spec.affinity.nodeAffinity.{_REQUIRED}") or {}
    where = f"spec.affinity.nodeAffinity.{_REQUIRED}.nodeSelectorTerms"
    terms = list_at(required, "nodeSelectorTerms", where) or []
    if not terms:
        patch.set(base, [{"matchExpressions": wanted}])
        return
    for i, term in enumerate(terms):
        if not isinstance(term, dict):
            raise MalformedReviewError(
                f"{where}[{i}] is not a JSON object",
                field=f"{where}[{i}]",
                expected="a node selector term",
                actual=shown(term),
            )
        have = list_at(term, "matchExpressions", f"{where}[{i}].matchExpressions")
        missing = [e for e in wanted if have is None or e not in have]
        if have is None:
            patch.set([*base, i, "matchExpressions"], missing)
            continue
        for expression in missing:
            patch.insert([*base, i, "matchExpressions"], None, expression)


def _run_as(spec: Mapping[str, Any], first: Mapping[str, Any]) -> int:
    """The init container's uid: the app's, so it can read the 0400 files (else 65532)."""
    for holder, where in ((first, "spec.containers[0]"), (spec, "spec")):
        context = object_at(holder, "securityContext", f"{where}.securityContext") or {}
        uid = context.get("runAsUser")
        if isinstance(uid, int) and not isinstance(uid, bool) and uid > 0:
            return uid
    return INIT_CONTAINER_UID


def _init_container(intent: Intent, config: WebhookConfig, uid: int) -> dict[str, Any]:
    command = ["nacre", "k8s", "init-secrets", "--kbs-url", config.kbs_url]
    for spec in intent.secrets:
        command += ["--secret", str(spec)]
    mounts: list[dict[str, Any]] = [{"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR}]
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "command": command,
        "env": _env_for(intent, config),
    }
    if config.kbs_ca is not None:
        container["env"].append({"name": ENV_KBS_CA_PEM, "value": config.kbs_ca.pem()})
    if config.sim_platform_secret is not None:
        mounts.append(_sim_mount())
    if intent.tee == "sgx" and not config.simulated:
        # It quotes too: the same EPC (init containers do not add to the pod's total, which is
        # the larger of the biggest init container and the sum of the app containers).
        wanted = _epc_resources(intent, config, provision=False)
        container["resources"] = {"requests": dict(wanted), "limits": dict(wanted)}
        mounts.append(_aesm_mount())
    container["volumeMounts"] = mounts
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def _secrets(patch: _Patch, intent: Intent, config: WebhookConfig, spec: Mapping[str, Any]) -> None:
    _add_volume(
        patch,
        {
            "name": SECRETS_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": SECRETS_VOLUME_SIZE},
        },
    )
    mount = {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True}
    for i in range(len(container_list(spec, "containers"))):
        _add_mount(patch, ["spec", "containers", i], mount, f"spec.containers[{i}]")
    inits = container_list(spec, "initContainers")
    if not _named(inits, INIT_CONTAINER):
        uid = _run_as(spec, container_list(spec, "containers")[0])
        patch.insert(["spec", "initContainers"], 0, _init_container(intent, config, uid))


def mutate_pod(pod: Mapping[str, Any], config: WebhookConfig) -> tuple[JsonPatch, list[Violation]]:
    """The JSONPatch that makes ``pod`` a confidential pod, or the violations that prevent it
    (unusable annotations, no container). Empty patch and no violations: nothing to do."""
    spec = spec_of(pod)
    intent, problems = read_intent(pod, config)
    containers = container_list(spec, "containers")
    inits = container_list(spec, "initContainers")
    if not containers:
        problems.insert(
            0, Violation("spec.containers is empty: a pod needs at least one container", True)
        )
    runtime_class = spec.get("runtimeClassName")
    if runtime_class is not None and not isinstance(runtime_class, str):
        raise MalformedReviewError(
            "spec.runtimeClassName is not a string",
            field="spec.runtimeClassName",
            expected="a string",
            actual=shown(runtime_class),
        )
    if problems:
        return [], problems
    patch = _Patch(pod)
    if not runtime_class:
        patch.set(["spec", "runtimeClassName"], config.runtime_class)
    if intent.tee == "sgx" and not config.simulated:
        _sgx(patch, intent, config)
    if config.sim_platform_secret is not None:
        _sim_platform(patch, config, len(containers))
    env = _env_for(intent, config)
    for key, items in (("initContainers", inits), ("containers", containers)):
        for i in range(len(items)):
            _add_env(patch, ["spec", key, i], env, f"spec.{key}[{i}]")
    _affinity(patch, intent, spec, config)
    if intent.secrets:
        _secrets(patch, intent, config, spec)
    return patch.ops, []
