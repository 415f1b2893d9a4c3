"""``nacre k8s device-plugin``: the SGX EPC and provisioning device plugin (kubelet API v1beta1).

Runs in the foreground until SIGTERM or SIGINT, then stops its gRPC servers, removes its sockets
and exits 0. Exit 2 on usage errors (unknown resource name, missing plugin directory, SGX present
but EPC size unknown without ``--epc-mib``), 1 when the kubelet refuses the registration.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from nacre.cli.k8s_logs import JsonLogOpt, LogLevelOpt, configure_logging, exit_with
from nacre.errors import NacreError
from nacre.k8s.deviceplugin import (
    DEFAULT_EPC_RESOURCE,
    DEFAULT_PLUGIN_DIR,
    EPC_RESOURCE_NAMES,
    POLL_INTERVAL,
    PROVISION_POOL_SIZE,
    DevicePluginRunner,
    PluginConfig,
    RegistrationRejectedError,
    build_pools,
)

__all__ = ["device_plugin_command", "register"]


def device_plugin_command(
    resource_name: Annotated[
        str,
        typer.Option(
            "--resource-name",
            envvar="NACRE_K8S_RESOURCE_NAME",
            help="EPC resource to advertise (1 device = 1 MiB): " + ", ".join(EPC_RESOURCE_NAMES),
        ),
    ] = DEFAULT_EPC_RESOURCE,
    plugin_dir: Annotated[
        Path,
        typer.Option(
            "--plugin-dir",
            envvar="NACRE_K8S_PLUGIN_DIR",
            help="The kubelet's device-plugin directory (holds kubelet.sock).",
        ),
    ] = DEFAULT_PLUGIN_DIR,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            envvar="NACRE_K8S_ROOT",
            help="Discover SGX (sysfs EPC, /dev/sgx_*, /var/run/aesmd) under this directory.",
        ),
    ] = Path("/"),
    epc_mib: Annotated[
        int | None,
        typer.Option(
            "--epc-mib",
            envvar="NACRE_K8S_EPC_MIB",
            min=0,
            help="EPC size in MiB (default: sysfs sgx_total_bytes); needed on kernels < 5.17.",
        ),
    ] = None,
    provision_devices: Annotated[
        int,
        typer.Option(
            "--provision-devices",
            envvar="NACRE_K8S_PROVISION_DEVICES",
            min=0,
            help="Size of the nacre.dev/sgx-provision pool (pods that may hold it at once).",
        ),
    ] = PROVISION_POOL_SIZE,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            envvar="NACRE_K8S_POLL_INTERVAL",
            min=0.01,
            help="Seconds between device-health and kubelet-restart checks.",
        ),
    ] = POLL_INTERVAL,
    as_json: JsonLogOpt = False,
    log_level: LogLevelOpt = "info",
    unsafe_fake_devices: Annotated[
        bool,
        typer.Option(
            "--unsafe-fake-devices",
            envvar="NACRE_K8S_UNSAFE_FAKE_DEVICES",
            help="Accept regular files as SGX device nodes under --root (tests and demos on "
            "machines without SGX; never on a real node).",
        ),
    ] = False,
) -> None:
    """Advertise SGX EPC (MiB devices) and /dev/sgx_provision to the kubelet."""
    configure_logging(as_json, log_level)
    config = PluginConfig(
        plugin_dir=plugin_dir,
        root=root,
        resource_name=resource_name,
        epc_mib=epc_mib,
        provision_devices=provision_devices,
        poll_interval=poll_interval,
        unsafe_fake_devices=unsafe_fake_devices,
    )
    try:
        runner = DevicePluginRunner(config, build_pools(config))
    except NacreError as exc:
        raise exit_with(exc, 2) from None

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("stopping", extra={"signal": signal.Signals(signum).name})
        runner.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        runner.run()
    except RegistrationRejectedError as exc:
        raise exit_with(exc, 1) from None
    except NacreError as exc:
        raise exit_with(exc, 2) from None
    raise typer.Exit(0)


def register(app: typer.Typer) -> None:
    """Add ``device-plugin`` to the ``nacre k8s`` group."""
    app.command("device-plugin")(device_plugin_command)
