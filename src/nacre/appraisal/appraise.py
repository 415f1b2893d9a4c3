"""Appraise :class:`VerifiedEvidence` against a :class:`Policy`: every check, with why.

Checks run in a fixed order and all of them run, even after a failure, so a denial names every
reason at once: ``tee``, ``sim``, ``tcb_status``, ``debug``, the TEE's own checks (``sgx.*``,
``tdx.*``, ``snp.*``: the baseline's TD attribute checks, then reference values), then
``rules.<name>``.

Status (EAR ``ear.status``):

============== =============================================================================
affirming      every check passed, the TCB is UpToDate (or SEV-SNP, which has no Intel status)
               and the workload is not a debug one
warning        every check passed, but the TCB status is an allowed non-UpToDate one
               (SWHardeningNeeded, ConfigurationNeeded, ...) or debug was allowed and is on
contraindicated any check failed
============== =============================================================================

Simulated evidence that the policy allows (``allow_sim: true``) is appraised like real evidence;
the result keeps ``sim`` visible through the verification result, not through the status.

Trustworthiness vector (draft-ietf-rats-ar4si §2.3 codes; 0 = no claim):

- instance-identity: 2 (recognized) for verified evidence; 96 (untrustworthy) for simulated
  evidence the policy does not allow; 97 (unrecognized) when the policy has no section for the TEE.
- configuration: 2 (approved) when debug, TD attribute, config-id/owner/host-data, SNP policy bit
  and VMPL checks pass; 32 (unsafe) when debug is on but allowed; 96 (unsupportable) when any of
  them fails.
- executables: 2 (approved run-time) when measurement checks exist and pass; 32 (unsafe: recognized
  but an SVN below the minimum); 33 (unrecognized run-time: a measurement not in the reference
  values); 0 when the policy names no measurement.
- hardware: 2 (genuine) for TCB UpToDate, or SEV-SNP whose min_tcb checks pass; 32 (unsafe: known
  vulnerabilities) for an allowed non-UpToDate status; 96 (contraindicated) for a status the policy
  does not allow, or an SNP TCB below min_tcb.
- runtime-opaque: 2 (encrypted memory: SGX/TDX/SNP) unless debug is on (96, visible) or the
  evidence is simulated and not allowed (96).
- file-system, storage-opaque, sourced-data: 0 (the evidence says nothing about them).

Rule failures count in the status but not in the vector (a rule names no AR4SI component).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from nacre.appraisal.cel import CelEvaluationError, activation, evaluate_bool
from nacre.appraisal.policy import SNP_POLICY_BITS, Policy
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "AR4SI_AFFIRMING",
    "AR4SI_CONTRAINDICATED",
    "AR4SI_NO_CLAIM",
    "AR4SI_WARNING",
    "AppraisalCheck",
    "AppraisalResult",
    "AppraisalStatus",
    "TrustworthinessVector",
    "appraise",
]

AppraisalStatus = Literal["affirming", "warning", "contraindicated"]
Component = Literal[
    "instance-identity", "configuration", "executables", "hardware", "runtime-opaque", "rule"
]

#: AR4SI tiers: none -1..1, affirming 2..31, warning 32..95, contraindicated 96..127.
AR4SI_NO_CLAIM: Final = 0
AR4SI_AFFIRMING: Final = range(2, 32)
AR4SI_WARNING: Final = range(32, 96)
AR4SI_CONTRAINDICATED: Final = range(96, 128)

# draft-ietf-rats-ar4si §2.3 codes used here.
_RECOGNIZED_INSTANCE: Final = 2
_UNTRUSTWORTHY_INSTANCE: Final = 96
_UNRECOGNIZED_INSTANCE: Final = 97
_APPROVED_CONFIG: Final = 2
_UNSAFE_CONFIG: Final = 32
_UNSUPPORTABLE_CONFIG: Final = 96
_APPROVED_RUNTIME: Final = 2
_UNSAFE_RUNTIME: Final = 32
_UNRECOGNIZED_RUNTIME: Final = 33
_GENUINE_HARDWARE: Final = 2
_UNSAFE_HARDWARE: Final = 32
_CONTRAINDICATED_HARDWARE: Final = 96
_ENCRYPTED_MEMORY: Final = 2
_VISIBLE_MEMORY: Final = 96

_TD_ATTR_KNOWN: Final = (1 << 0) | (1 << 28) | (1 << 30) | (1 << 31) | (1 << 63)


@dataclass(frozen=True, slots=True)
class AppraisalCheck:
    """One check of a policy: what was expected, what the evidence has, and why it passed or not."""

    name: str
    passed: bool
    expected: str
    actual: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "expected": self.expected,
            "actual": self.actual,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class TrustworthinessVector:
    """The EAR/AR4SI trustworthiness vector (0: no claim)."""

    instance_identity: int = AR4SI_NO_CLAIM
    configuration: int = AR4SI_NO_CLAIM
    executables: int = AR4SI_NO_CLAIM
    file_system: int = AR4SI_NO_CLAIM
    hardware: int = AR4SI_NO_CLAIM
    runtime_opaque: int = AR4SI_NO_CLAIM
    storage_opaque: int = AR4SI_NO_CLAIM
    sourced_data: int = AR4SI_NO_CLAIM

    def to_dict(self) -> dict[str, int]:
        """All eight claims under their EAR names (``instance-identity`` ...), 0 included."""
        return {
            "instance-identity": self.instance_identity,
            "configuration": self.configuration,
            "executables": self.executables,
            "file-system": self.file_system,
            "hardware": self.hardware,
            "runtime-opaque": self.runtime_opaque,
            "storage-opaque": self.storage_opaque,
            "sourced-data": self.sourced_data,
        }


@dataclass(frozen=True, slots=True)
class AppraisalResult:
    """What :func:`appraise` concludes: a status, every check, and the trustworthiness vector."""

    status: AppraisalStatus
    checks: tuple[AppraisalCheck, ...]
    policy_name: str
    trustworthiness: TrustworthinessVector

    @property
    def passed(self) -> bool:
        """True unless contraindicated."""
        return self.status != "contraindicated"

    @property
    def failed_checks(self) -> tuple[AppraisalCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "policy": self.policy_name,
            "checks": [c.to_dict() for c in self.checks],
            "trustworthiness": self.trustworthiness.to_dict(),
        }


class _Recorder:
    """Collects checks with the AR4SI component each one informs."""

    def __init__(self) -> None:
        self.checks: list[tuple[AppraisalCheck, Component, int]] = []

    def add(
        self,
        name: str,
        passed: bool,
        expected: object,
        actual: object,
        message: str,
        component: Component,
        fail_code: int = 0,
    ) -> None:
        check = AppraisalCheck(name, passed, _text(expected), _text(actual), message)
        self.checks.append((check, component, fail_code))

    def failed(self, component: Component) -> list[int]:
        return [code for c, comp, code in self.checks if comp == component and not c.passed]

    def count(self, component: Component) -> int:
        return sum(1 for _, comp, _ in self.checks if comp == component)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return " | ".join(_text(v) for v in value) if value else "(none)"
    return str(value)


def _any_of(
    r: _Recorder,
    name: str,
    allowed: tuple[Any, ...],
    actual: object,
    what: str,
    component: Component,
    fail_code: int,
) -> None:
    if not allowed:
        return
    ok = actual is not None and actual in allowed
    msg = (
        f"{what} is one of the {len(allowed)} allowed value(s)"
        if ok
        else f"{what} is not among the policy's reference values"
        if actual is not None
        else f"the evidence has no {what}"
    )
    r.add(name, ok, allowed, actual, msg, component, fail_code)


def _at_least(
    r: _Recorder,
    name: str,
    minimum: int | None,
    actual: object,
    what: str,
    component: Component,
    fail_code: int,
) -> None:
    if minimum is None:
        return
    ok = isinstance(actual, int) and not isinstance(actual, bool) and actual >= minimum
    msg = (
        f"{what} {actual} >= {minimum}"
        if ok
        else f"{what} {actual} is below the minimum {minimum}"
        if isinstance(actual, int)
        else f"the evidence has no {what}"
    )
    r.add(name, ok, f">= {minimum}", actual, msg, component, fail_code)


def _sgx(r: _Recorder, policy: Policy, c: Mapping[str, Any]) -> None:
    ref = policy.sgx
    if ref is None:
        return
    ex: Component = "executables"
    _any_of(
        r,
        "sgx.mrenclave",
        ref.mrenclave,
        c.get("mrenclave"),
        "MRENCLAVE",
        ex,
        _UNRECOGNIZED_RUNTIME,
    )
    _any_of(
        r, "sgx.mrsigner", ref.mrsigner, c.get("mrsigner"), "MRSIGNER", ex, _UNRECOGNIZED_RUNTIME
    )
    _any_of(
        r,
        "sgx.isv_prod_id",
        ref.isv_prod_id,
        c.get("isv_prod_id"),
        "ISVPRODID",
        ex,
        _UNRECOGNIZED_RUNTIME,
    )
    _at_least(
        r, "sgx.min_isv_svn", ref.min_isv_svn, c.get("isv_svn"), "ISVSVN", ex, _UNSAFE_RUNTIME
    )
    cfg: Component = "configuration"
    _any_of(
        r,
        "sgx.config_id",
        ref.config_id,
        c.get("config_id"),
        "CONFIGID",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    _at_least(
        r,
        "sgx.min_config_svn",
        ref.min_config_svn,
        c.get("config_svn"),
        "CONFIGSVN",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )


def _tdx(r: _Recorder, policy: Policy, c: Mapping[str, Any]) -> None:
    ref = policy.tdx
    if ref is None:
        return
    cfg: Component = "configuration"
    # Baseline TD attribute checks (as nacre.appraisal.baseline), with the policy's escape hatches.
    raw_attrs = c.get("td_attributes")
    try:
        attrs: int | None = int.from_bytes(bytes.fromhex(str(raw_attrs)), "little")
    except ValueError:
        attrs = None
    reserved_ok = attrs is not None and not attrs & ~_TD_ATTR_KNOWN
    r.add(
        "tdx.td_attributes.reserved",
        reserved_ok,
        f"only bits 0, 28, 30, 31, 63 (mask {_TD_ATTR_KNOWN:#018x})",
        f"{attrs:#018x}" if attrs is not None else raw_attrs,
        "no reserved TD attribute bits set"
        if reserved_ok
        else "the TD sets reserved TD attribute bits (never accepted)",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    sept = bool(c.get("sept_ve_disable"))
    r.add(
        "tdx.sept_ve_disable",
        sept or ref.unsafe_allow_sept_ve,
        "1" if not ref.unsafe_allow_sept_ve else "any (tdx.unsafe_allow_sept_ve)",
        "1" if sept else "0",
        "SEPT_VE_DISABLE is set"
        if sept
        else "SEPT_VE_DISABLE is not set, accepted by tdx.unsafe_allow_sept_ve"
        if ref.unsafe_allow_sept_ve
        else "SEPT_VE_DISABLE is not set: the host can inject #VE on EPT violations",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    servicetd = c.get("mr_service_td")
    bound = servicetd is not None and int(str(servicetd), 16) != 0
    r.add(
        "tdx.mr_service_td",
        not bound or ref.allow_service_td,
        "all zero" if not ref.allow_service_td else "any (tdx.allow_service_td)",
        servicetd if servicetd is not None else "(not in this quote version)",
        "the TD is not bound to a service TD"
        if not bound
        else "the TD is bound to a service TD, accepted by tdx.allow_service_td"
        if ref.allow_service_td
        else "the TD is bound to a service TD",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    ex: Component = "executables"
    for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"):
        _any_of(
            r,
            f"tdx.{name}",
            getattr(ref, name),
            c.get(name),
            name.upper(),
            ex,
            _UNRECOGNIZED_RUNTIME,
        )
    for name in ("mr_config_id", "mr_owner", "mr_owner_config"):
        _any_of(
            r,
            f"tdx.{name}",
            getattr(ref, name),
            c.get(name),
            name.upper(),
            cfg,
            _UNSUPPORTABLE_CONFIG,
        )


def _snp(r: _Recorder, policy: Policy, c: Mapping[str, Any]) -> None:
    ref = policy.snp
    if ref is None:
        return
    ex: Component = "executables"
    cfg: Component = "configuration"
    _any_of(
        r,
        "snp.measurement",
        ref.measurement,
        c.get("measurement"),
        "MEASUREMENT",
        ex,
        _UNRECOGNIZED_RUNTIME,
    )
    _any_of(
        r,
        "snp.host_data",
        ref.host_data,
        c.get("host_data"),
        "HOST_DATA",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    _any_of(
        r,
        "snp.id_key_digest",
        ref.id_key_digest,
        c.get("id_key_digest"),
        "ID_KEY_DIGEST",
        cfg,
        _UNSUPPORTABLE_CONFIG,
    )
    raw_policy = c.get("policy")
    try:
        guest_policy: int | None = int(str(raw_policy), 0)
    except ValueError:
        guest_policy = None
    for bit_name, want in ref.policy_bits:
        bit = SNP_POLICY_BITS[bit_name]
        have = None if guest_policy is None else bool(guest_policy >> bit & 1)
        ok = have is not None and have == want
        r.add(
            f"snp.policy_bits.{bit_name}",
            ok,
            f"{int(want)} (bit {bit})",
            "unknown" if have is None else f"{int(have)} (policy {raw_policy})",
            f"GUEST_POLICY.{bit_name.upper()} is {int(want)} as required"
            if ok
            else f"GUEST_POLICY.{bit_name.upper()} must be {int(want)}",
            cfg,
            _UNSUPPORTABLE_CONFIG,
        )
    if ref.min_tcb is not None:
        decoded = c.get("reported_tcb_decoded")
        tcb = decoded if isinstance(decoded, Mapping) else {}
        for comp, minimum in ref.min_tcb.items():
            _at_least(
                r,
                f"snp.min_tcb.{comp}",
                minimum,
                tcb.get(comp),
                f"reported TCB {comp} SVN",
                "hardware",
                _CONTRAINDICATED_HARDWARE,
            )
    _any_of(r, "snp.vmpl", ref.vmpl, c.get("vmpl"), "VMPL", cfg, _UNSUPPORTABLE_CONFIG)


_TEE_CHECKS: Final[Mapping[str, Callable[[_Recorder, Policy, Mapping[str, Any]], None]]] = {
    "sgx": _sgx,
    "tdx": _tdx,
    "snp": _snp,
}


def _rules(r: _Recorder, policy: Policy, v: VerifiedEvidence) -> None:
    if not policy.rules:
        return
    variables = activation(v)
    for rule in policy.rules:
        name = f"rules.{rule.name}"
        if rule.program is None:  # a Rule built by hand, not by loading: fail closed
            r.add(name, False, "true", "not compiled", "the rule was not compiled", "rule")
            continue
        try:
            ok = evaluate_bool(rule.program, variables)
        except CelEvaluationError as exc:
            r.add(
                name,
                False,
                "true",
                f"error: {exc.message}",
                f"{rule.message or rule.expr}: evaluation failed ({exc.message})",
                "rule",
            )
            continue
        r.add(
            name,
            ok,
            "true",
            ok,
            f"{rule.expr} holds" if ok else rule.message or f"{rule.expr} is false",
            "rule",
        )


def _worst(codes: list[int], default: int) -> int:
    return max(codes) if codes else default


def appraise(verified: VerifiedEvidence, policy: Policy) -> AppraisalResult:
    """Apply ``policy`` to ``verified``; return every check and the EAR status and vector.

    Accepts only :class:`VerifiedEvidence` (raises :class:`TypeError` otherwise): appraisal never
    looks at evidence that did not verify.
    """
    if not isinstance(verified, VerifiedEvidence):
        raise TypeError(f"appraise takes VerifiedEvidence, not {type(verified).__name__}")
    if not isinstance(policy, Policy):
        raise TypeError(f"appraise takes a Policy, not {type(policy).__name__}")
    v = verified
    c = v.claims
    r = _Recorder()

    # 1. The TEE must have a section (when the policy names any).
    tees = policy.tees
    tee_ok = not tees or v.tee in tees
    r.add(
        "tee",
        tee_ok,
        tees or "any",
        v.tee,
        f"the policy accepts {v.tee} evidence"
        if tee_ok
        else f"the policy has no {v.tee} section (it accepts {', '.join(tees)})",
        "instance-identity",
        _UNRECOGNIZED_INSTANCE,
    )
    # 2. Simulated evidence only when allowed.
    sim_ok = not v.sim or policy.allow_sim
    r.add(
        "sim",
        sim_ok,
        "real hardware" if not policy.allow_sim else "real or simulated (allow_sim)",
        "simulated" if v.sim else "real hardware",
        "the evidence comes from real hardware"
        if not v.sim
        else "simulated evidence, accepted by allow_sim"
        if sim_ok
        else "simulated evidence: it proves nothing about real hardware (allow_sim is false)",
        "instance-identity",
        _UNTRUSTWORTHY_INSTANCE,
    )
    # 3. TCB status.
    if v.tcb_status is None:
        r.add(
            "tcb_status",
            True,
            policy.tcb_status,
            None,
            f"{v.tee} evidence carries no Intel TCB status"
            + ("; see snp.min_tcb" if v.tee == "snp" else ""),
            "hardware",
        )
    else:
        tcb_ok = v.tcb_status in policy.tcb_status
        advisories = f" (advisories: {', '.join(v.advisory_ids)})" if v.advisory_ids else ""
        r.add(
            "tcb_status",
            tcb_ok,
            policy.tcb_status,
            v.tcb_status,
            f"TCB status {v.tcb_status} is allowed{advisories}"
            if tcb_ok
            else f"TCB status {v.tcb_status} is not allowed by the policy{advisories}",
            "hardware",
            _CONTRAINDICATED_HARDWARE,
        )
    # 4. Debug.
    debug = bool(c.get("debug"))
    r.add(
        "debug",
        not debug or policy.allow_debug,
        "production (debug off)" if not policy.allow_debug else "any (allow_debug)",
        "debug" if debug else "production",
        "not a debug workload"
        if not debug
        else "a debug workload, accepted by allow_debug: its memory is open to the host"
        if policy.allow_debug
        else "a debug workload: its memory is open to the host",
        "configuration",
        _UNSUPPORTABLE_CONFIG,
    )
    # 5. The TEE's own checks, then 6. the rules.
    _TEE_CHECKS[v.tee](r, policy, c)
    _rules(r, policy, v)

    checks = tuple(chk for chk, _, _ in r.checks)
    all_passed = all(chk.passed for chk in checks)
    non_uptodate = v.tcb_status not in (None, "UpToDate")
    if not all_passed:
        status: AppraisalStatus = "contraindicated"
    elif non_uptodate or debug:
        status = "warning"
    else:
        status = "affirming"

    instance = _worst(r.failed("instance-identity"), _RECOGNIZED_INSTANCE)
    configuration = _worst(r.failed("configuration"), _UNSAFE_CONFIG if debug else _APPROVED_CONFIG)
    executables = _worst(
        r.failed("executables"),
        _APPROVED_RUNTIME if r.count("executables") else AR4SI_NO_CLAIM,
    )
    hardware = _worst(r.failed("hardware"), _UNSAFE_HARDWARE if non_uptodate else _GENUINE_HARDWARE)
    visible = debug or (v.sim and not policy.allow_sim)
    vector = TrustworthinessVector(
        instance_identity=instance,
        configuration=configuration,
        executables=executables,
        hardware=hardware,
        runtime_opaque=_VISIBLE_MEMORY if visible else _ENCRYPTED_MEMORY,
    )
    return AppraisalResult(
        status=status, checks=checks, policy_name=policy.name, trustworthiness=vector
    )
