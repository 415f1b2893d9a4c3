"""The ``nacre`` command. Thin: parsing arguments, calling the library, rendering results."""

from __future__ import annotations

import typer

from nacre.cli.audit_cmd import audit_app
from nacre.cli.collateral_cmd import collateral_app
from nacre.cli.demo_cmd import demo_command
from nacre.cli.ear_key_cmd import ear_key_app
from nacre.cli.k8s_cmd import k8s_app
from nacre.cli.key_cmd import key_app
from nacre.cli.node_cmd import node_app
from nacre.cli.policy_cmd import policy_app
from nacre.cli.secret_cmd import secret_app
from nacre.cli.serve_cmd import serve_command
from nacre.cli.sim_cmd import sim_app
from nacre.cli.verify_cmd import verify_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="nacre",
    help="TEE attestation, key broker and confidential computing on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("verify")(verify_command)
app.command("serve")(serve_command)
app.command("demo")(demo_command)


@app.callback()
def _root() -> None:
    """nacre: verify TEE evidence, manage collateral, run the attestation service."""


app.add_typer(collateral_app, name="collateral", help="Fetch, cache and serve collateral.")
app.add_typer(sim_app, name="sim", help="A simulated SGX/TDX platform (real quote bytes).")
app.add_typer(node_app, name="node")
app.add_typer(audit_app, name="audit", help="Check the hash-chained audit log.")
app.add_typer(policy_app, name="policy")
app.add_typer(secret_app, name="secret", help="Store and manage KBS resources (secrets).")
app.add_typer(key_app, name="key", help="HSM-like keys kept inside the service.")
app.add_typer(ear_key_app, name="ear-key", help="The service's EAR signing keys.")
app.add_typer(k8s_app, name="k8s")


def main() -> None:
    app()
