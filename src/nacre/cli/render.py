"""Human output for the CLI (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from nacre.errors import NacreError, VerificationError
from nacre.verify.result import Check, VerifiedEvidence

__all__ = ["render_rejection", "render_result", "render_usage_error"]

_TEE_NAMES = {"sgx": "SGX enclave", "tdx": "TDX trust domain", "snp": "SEV-SNP guest"}


def _console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=True)


def _checks_table(checks: tuple[Check, ...]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("")
    table.add_column("step")
    table.add_column("check")
    for c in checks:
        mark = "[green]✔[/]" if c.passed else "[red]✘[/]"
        table.add_row(mark, c.step, c.name if c.passed else f"[red]{c.name}[/]")
    return table


def _chain_tree(v: VerifiedEvidence) -> Tree:
    label = f"{_TEE_NAMES[v.tee]} evidence (v{v.version})"
    tree = Tree(f"[bold]{label}[/]")
    node = tree
    if v.tee in ("sgx", "tdx"):
        node = node.add("signed by the attestation key ← Quoting Enclave (QE report)")
    for link in v.chain:
        node = node.add(
            f"{link.role}: [cyan]{link.subject}[/] "
            f"(valid {link.not_before:%Y-%m-%d} → {link.not_after:%Y-%m-%d})"
        )
    return tree


def render_result(v: VerifiedEvidence) -> None:
    out = _console()
    status = v.tcb_status or "n/a (SEV-SNP reports carry no Intel TCB status)"
    color = "green" if v.tcb_status in (None, "UpToDate") else "yellow"
    out.print(f"[bold green]VERIFIED[/] {_TEE_NAMES[v.tee]}, TCB status [{color}]{status}[/]")
    if v.advisory_ids:
        out.print(f"advisories: {', '.join(v.advisory_ids)}")
    if v.sim:
        out.print(
            "[bold yellow]SIMULATED evidence: trusted only because the simulation root was[/]"
        )
    out.print(_chain_tree(v))
    if v.collateral:
        out.print("[bold]collateral[/]")
        for item in v.collateral:
            out.print(
                f"  {item.name}: {item.issued:%Y-%m-%d %H:%M} → {item.next_update:%Y-%m-%d %H:%M}"
            )
    if v.tcb is not None:
        out.print(f"[bold]TCB level[/]: {v.tcb.reason}")
        parts = [f"platform {v.tcb.platform_status}"]
        if v.tcb.module_status:
            parts.append(f"TDX module {v.tcb.module_status}")
        if v.tcb.qe_status:
            parts.append(f"QE {v.tcb.qe_status}")
        out.print(f"  {', '.join(parts)} → {v.tcb_status}")
    out.print(_checks_table(v.checks))
    out.print("[bold]claims[/]")
    for k, val in v.claims.items():
        out.print(f"  {k}: {val}")


def render_rejection(exc: VerificationError, verified: VerifiedEvidence | None) -> None:
    out = _console()
    out.print(f"[bold red]REJECTED[/] [{exc.code}] {exc.message}")
    if exc.step:
        out.print(f"  step:     {exc.step}")
    if exc.field:
        out.print(f"  field:    {exc.field}")
        out.print(f"  expected: {exc.expected}")
        out.print(f"  actual:   {exc.actual}")
    if exc.hint:
        out.print(f"  what to do: {exc.hint}")
    if verified is not None:
        out.print(
            f"  (the evidence itself verified: TCB status {verified.tcb_status}"
            + (f", advisories {', '.join(verified.advisory_ids)}" if verified.advisory_ids else "")
            + ")"
        )
        out.print(_checks_table(verified.checks))
    elif exc.checks:
        out.print(_checks_table(exc.checks))


def render_usage_error(exc: NacreError) -> None:
    err = _console(err=True)
    err.print(f"[bold red]error[/] [{exc.code}] {exc}")
