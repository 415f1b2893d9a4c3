"""The Kubernetes manifests under ``deploy/``: every overlay renders with ``kubectl kustomize``,
every object validates against the API schemas of a current Kubernetes release (strict: unknown
fields fail), and the objects fit together (selectors, service accounts, webhook paths, RBAC,
security contexts, the ``nacre`` arguments the pods run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from typer.testing import CliRunner

from nacre.cli import app

REPO: Final = Path(__file__).resolve().parent.parent
DEPLOY: Final = REPO / "deploy"
DOCS: Final = REPO / "docs" / "deploy.md"
OVERLAYS: Final = ("dev-sim", "sgx-production")
#: The newest Kubernetes release whose schemas kubernetes-validate ships ("current").
K8S_VERSION: Final = kubernetes_validate.latest_version()
#: kustomize renders a few hundred lines; it never needs long.
KUSTOMIZE_TIMEOUT_SECONDS: Final = 60
NAMESPACE: Final = "nacre-system"
NACRE_IMAGE: Final = "ghcr.io/nacre-dev/nacre"
#: Pods that must run as root (the kubelet's device-plugin directory and Intel's aesmd image).
ROOT_PODS: Final = frozenset({"nacre-device-plugin", "nacre-aesmd"})
#: Objects the operator creates (never committed), each documented in docs/deploy.md; the
#: TLS Secrets of the webhook and the KBS are created by the nacre-webhook-certs Job.
EXTERNAL: Final = {
    "Secret": frozenset(
        {
            "nacre-webhook-tls",
            "nacre-kbs-tls",
            "nacre-database",
            "nacre-kbs-sealing",
            "nacre-kbs-kek",
            "nacre-sim-platform",
        }
    ),
    "ConfigMap": frozenset({"nacre-collateral-sgx"}),
}
WEBHOOK_PATHS: Final = {
    "MutatingWebhookConfiguration": {"/mutate", "/mutate/namespace"},
    "ValidatingWebhookConfiguration": {"/validate", "/validate/namespace", "/validate/untrusted"},
}
WORKLOAD_KINDS: Final = frozenset({"Deployment", "DaemonSet", "StatefulSet", "Job"})

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rendered:
    """One overlay rendered by ``kubectl kustomize``: its name and its objects."""

    overlay: str
    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> Iterator[Obj]:
        return (o for o in self.objects if o["kind"] in WORKLOAD_KINDS)


def render(overlay: str) -> Rendered:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the manifests cannot be rendered")
    proc = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_SECONDS,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    objects = tuple(d for d in yaml.safe_load_all(proc.stdout) if d is not None)
    assert objects, f"{overlay} rendered no objects"
    return Rendered(overlay, objects)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(str(request.param))


@pytest.fixture(scope="module")
def dev() -> Rendered:
    return render("dev-sim")


@pytest.fixture(scope="module")
def prod() -> Rendered:
    return render("sgx-production")


# -- helpers ------------------------------------------------------------------------------------


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def name_of(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector evaluated the way the API server does (absent = everything)."""
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def kbs(r: Rendered) -> tuple[Obj, Obj]:
    deployment = r.get("Deployment", "nacre")
    (container,) = [c for c in containers(deployment) if c["name"] == "nacre"]
    return deployment, container


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


# -- schema -------------------------------------------------------------------------------------


def test_every_object_validates_strictly(rendered: Rendered) -> None:
    errors = []
    for obj in rendered.objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{name_of(obj)}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_an_unknown_field(dev: Rendered) -> None:
    # The check above is only worth something if a typo'd field fails it.
    deployment = yaml.safe_load(yaml.safe_dump(dev.get("Deployment", "nacre")))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_everything_namespaced_lives_in_nacre_system(rendered: Rendered) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "RuntimeClass",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    for obj in rendered.objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], name_of(obj)
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{name_of(obj)}"
    assert [name_of(n) for n in rendered.of_kind("Namespace")] == [NAMESPACE]


# -- pods ---------------------------------------------------------------------------------------


def test_every_container_has_resources_and_a_locked_down_security_context(
    rendered: Rendered,
) -> None:
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        for c in containers(workload):
            where = f"{rendered.overlay} {name_of(workload)}/{c['name']}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), where
            sc = c.get("securityContext")
            assert sc is not None, f"{where}: no securityContext"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if name_of(workload) in ROOT_PODS:
                assert non_root is False, where
            else:
                assert non_root is True, where
                assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where


def test_images_are_pinned_by_tag(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for c in containers(workload):
            image = c["image"]
            _, sep, tag = image.rpartition(":")
            assert sep, f"{name_of(workload)}: {image} has no tag"
            assert "/" not in tag, f"{name_of(workload)}: {image} has no tag"
            assert tag != "latest", f"{name_of(workload)}: {image}"
            assert c.get("imagePullPolicy") != "Always", f"{name_of(workload)}: {image}"


def test_only_the_components_that_call_the_api_get_a_token(rendered: Rendered) -> None:
    needs_api = {"nacre-node-agent", "nacre-webhook-certs"}
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, name_of(sa)
    for workload in rendered.workloads():
        mounted = pod_spec(workload).get("automountServiceAccountToken")
        assert mounted is (name_of(workload) in needs_api), name_of(workload)


def test_service_selectors_match_a_pod_template_and_its_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [
            w
            for w in rendered.workloads()
            if selector_matches({"matchLabels": selector}, pod_labels(w))
        ]
        assert targets, f"Service {name_of(service)} selects no pod template"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            declared = {
                (p.get("name"), p["containerPort"])
                for w in targets
                for c in containers(w)
                for p in c.get("ports", [])
            }
            assert any(target in pair for pair in declared), f"{name_of(service)}: {target}"


def test_workload_selectors_match_their_own_templates(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        if workload["kind"] == "Job":
            continue
        assert selector_matches(workload["spec"]["selector"], pod_labels(workload))
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert any(
            selector_matches(pdb["spec"]["selector"], pod_labels(w)) for w in rendered.workloads()
        ), name_of(pdb)


def test_every_referenced_service_account_exists(rendered: Rendered) -> None:
    accounts = {name_of(sa) for sa in rendered.of_kind("ServiceAccount")}
    for workload in rendered.workloads():
        sa = pod_spec(workload).get("serviceAccountName")
        assert sa in accounts, f"{name_of(workload)} runs as missing ServiceAccount {sa}"
    for binding in [*rendered.of_kind("RoleBinding"), *rendered.of_kind("ClusterRoleBinding")]:
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", name_of(binding)
            assert subject["name"] in accounts, f"{name_of(binding)}: {subject['name']}"
            assert subject["namespace"] == NAMESPACE, name_of(binding)
        role_kind = binding["roleRef"]["kind"]
        assert [name_of(r) for r in rendered.of_kind(role_kind)].count(
            binding["roleRef"]["name"]
        ) == 1, f"{name_of(binding)} binds a missing {role_kind}"


def test_referenced_secrets_and_config_maps_exist_or_are_documented(rendered: Rendered) -> None:
    docs = DOCS.read_text("utf-8")
    for workload in rendered.workloads():
        refs: list[tuple[str, str]] = []
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "persistentVolumeClaim" in volume:
                refs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for c in containers(workload):
            for e in c.get("env", []):
                source = e.get("valueFrom", {})
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"]))
                if "configMapKeyRef" in source:
                    refs.append(("ConfigMap", source["configMapKeyRef"]["name"]))
        for kind, name in refs:
            if name in EXTERNAL.get(kind, frozenset()):
                assert name in docs, f"{kind} {name} is created by the operator but not documented"
            else:
                rendered.get(kind, name)


def test_nacre_arguments_reference_defined_env_vars(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for c in containers(workload):
            defined = set(env_of(c))
            for arg in c.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert var in defined, f"{name_of(workload)}: {arg} uses undefined ${var}"


def nacre_invocations(r: Rendered) -> Iterator[tuple[str, list[str]]]:
    for workload in r.workloads():
        for c in containers(workload):
            if c["image"].startswith(NACRE_IMAGE + ":"):
                assert "command" not in c, "the image's ENTRYPOINT is nacre; give args only"
                yield f"{name_of(workload)}/{c['name']}", list(c["args"])


def test_the_nacre_arguments_are_accepted_by_the_cli(rendered: Rendered) -> None:
    # --help is eager: click parses every option name (an unknown one fails) and then stops.
    runner = CliRunner()
    seen = set()
    for where, args in nacre_invocations(rendered):
        seen.add(tuple(a for a in args[:2] if not a.startswith("-")))
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"{where}: nacre {' '.join(args)}\n{result.output}"
    assert {
        ("serve",),
        ("k8s", "webhook"),
        ("k8s", "webhook-certs"),
        ("k8s", "device-plugin"),
        ("k8s", "node-agent"),
    } <= seen


def test_the_webhook_is_given_the_image_it_runs(rendered: Rendered) -> None:
    (container,) = containers(rendered.get("Deployment", "nacre-webhook"))
    assert f"--init-image={container['image']}" in container["args"]
    service = rendered.get("Service", "nacre")
    (port,) = service["spec"]["ports"]
    host = f"{name_of(service)}.{NAMESPACE}.svc:{port['port']}"
    assert f"--kbs-url=https://{host}" in container["args"]
    tee_backend = [a for a in container["args"] if a.startswith("--tee-backend")]
    assert tee_backend == (["--tee-backend=sim"] if rendered.overlay == "dev-sim" else [])


# -- RBAC ---------------------------------------------------------------------------------------


def test_rbac_is_least_privilege(rendered: Rendered) -> None:
    granted: dict[str, list[Obj]] = {}
    for role in [*rendered.of_kind("Role"), *rendered.of_kind("ClusterRole")]:
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{name_of(role)}: wildcard {field}"
            assert not {"escalate", "bind", "impersonate", "list", "watch", "delete"} & set(
                rule["verbs"]
            ), name_of(role)
            assert "nonResourceURLs" not in rule, name_of(role)
            granted.setdefault(name_of(role), []).append(rule)
    assert granted["nacre-node-agent"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    certs = [r for r in rendered.of_kind("Role") + rendered.of_kind("ClusterRole")]
    for role in certs:
        for rule in role["rules"]:
            if "secrets" in rule["resources"] and rule["verbs"] != ["create"]:
                assert rule["resourceNames"] == ["nacre-webhook-tls", "nacre-kbs-tls"], name_of(
                    role
                )
            if any(r.endswith("webhookconfigurations") for r in rule["resources"]):
                assert rule["resourceNames"] == ["nacre-webhook"], name_of(role)
                assert set(rule["verbs"]) <= {"get", "patch"}, name_of(role)
    assert set(granted) == {"nacre-node-agent", "nacre-webhook-certs"}


# -- admission webhooks -------------------------------------------------------------------------


def matching_paths(r: Rendered, ns_labels: dict[str, str], pod: dict[str, str]) -> set[str]:
    """The webhook paths the API server would call for a pod with these labels."""
    paths = set()
    for kind in WEBHOOK_PATHS:
        for hook in r.get(kind, "nacre-webhook")["webhooks"]:
            if selector_matches(hook.get("namespaceSelector"), ns_labels) and selector_matches(
                hook.get("objectSelector"), pod
            ):
                paths.add(hook["clientConfig"]["service"]["path"])
    return paths


def test_webhooks_call_the_webhook_service_on_its_paths_and_fail_closed(
    rendered: Rendered,
) -> None:
    service = rendered.get("Service", "nacre-webhook")
    (port,) = service["spec"]["ports"]
    (container,) = containers(rendered.get("Deployment", "nacre-webhook"))
    assert port["port"] == 443
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    assert port["targetPort"] == "https"
    assert "--port=8443" in container["args"]
    for kind, paths in WEBHOOK_PATHS.items():
        hooks = rendered.get(kind, "nacre-webhook")["webhooks"]
        assert {h["clientConfig"]["service"]["path"] for h in hooks} == paths
        assert len({h["name"] for h in hooks}) == len(hooks)
        for hook in hooks:
            ref = hook["clientConfig"]["service"]
            assert (ref["name"], ref["namespace"], ref.get("port", 443)) == (
                "nacre-webhook",
                NAMESPACE,
                443,
            )
            assert "caBundle" not in hook["clientConfig"], "the webhook-certs Job writes it"
            assert hook["failurePolicy"] == "Fail"
            assert hook["sideEffects"] == "None"
            assert hook["admissionReviewVersions"] == ["v1"]
            assert 1 <= hook["timeoutSeconds"] <= 15
            # Validation also sees updates and debug containers added to running pods.
            validating = kind == "ValidatingWebhookConfiguration"
            assert hook["rules"] == [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"] if validating else ["CREATE"],
                    "resources": ["pods", "pods/ephemeralcontainers"] if validating else ["pods"],
                    "scope": "Namespaced",
                }
            ]
            if kind == "MutatingWebhookConfiguration":
                assert hook["reinvocationPolicy"] == "IfNeeded"


@pytest.mark.parametrize(
    ("namespace", "pod", "expected"),
    [
        ({}, {"nacre.dev/confidential": "true"}, {"/mutate", "/validate"}),
        ({}, {"nacre.dev/confidential": "false"}, set()),
        ({}, {}, set()),
        (
            {"nacre.dev/confidential": "true"},
            {},
            {"/mutate/namespace", "/validate/namespace"},
        ),
        (
            {"nacre.dev/confidential": "true"},
            {"nacre.dev/confidential": "true"},
            {"/mutate", "/validate"},
        ),
        ({"nacre.dev/untrusted": "true"}, {}, {"/validate/untrusted"}),
        (
            {"nacre.dev/untrusted": "true"},
            {"nacre.dev/confidential": "true"},
            {"/mutate", "/validate", "/validate/untrusted"},
        ),
        (
            {"kubernetes.io/metadata.name": "nacre-system"},
            {"nacre.dev/confidential": "true"},
            set(),
        ),
        (
            {"kubernetes.io/metadata.name": "kube-system", "nacre.dev/untrusted": "true"},
            {"nacre.dev/confidential": "true"},
            set(),
        ),
    ],
)
def test_which_pods_reach_which_webhook_path(
    prod: Rendered, namespace: dict[str, str], pod: dict[str, str], expected: set[str]
) -> None:
    labels = {"kubernetes.io/metadata.name": "apps", **namespace}
    assert matching_paths(prod, labels, pod) == expected


# -- the KBS in each overlay --------------------------------------------------------------------


def test_dev_sim_runs_one_sqlite_replica_with_simulation_trust(dev: Rendered) -> None:
    deployment, container = kbs(dev)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--trust-sim" in container["args"]
    assert "--no-trust-sim" not in container["args"]
    assert not any(a.startswith("--database") for a in container["args"])
    assert env_of(container)["NACRE_TEE"]["value"] == "sim"
    (data,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "data"]
    assert set(data) == {"name", "persistentVolumeClaim"}
    pvc = dev.get("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert "--data-dir=" + mount["mountPath"] in container["args"]
    # The KBS and the workloads share one simulated platform (Secret nacre-sim-platform): the
    # KBS reads it at NACRE_SIM_DIR, the webhook mounts it into every confidential pod.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    sim_mount = mounts[env_of(container)["NACRE_SIM_DIR"]["value"]]
    assert sim_mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[sim_mount["name"]]["secret"]["secretName"] == "nacre-sim-platform"
    (hook,) = pod_spec(dev.get("Deployment", "nacre-webhook"))["containers"]
    assert "--tee-backend=sim" in hook["args"]
    assert "--sim-platform-secret=nacre-sim-platform" in hook["args"]


def test_production_runs_replicas_on_postgresql_without_simulation_trust(prod: Rendered) -> None:
    deployment, container = kbs(prod)
    assert deployment["spec"]["replicas"] >= 2
    args = container["args"]
    assert "--no-trust-sim" in args
    assert "--trust-sim" not in args
    assert "NACRE_TEE" not in env_of(container)
    # The URL (with its password) comes from a Secret through NACRE_DATABASE_URL, which
    # nacre serve reads: never in the manifest, never on the command line.
    assert not [a for a in args if a.startswith("--database")]
    ref = env_of(container)["NACRE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "nacre-database", "key": "url"}
    assert prod.of_kind("Secret") == [], "no Secret (and no password) is committed"
    assert any(a.startswith("--collateral=sgx=") for a in args)
    spec = pod_spec(deployment)
    assert spec["affinity"]["podAntiAffinity"]
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/lib/nacre/kek.json"]["readOnly"] is True
    assert env_of(container)["NACRE_SIM_DIR"]["value"] in mounts
    assert prod.get("Deployment", "nacre-webhook")["spec"]["replicas"] >= 2
    for name in ("nacre", "nacre-webhook"):
        assert prod.get("PodDisruptionBudget", name)["spec"] == {
            "minAvailable": 1,
            "selector": prod.get("Deployment", name)["spec"]["selector"],
        }


def test_the_kbs_is_probed_on_healthz(rendered: Rendered) -> None:
    _, container = kbs(rendered)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/healthz",
            "port": "https",
            "scheme": "HTTPS",
        }
    assert {"name": "https", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert "--port=8080" in container["args"]


def test_the_kbs_serves_https_with_the_jobs_certificate(rendered: Rendered) -> None:
    """Every overlay: TLS from nacre-kbs-tls (issued by the Job), whose CA the webhook injects."""
    deployment, container = kbs(rendered)
    args = container["args"]
    assert "--tls-cert=/etc/nacre/kbs-tls/tls.crt" in args
    assert "--tls-key=/etc/nacre/kbs-tls/tls.key" in args
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[mounts["/etc/nacre/kbs-tls"]["name"]]["secret"]["secretName"] == "nacre-kbs-tls"
    (job_kbs,) = [
        c
        for c in pod_spec(rendered.get("Job", "nacre-webhook-certs"))["containers"]
        if "--secret=nacre-kbs-tls" in c["args"]
    ]
    assert "--service=nacre" in job_kbs["args"]
    assert "--webhook-config=" in job_kbs["args"]
    webhook = pod_spec(rendered.get("Deployment", "nacre-webhook"))
    (hook,) = webhook["containers"]
    assert "--kbs-ca-file=/etc/nacre/kbs-ca/ca.crt" in hook["args"]
    assert any(a.startswith("--kbs-url=https://nacre.nacre-system.svc:8080") for a in hook["args"])
    (ca_volume,) = [
        v for v in webhook["volumes"] if v.get("secret", {}).get("secretName") == "nacre-kbs-tls"
    ]
    assert ca_volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never the key"


# -- node components ----------------------------------------------------------------------------


def host_paths(workload: Obj) -> dict[str, Obj]:
    """hostPath volumes by the path they are mounted at in the (single) container."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", []) if "hostPath" in v}
    (container,) = pod_spec(workload)["containers"]
    return {
        m["mountPath"]: volumes[m["name"]]["hostPath"]
        for m in container.get("volumeMounts", [])
        if m["name"] in volumes
    }


def test_the_device_plugin_reaches_the_kubelet_and_nothing_else(rendered: Rendered) -> None:
    ds = rendered.get("DaemonSet", "nacre-device-plugin")
    spec = pod_spec(ds)
    mounts = host_paths(ds)
    assert mounts["/var/lib/kubelet/device-plugins"]["path"] == "/var/lib/kubelet/device-plugins"
    assert mounts["/host/dev"]["path"] == "/dev"
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"]["nacre.dev/tee"] == "sgx"
    (container,) = spec["containers"]
    assert "--plugin-dir=/var/lib/kubelet/device-plugins" in container["args"]
    assert "--root=/host" in container["args"]
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == ["/tmp", "/var/lib/kubelet/device-plugins"]


def test_the_node_agent_labels_its_own_node(rendered: Rendered) -> None:
    ds = rendered.get("DaemonSet", "nacre-node-agent")
    (container,) = pod_spec(ds)["containers"]
    assert "--node-name=$(NODE_NAME)" in container["args"]
    node_name = env_of(container)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert node_name == "spec.nodeName"
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] != "/tmp")


def test_aesmd_shares_its_socket_on_the_host(rendered: Rendered) -> None:
    ds = rendered.get("DaemonSet", "nacre-aesmd")
    spec = pod_spec(ds)
    socket = host_paths(ds)["/var/run/aesmd"]
    assert socket == {"path": "/var/run/aesmd", "type": "DirectoryOrCreate"}
    assert spec["nodeSelector"]["nacre.dev/tee"] == "sgx"
    (container,) = spec["containers"]
    # /dev/sgx_enclave and /dev/sgx_provision come from the device plugin, not from privilege.
    for resource in ("nacre.dev/sgx-epc-mib", "nacre.dev/sgx-provision"):
        assert container["resources"]["limits"][resource] == "1"
    config = rendered.get("ConfigMap", "nacre-aesmd-config")["data"]
    assert "ecdsa_256" in config["aesmd.conf"]
    qcnl = yaml.safe_load(config["sgx_default_qcnl.conf"])  # JSON is YAML
    assert qcnl["pccs_url"].startswith("https://")
    assert qcnl["use_secure_cert"] is True
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/aesmd.conf", "/etc/sgx_default_qcnl.conf"} <= mounted


def test_runtime_classes_carry_overhead_and_scheduling(rendered: Rendered) -> None:
    classes = {name_of(rc): rc for rc in rendered.of_kind("RuntimeClass")}
    assert set(classes) == {"kata", "rund"}
    for name, rc in classes.items():
        assert rc["handler"] == name
        assert {"cpu", "memory"} <= set(rc["overhead"]["podFixed"])
        assert rc["scheduling"]["nodeSelector"] == {"nacre.dev/sandbox-runtime": name}


def test_network_policies_deny_by_default_and_open_only_the_service_ports(
    rendered: Rendered,
) -> None:
    policies = {name_of(p): p["spec"] for p in rendered.of_kind("NetworkPolicy")}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress_ports = {
        name: sorted(port["port"] for rule in spec.get("ingress", []) for port in rule["ports"])
        for name, spec in policies.items()
    }
    assert {k: v for k, v in ingress_ports.items() if v} == {
        "nacre-kbs": [8080],
        "nacre-webhook": [8443],
    }
    assert policies["nacre-kbs"]["ingress"][0]["from"] == [{"namespaceSelector": {}}]
    postgres = [
        p
        for p in policies.values()
        if any(port["port"] == 5432 for rule in p.get("egress", []) for port in rule["ports"])
    ]
    assert len(postgres) == (1 if rendered.overlay == "sgx-production" else 0)


# -- docs/deploy.md -----------------------------------------------------------------------------


def test_the_documented_own_overlay_retags_every_nacre_image(tmp_path: Path) -> None:
    """docs/deploy.md's `my-cluster` overlay, rendered: every image and --init-image are yours."""
    docs = DOCS.read_text("utf-8")
    found = re.search(
        r"cat > deploy/overlays/my-cluster/kustomization\.yaml <<EOF\n(.*?)\nEOF\n", docs, re.S
    )
    assert found is not None, "docs/deploy.md no longer shows the my-cluster overlay"
    registry = "registry.test/platform"
    text = found.group(1).replace("$REGISTRY", registry)
    overlay = os.path.relpath(DEPLOY / "overlays" / "sgx-production", tmp_path)
    text = text.replace("../sgx-production", overlay)
    (tmp_path / "kustomization.yaml").write_text(text, "utf-8")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the manifests cannot be rendered")
    proc = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_SECONDS,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    r = Rendered("my-cluster", tuple(d for d in yaml.safe_load_all(proc.stdout) if d))
    images = {c["image"] for w in r.workloads() for c in containers(w)}
    assert images == {f"{registry}/nacre:0.1.0", f"{registry}/sgx-aesmd:0.34.0"}
    (webhook,) = containers(r.get("Deployment", "nacre-webhook"))
    assert f"--init-image={registry}/nacre:0.1.0" in webhook["args"]
    assert not [a for a in webhook["args"] if NACRE_IMAGE in a]
