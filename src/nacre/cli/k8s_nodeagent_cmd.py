"""``nacre k8s node-agent`` and ``nacre k8s webhook-certs``: the two API-server clients.

node-agent runs until SIGTERM / SIGINT and then exits 0; with ``--once`` it makes one pass and
exits 0 when the node's labels are current, 1 when the pass failed. webhook-certs is a Job: exit 0
when the Secret and every caBundle are current, 1 on API errors (a missing webhook configuration,
403 naming the missing RBAC verb, ...). Both exit 2 on usage errors.

Where the API server is: ``--api-server URL`` (with ``--token-file`` / ``--api-ca-file``), else
``--kubeconfig`` / ``$KUBECONFIG``, else the pod's service account.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from nacre.cli.collateral_cmd import sim_trust
from nacre.cli.k8s_logs import JsonLogOpt, LogLevelOpt, configure_logging, exit_with
from nacre.errors import NacreError, UsageError
from nacre.k8s.apiclient import KubernetesApiError, build_api_client
from nacre.k8s.nodeagent import DEFAULT_INTERVAL_SECONDS, AgentConfig, CollateralSource, NodeAgent
from nacre.k8s.webhookcerts import (
    CERT_VALIDITY,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    DEFAULT_SECRET,
    DEFAULT_SERVICE,
    DEFAULT_WEBHOOK_CONFIG,
    RENEW_BEFORE,
    WebhookCertsConfig,
    ensure_with_retries,
)

__all__ = ["node_agent_command", "register", "webhook_certs_command"]

ApiServerOpt = Annotated[
    str | None,
    typer.Option(
        "--api-server",
        envvar="NACRE_K8S_API_SERVER",
        help="API server URL (default: --kubeconfig, else the in-cluster service account).",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file", envvar="NACRE_K8S_TOKEN_FILE", help="Bearer token for --api-server."
    ),
]
ApiCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-ca-file", envvar="NACRE_K8S_API_CA_FILE", help="CA certificate for --api-server."
    ),
]
KubeconfigOpt = Annotated[
    Path | None,
    typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file to use."),
]


def node_agent_command(
    node_name: Annotated[
        str,
        typer.Option(
            "--node-name",
            envvar=["NACRE_K8S_NODE_NAME", "NODE_NAME"],
            help="This node's name (the downward API's spec.nodeName, as env NODE_NAME).",
        ),
    ],
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            envvar="NACRE_K8S_INTERVAL",
            min=0.1,
            help="Seconds between passes.",
        ),
    ] = DEFAULT_INTERVAL_SECONDS,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            envvar="NACRE_K8S_ROOT",
            help="The host's root (/proc, /sys, /dev, shim directories) as mounted in the pod.",
        ),
    ] = Path("/"),
    once: Annotated[
        bool, typer.Option("--once", help="One pass, then exit (0 ok, 1 failed).")
    ] = False,
    pccs: Annotated[
        str | None,
        typer.Option(
            "--pccs",
            envvar="NACRE_K8S_PCCS",
            help="Intel PCS/PCCS URL: verify a fresh quote to label the TCB status.",
        ),
    ] = None,
    pccs_ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--pccs-ca-bundle", envvar="NACRE_K8S_PCCS_CA_BUNDLE", help="CA for a private PCCS."
        ),
    ] = None,
    trust_sim: Annotated[
        bool,
        typer.Option(
            "--trust-sim",
            envvar="NACRE_K8S_TRUST_SIM",
            help="Verify against nacre's simulation root (NACRE_TEE=sim test clusters).",
        ),
    ] = False,
    sim_dir: Annotated[
        Path | None,
        typer.Option("--sim-dir", help="Simulated platform whose root --trust-sim trusts."),
    ] = None,
    api_server: ApiServerOpt = None,
    token_file: TokenFileOpt = None,
    api_ca_file: ApiCaOpt = None,
    kubeconfig: KubeconfigOpt = None,
    as_json: JsonLogOpt = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Publish this node's TEE facts as nacre.dev/ labels and annotations."""
    configure_logging(as_json, log_level)
    try:
        collateral = None
        if trust_sim and pccs is None:
            raise UsageError(
                "--trust-sim only applies to the TCB status lookup, which needs --pccs",
                field="--trust-sim",
                expected="--pccs URL as well",
                actual="no --pccs",
            )
        if pccs is not None:
            trust = sim_trust(sim_dir) if trust_sim else None
            collateral = CollateralSource(pccs, ca_bundle=pccs_ca_bundle, trust=trust)
        config = AgentConfig(
            node_name=node_name, root=root, interval=interval, collateral=collateral
        )
        if not root.is_dir():
            raise UsageError(
                f"{root} is not a directory",
                field="--root",
                expected="the host's root directory as mounted in the pod",
                actual=str(root),
            )
        api = build_api_client(
            server=api_server, token_file=token_file, ca_file=api_ca_file, kubeconfig=kubeconfig
        )
    except NacreError as exc:
        raise exit_with(exc, 2, as_json=as_json) from None

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with api:
            ok = NodeAgent(api, config).run(stop, once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(0 if ok or not once else 1)


def webhook_certs_command(
    namespace: Annotated[
        str,
        typer.Option("--namespace", envvar="NACRE_K8S_NAMESPACE", help="The webhook's namespace."),
    ] = DEFAULT_NAMESPACE,
    service: Annotated[
        str, typer.Option("--service", envvar="NACRE_K8S_SERVICE", help="The webhook's Service.")
    ] = DEFAULT_SERVICE,
    secret: Annotated[
        str,
        typer.Option("--secret", envvar="NACRE_K8S_SECRET", help="The kubernetes.io/tls Secret."),
    ] = DEFAULT_SECRET,
    webhook_config: Annotated[
        str,
        typer.Option(
            "--webhook-config",
            envvar="NACRE_K8S_WEBHOOK_CONFIG",
            help="Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle is "
            "set; empty: issue the Service's certificate only (e.g. the KBS's).",
        ),
    ] = DEFAULT_WEBHOOK_CONFIG,
    cluster_domain: Annotated[
        str,
        typer.Option(
            "--cluster-domain", envvar="NACRE_K8S_CLUSTER_DOMAIN", help="The cluster's DNS domain."
        ),
    ] = DEFAULT_CLUSTER_DOMAIN,
    validity_days: Annotated[
        int,
        typer.Option(
            "--validity-days",
            envvar="NACRE_K8S_VALIDITY_DAYS",
            min=2,
            help="Lifetime of a new CA and serving certificate.",
        ),
    ] = CERT_VALIDITY.days,
    renew_before_days: Annotated[
        int,
        typer.Option(
            "--renew-before-days",
            envvar="NACRE_K8S_RENEW_BEFORE_DAYS",
            min=1,
            help="Renew when the certificate has this little left.",
        ),
    ] = RENEW_BEFORE.days,
    api_server: ApiServerOpt = None,
    token_file: TokenFileOpt = None,
    api_ca_file: ApiCaOpt = None,
    kubeconfig: KubeconfigOpt = None,
    as_json: JsonLogOpt = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Issue (or keep) the webhook's TLS Secret and set caBundle on its configurations."""
    configure_logging(as_json, log_level)
    try:
        config = WebhookCertsConfig(
            namespace=namespace,
            service=service,
            secret=secret,
            webhook_config=webhook_config,
            cluster_domain=cluster_domain,
            validity=timedelta(days=validity_days),
            renew_before=timedelta(days=renew_before_days),
        )
        api = build_api_client(
            server=api_server, token_file=token_file, ca_file=api_ca_file, kubeconfig=kubeconfig
        )
    except NacreError as exc:
        raise exit_with(exc, 2, as_json=as_json) from None
    try:
        with api:
            result = ensure_with_retries(api, config)
    except KubernetesApiError as exc:
        raise exit_with(exc, 1, as_json=as_json) from None
    except NacreError as exc:
        raise exit_with(exc, 1 if exc.code.startswith("K8S_") else 2, as_json=as_json) from None
    if as_json:
        out = {
            "ok": True,
            "action": result.action,
            "reason": result.reason,
            "not_after": result.not_after.isoformat(),
            "patched": list(result.patched),
            "error": None,
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"[bold green]{result.action}[/] Secret {escape(f'{namespace}/{secret}')}: "
        f"{escape(result.reason)}"
    )
    for what in result.patched or ("no caBundle needed a change",):
        console.print(f"  caBundle: {escape(what)}")


def register(app: typer.Typer) -> None:
    """Add ``node-agent`` and ``webhook-certs`` to the ``nacre k8s`` group."""
    app.command("node-agent")(node_agent_command)
    app.command("webhook-certs")(webhook_certs_command)
