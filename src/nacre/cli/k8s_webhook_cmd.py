"""``nacre k8s webhook`` (the admission webhook over TLS) and ``nacre k8s init-secrets`` (the init
container the webhook injects into confidential pods).

``webhook`` runs in the foreground until SIGTERM; exit 2 on usage errors (bad setting, certificate
that does not load). ``init-secrets`` exits 0 when every secret was written, 1 when one could not
be fetched or written (the message names the resource), 2 on usage errors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from nacre.cli.k8s_logs import JsonLogOpt, LogLevelOpt, configure_logging, exit_with
from nacre.errors import NacreError
from nacre.k8s.initsecrets import DEFAULT_OUT_DIR, fetch_secrets, parse_secret_list
from nacre.k8s.webhook import (
    DEFAULT_INIT_IMAGE,
    DEFAULT_KBS_URL,
    DEFAULT_RUNTIME_CLASS,
    DEFAULT_SANDBOXED_CLASSES,
    EPC_FLAVOURS,
    RELOAD_CHECK_SECONDS,
    ReloadingCertificate,
    WebhookConfig,
    create_app,
)
from nacre.k8s.webhook.kbsca import KbsCaFile

__all__ = ["init_secrets_command", "register", "webhook_command"]

DEFAULT_PORT = 8443


def _classes(text: str) -> frozenset[str]:
    return frozenset(c.strip() for c in text.split(",") if c.strip())


def webhook_command(
    tls_cert: Annotated[
        Path,
        typer.Option("--tls-cert", envvar="NACRE_K8S_TLS_CERT", help="PEM certificate chain."),
    ] = Path("/etc/nacre/webhook-tls/tls.crt"),
    tls_key: Annotated[
        Path, typer.Option("--tls-key", envvar="NACRE_K8S_TLS_KEY", help="PEM private key.")
    ] = Path("/etc/nacre/webhook-tls/tls.key"),
    host: Annotated[
        str, typer.Option("--host", envvar="NACRE_K8S_HOST", help="Address to listen on.")
    ] = "0.0.0.0",  # noqa: S104 - the API server reaches the pod through its Service
    port: Annotated[
        int, typer.Option("--port", envvar="NACRE_K8S_PORT", min=1, max=65535, help="TCP port.")
    ] = DEFAULT_PORT,
    runtime_class: Annotated[
        str,
        typer.Option(
            "--runtime-class",
            envvar="NACRE_K8S_RUNTIME_CLASS",
            help="Sandboxed RuntimeClass given to confidential pods that name none.",
        ),
    ] = DEFAULT_RUNTIME_CLASS,
    sandboxed_classes: Annotated[
        str,
        typer.Option(
            "--sandboxed-classes",
            envvar="NACRE_K8S_SANDBOXED_CLASSES",
            help="Comma-separated RuntimeClasses that count as sandboxed (--runtime-class is "
            "always one).",
        ),
    ] = ",".join(sorted(DEFAULT_SANDBOXED_CLASSES)),
    kbs_url: Annotated[
        str,
        typer.Option(
            "--kbs-url", envvar="NACRE_K8S_KBS_URL", help="The KBS URL given to confidential pods."
        ),
    ] = DEFAULT_KBS_URL,
    kbs_ca_file: Annotated[
        Path | None,
        typer.Option(
            "--kbs-ca-file",
            envvar="NACRE_K8S_KBS_CA_FILE",
            help="PEM CA certificates of the KBS, given to init containers (NACRE_KBS_CA_PEM).",
        ),
    ] = None,
    init_image: Annotated[
        str,
        typer.Option(
            "--init-image",
            envvar="NACRE_K8S_INIT_IMAGE",
            help="Image of the nacre-init-secrets init container.",
        ),
    ] = DEFAULT_INIT_IMAGE,
    epc_resource: Annotated[
        str,
        typer.Option(
            "--epc-resource",
            envvar="NACRE_K8S_EPC_RESOURCE",
            help="EPC resource SGX pods request: " + ", ".join(EPC_FLAVOURS),
        ),
    ] = "nacre.dev/sgx-epc-mib",
    tee_backend: Annotated[
        str | None,
        typer.Option(
            "--tee-backend",
            envvar="NACRE_K8S_TEE_BACKEND",
            help="NACRE_TEE for every confidential pod (sim on clusters without a TEE; default: "
            "gramine for SGX, tdx, snp).",
        ),
    ] = None,
    sim_platform_secret: Annotated[
        str | None,
        typer.Option(
            "--sim-platform-secret",
            envvar="NACRE_K8S_SIM_PLATFORM_SECRET",
            help="With --tee-backend sim: the Secret (in each pod's namespace) holding the "
            "simulated platform the KBS trusts; mounted at NACRE_SIM_DIR in every container.",
        ),
    ] = None,
    reload_interval: Annotated[
        float,
        typer.Option(
            "--reload-interval",
            envvar="NACRE_K8S_RELOAD_INTERVAL",
            min=0.0,
            help="Seconds between checks of the certificate files for rotation.",
        ),
    ] = RELOAD_CHECK_SECONDS,
    as_json: JsonLogOpt = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the admission webhook (AdmissionReview v1) over TLS, reloading a rotated certificate."""
    configure_logging(as_json, log_level)
    try:
        config = WebhookConfig(
            runtime_class=runtime_class,
            sandboxed_classes=_classes(sandboxed_classes),
            kbs_url=kbs_url,
            init_image=init_image,
            epc_resource=epc_resource,
            tee_backend=tee_backend,
            sim_platform_secret=sim_platform_secret,
            kbs_ca=KbsCaFile(kbs_ca_file) if kbs_ca_file is not None else None,
        )
        certificate = ReloadingCertificate(
            tls_cert,
            tls_key,
            check_interval=reload_interval,
            hint="mount the nacre-webhook-tls Secret (keys tls.crt, tls.key)",
        )
    except NacreError as exc:
        raise exit_with(exc, 2) from None
    import uvicorn

    def ssl_context(_config: Any, _default: Any) -> Any:
        return certificate.context

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            ssl_context_factory=ssl_context,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
    )
    server.run()


def init_secrets_command(
    secrets: Annotated[
        list[str],
        typer.Option(
            "--secret",
            envvar="NACRE_K8S_SECRETS",
            help="repo/type/tag=/run/nacre/secrets/<file>; repeat for each secret.",
        ),
    ],
    kbs_url: Annotated[
        str,
        typer.Option(
            "--kbs-url", envvar=["NACRE_K8S_KBS_URL", "NACRE_KBS_URL"], help="The KBS URL."
        ),
    ],
    out_dir: Annotated[
        str,
        typer.Option(
            "--out-dir", envvar="NACRE_K8S_OUT_DIR", help="Directory the secrets are written to."
        ),
    ] = DEFAULT_OUT_DIR,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", envvar="NACRE_K8S_CA_BUNDLE", help="Extra CA certificates (PEM)."
        ),
    ] = None,
    ca_pem: Annotated[
        str | None,
        typer.Option(
            "--ca-pem",
            envvar="NACRE_KBS_CA_PEM",
            help="The KBS's CA certificates as PEM text (the webhook injects this variable).",
        ),
    ] = None,
    as_json: JsonLogOpt = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Fetch each secret through the KBS with this pod's TEE (NACRE_TEE) and write it (0400)."""
    configure_logging(as_json, log_level)
    from nacre.sdk import KbsClient

    try:
        specs = parse_secret_list(secrets, out_dir)
        client = KbsClient(kbs_url, ca_bundle=ca_bundle, ca_data=ca_pem)
    except NacreError as exc:
        raise exit_with(exc, 2) from None
    try:
        with client:
            written = fetch_secrets(client, specs, out_dir=out_dir)
    except NacreError as exc:
        raise exit_with(exc, 1) from None
    logging.getLogger("nacre.k8s.initsecrets").info("all %d secrets written", len(written))


def register(app: typer.Typer) -> None:
    """Add ``webhook`` and ``init-secrets`` to the ``nacre k8s`` group."""
    app.command("webhook")(webhook_command)
    app.command("init-secrets")(init_secrets_command)
