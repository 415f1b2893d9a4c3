"""``nacre verify EVIDENCE``: exit 0 verified, 1 rejected, 2 usage or I/O error."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from nacre.appraisal import AppraisalResult, Policy, appraise, load_policy
from nacre.appraisal.baseline import BaselinePolicy, appraise_baseline
from nacre.cli.collateral_cmd import sim_trust
from nacre.cli.policy_cmd import appraisal_error, render_appraisal
from nacre.cli.render import render_rejection, render_result, render_usage_error
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import NacreError, PolicyViolationError, UsageError, VerificationError
from nacre.evidence import detect_kind, parse_evidence
from nacre.verify import verify
from nacre.verify.result import VerifiedEvidence

__all__ = ["read_evidence", "verify_command", "verify_offline"]


def _parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            "--at is not an ISO-8601 time",
            field="--at",
            expected="e.g. 2025-02-28T03:00:00Z",
            actual=text,
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _evidence_facts(data: bytes) -> tuple[str | None, int | None]:
    try:
        ev = parse_evidence(data)
    except NacreError:
        return None, None
    kind = detect_kind(data)
    if kind == "dcap":
        from nacre.evidence.dcap import DcapQuote

        assert isinstance(ev, DcapQuote)
        return ev.tee, ev.header.version
    return "snp", int(getattr(ev, "version", 0))


def read_evidence(evidence: Path) -> bytes:
    try:
        return evidence.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read evidence {evidence}: {exc.strerror}", field="EVIDENCE"
        ) from exc


def verify_offline(
    data: bytes,
    evidence: Path,
    collateral: Path | None,
    at: str | None,
    trust_root: Path | None,
    trust_sim: bool,
    sim_dir: Path | None,
) -> VerifiedEvidence:
    """Verify ``data`` against a collateral directory (no appraisal); raise on rejection."""
    if trust_sim and trust_root is not None:
        raise UsageError(
            "--trust-sim and --trust-root both name the roots to trust",
            field="--trust-sim",
            expected="one of --trust-sim, --trust-root",
            actual="both",
        )
    bundle = CollateralBundle.from_dir(collateral or evidence.parent)
    trust = TrustRoots.from_file(trust_root) if trust_root else None
    if trust_sim:
        trust = sim_trust(sim_dir, bundle.get("sim_root_ca.pem"))
    now = _parse_time(at)
    return verify(data, collateral=bundle, now=now, trust=trust)


def _json_out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def verify_command(
    evidence: Annotated[Path, typer.Argument(help="SGX/TDX quote or SEV-SNP report (raw bytes).")],
    collateral: Annotated[
        Path | None,
        typer.Option(help="Collateral bundle directory (default: the evidence's directory)."),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Verify as of this ISO-8601 time (default: now).")
    ] = None,
    trust_root: Annotated[
        Path | None,
        typer.Option(help="PEM/DER root that replaces the pinned Intel/AMD roots for this call."),
    ] = None,
    trust_sim: Annotated[
        bool,
        typer.Option(
            "--trust-sim",
            help="Trust nacre's simulation root (the local platform's, else the bundle's "
            "sim_root_ca.pem); results say sim: true.",
        ),
    ] = False,
    sim_dir: Annotated[
        Path | None,
        typer.Option("--sim-dir", help="Simulated platform whose root --trust-sim trusts."),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Appraisal policy (YAML/JSON); replaces the baseline policy."),
    ] = None,
    allow_debug: Annotated[
        bool, typer.Option("--allow-debug", help="UNSAFE: accept debug enclaves/TDs/guests.")
    ] = False,
    unsafe_allow_sept_ve: Annotated[
        bool,
        typer.Option("--unsafe-allow-sept-ve", help="UNSAFE: accept TDs without SEPT_VE_DISABLE."),
    ] = False,
    allow_service_td: Annotated[
        bool, typer.Option("--allow-service-td", help="Accept TDs bound to a service TD.")
    ] = False,
    unsafe_allow_revoked_tcb: Annotated[
        bool, typer.Option("--unsafe-allow-revoked-tcb", help="UNSAFE: accept a Revoked TCB.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Verify TEE evidence against collateral and the baseline policy."""
    tee: str | None = None
    version: int | None = None
    appraisal: AppraisalResult | None = None
    try:
        loaded_policy: Policy | None = None
        if policy is not None:
            flags = [
                name
                for name, on in (
                    ("--allow-debug", allow_debug),
                    ("--unsafe-allow-sept-ve", unsafe_allow_sept_ve),
                    ("--allow-service-td", allow_service_td),
                    ("--unsafe-allow-revoked-tcb", unsafe_allow_revoked_tcb),
                )
                if on
            ]
            if flags:
                raise UsageError(
                    f"{', '.join(flags)} and --policy: with a policy file, the policy decides",
                    field=flags[0],
                    expected="either --policy or the baseline escape hatches",
                    actual="both",
                    hint="write allow_debug / tdx.unsafe_allow_sept_ve / tdx.allow_service_td "
                    "into the policy instead",
                )
            loaded_policy = load_policy(policy)
        data = read_evidence(evidence)
        tee, version = _evidence_facts(data)
        result = verify_offline(data, evidence, collateral, at, trust_root, trust_sim, sim_dir)
        if loaded_policy is not None:
            # The policy replaces the baseline: it carries the same checks (debug, TD attributes,
            # SEPT_VE_DISABLE, service TD, never a Revoked TCB) with its own escape hatches.
            appraisal = appraise(result, loaded_policy)
        else:
            appraise_baseline(
                result,
                BaselinePolicy(
                    allow_debug=allow_debug,
                    unsafe_allow_sept_ve=unsafe_allow_sept_ve,
                    allow_service_td=allow_service_td,
                    unsafe_allow_revoked_tcb=unsafe_allow_revoked_tcb,
                ),
            )
    except VerificationError as exc:
        verified = exc.verified if isinstance(exc, PolicyViolationError) else None
        if as_json:
            _json_out(
                {
                    "verdict": "rejected",
                    "tee": verified.tee if verified else tee,
                    "version": verified.version if verified else version,
                    "tcb_status": verified.tcb_status if verified else None,
                    "advisory_ids": list(verified.advisory_ids) if verified else [],
                    "claims": dict(verified.claims) if verified else {},
                    "sim": verified.sim if verified else False,
                    "error": exc.to_dict(),
                    **({"appraisal": None} if policy is not None else {}),
                }
            )
        else:
            render_rejection(exc, verified)
        raise typer.Exit(1) from None
    except NacreError as exc:
        if as_json:
            _json_out({"verdict": "error", "tee": tee, "version": version, "error": exc.to_dict()})
        else:
            render_usage_error(exc)
        raise typer.Exit(2) from None
    if appraisal is not None:
        if as_json:
            _json_out(
                {
                    "verdict": "ok" if appraisal.passed else "rejected",
                    **result.to_dict(),
                    "error": appraisal_error(appraisal),
                    "appraisal": appraisal.to_dict(),
                }
            )
        else:
            render_result(result)
            render_appraisal(result, appraisal)
        if not appraisal.passed:
            raise typer.Exit(1)
        return
    if as_json:
        _json_out({"verdict": "ok", **result.to_dict(), "error": None})
    else:
        render_result(result)
