"""``nacre k8s``: the cluster-side processes (device plugin, node agent, admission webhook)."""

from __future__ import annotations

import typer

from nacre.cli.k8s_deviceplugin_cmd import register as register_deviceplugin
from nacre.cli.k8s_nodeagent_cmd import register as register_nodeagent
from nacre.cli.k8s_webhook_cmd import register as register_webhook

__all__ = ["k8s_app"]

k8s_app = typer.Typer(
    help="Run nacre's Kubernetes components (device plugin, node agent, admission webhook).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@k8s_app.callback()
def _k8s() -> None:
    """Cluster-side processes; each runs in the foreground until SIGTERM."""


# Each component module defines ``register(app)`` adding its command(s); one line per component.
register_deviceplugin(k8s_app)
register_webhook(k8s_app)
register_nodeagent(k8s_app)
