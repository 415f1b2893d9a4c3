"""Per-quote verification cost: nacre (warm and cold cache) against dcap-qvl and the crypto floor.

    .venv/bin/python benchmarks/verify.py [--json] [--rounds N] [--round-seconds S]

One run, the same evidence and collateral for every contender:

- nacre warm: ``nacre.verify_evidence`` with one shared VerifyCache (collateral verified once);
- nacre cold: a fresh VerifyCache for every call (every chain, CRL and signed JSON re-verified);
- dcap-qvl: ``dcap_qvl.verify`` with its collateral object parsed once (SGX/TDX only);
- floor: the signature checks no verifier can skip, with `cryptography` and keys loaded once:
  DCAP = two ECDSA P-256 verifications (QE report, 384 bytes; quote, header || body),
  SNP = one ECDSA P-384 verification over the report's signed 0x2A0 bytes;
- cold_floor: the nine P-256 verifications of a cold DCAP call, keys loaded once;
- cold_floor_fresh: the same, decoding per call the four keys a cold call meets for the first
  time (OpenSSL 3 also charges a key's first verification): what no cold call can go under.

Each time is the median over ``--rounds`` rounds of the mean per-call time within a round
(time.perf_counter), after a warm-up; the rounds interleave the contenders, and each ratio is the
median of the per-round ratios. Collateral files are read before timing starts.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

import nacre
from nacre.evidence import parse_quote
from nacre.verify import VerifyCache, default_cache

VECTORS: Final = Path(__file__).resolve().parents[2] / "shared" / "vectors"
DCAP_CASES: Final = ("sgx-v3-phala-processor-ca", "tdx-v4-phala-b0c06f-uptodate")
SNP_CASES: Final = ("snp-v3-genoa-azure-trustee", "snp-v2-milan-virtee")

GOAL_WARM_SPEEDUP: Final = 3.0  # nacre warm throughput / dcap-qvl throughput, at least
GOAL_COLD_RATIO: Final = 1.5  # nacre cold time / dcap-qvl time, at most
GOAL_SNP_FLOOR: Final = 1.3  # SNP nacre warm time / P-384 floor, at most


# --------------------------------------------------------------------------- timing


def measure(
    fns: dict[str, Callable[[], object]], rounds: int, round_seconds: float
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round.

    Each contender is warmed up and calibrated to about ``round_seconds`` per round; the rounds
    then interleave the contenders, so that a load spike on the machine hits all of them alike.
    """
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min(0.2, round_seconds):  # warm-up and calibration
            fn()
            n += 1
        per_call = (time.perf_counter() - start) / max(n, 1)
        calls[name] = max(1, int(round_seconds / max(per_call, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of the per-round ratio (robust to load that varies between rounds)."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    kind: str  # "sgx", "tdx" or "snp"
    evidence: bytes
    bundle: nacre.CollateralBundle
    now: datetime
    qvl_collateral_json: str | None = None


@dataclass
class Row:
    case: str
    kind: str
    seconds: dict[str, float] = field(default_factory=dict)  # contender -> seconds per quote
    ratios: dict[str, float] = field(default_factory=dict)


def load(case_id: str, kind: str) -> Case:
    d = VECTORS / case_id
    meta = json.loads((d / "case.json").read_text(encoding="utf-8"))
    now = datetime.fromisoformat(str(meta["verification_time"]).replace("Z", "+00:00"))
    evidence_file = d / ("quote.bin" if kind != "snp" else "report.bin")
    qvl = d / "collateral.dcap-qvl.json"
    return Case(
        id=case_id,
        kind=kind,
        evidence=evidence_file.read_bytes(),
        bundle=nacre.CollateralBundle.from_dir(d),
        now=now.astimezone(UTC),
        qvl_collateral_json=qvl.read_text(encoding="utf-8") if qvl.is_file() else None,
    )


def _der_sig(raw: bytes) -> bytes:
    """Intel's raw big-endian r || s as the DER ECDSA-Sig-Value `cryptography` verifies."""
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def dcap_floor(case: Case) -> Callable[[], None]:
    """Two P-256 verifications: the QE report (PCK key) and the quote (attestation key)."""
    q = parse_quote(case.evidence)
    leaf = x509.load_pem_x509_certificates(q.pck_chain_pem)[0]
    pck_key = leaf.public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + q.signature.attestation_key
    )
    qe_report = q.signature.qe.qe_report.to_bytes()
    qe_sig = _der_sig(q.signature.qe.qe_report_signature)
    signed = q.signed_bytes
    quote_sig = _der_sig(q.signature.quote_signature)
    algo = ec.ECDSA(hashes.SHA256())
    assert len(qe_report) == 384

    def floor() -> None:
        pck_key.verify(qe_sig, qe_report, algo)
        att_key.verify(quote_sig, signed, algo)

    return floor


def dcap_cold_floor(case: Case) -> Callable[[], None]:
    """The nine ECDSA P-256 verifications a cold DCAP verification cannot skip, keys preloaded:
    PCK leaf and PCK CA certificates, TCB signing certificate, root CA CRL, PCK CRL, TCB info,
    QE identity, QE report and quote."""
    from nacre.collateral.certs import crl_der
    from nacre.collateral.signed_json import parse_signed_json
    from nacre.collateral.x509_der import crl_signed_parts

    files = case.bundle.files
    q = parse_quote(case.evidence)
    leaf, pck_ca, root = x509.load_pem_x509_certificates(q.pck_chain_pem)[:3]
    tcb_signer = x509.load_pem_x509_certificates(files["tcb_info_issuer_chain.pem"])[0]
    algo = ec.ECDSA(hashes.SHA256())
    checks: list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]] = []

    def add(key: object, sig: bytes, data: bytes) -> None:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(sig, data, algo)
        checks.append((key, sig, data))

    add(pck_ca.public_key(), leaf.signature, leaf.tbs_certificate_bytes)
    add(root.public_key(), pck_ca.signature, pck_ca.tbs_certificate_bytes)
    add(root.public_key(), tcb_signer.signature, tcb_signer.tbs_certificate_bytes)
    for name, issuer in (("root_ca_crl.der", root), ("pck_crl.der", pck_ca)):
        tbs, sig, _ = crl_signed_parts(crl_der(files[name], field=name))
        add(issuer.public_key(), sig, tbs)
    for name, obj in (("tcb_info.json", "tcbInfo"), ("qe_identity.json", "enclaveIdentity")):
        signed = parse_signed_json(files[name], obj, what=name)
        add(tcb_signer.public_key(), _der_sig(signed.signature), signed.signed_bytes)
    add(
        leaf.public_key(),
        _der_sig(q.signature.qe.qe_report_signature),
        q.signature.qe.qe_report.to_bytes(),
    )
    att = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + q.signature.attestation_key
    )
    add(att, _der_sig(q.signature.quote_signature), q.signed_bytes)

    def floor() -> None:
        for key, sig, data in checks:
            key.verify(sig, data, algo)

    return floor


def dcap_cold_floor_fresh_keys(case: Case) -> Callable[[], None]:
    """The same nine verifications, with the keys a cold verification meets for the first time
    decoded per call (PCK leaf, PCK CA and TCB signing certificates from their DER, the
    attestation key from its point); only the trust anchor's key is reused. OpenSSL 3 also pays a
    one-time cost on a key's first verification, so this is what a cold call cannot go under."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from nacre.collateral.certs import crl_der
    from nacre.collateral.signed_json import parse_signed_json
    from nacre.collateral.x509_der import crl_signed_parts

    files = case.bundle.files
    q = parse_quote(case.evidence)
    leaf, pck_ca, root = x509.load_pem_x509_certificates(q.pck_chain_pem)[:3]
    tcb_signer = x509.load_pem_x509_certificates(files["tcb_info_issuer_chain.pem"])[0]
    leaf_der, ca_der, tcb_der = (c.public_bytes(Encoding.DER) for c in (leaf, pck_ca, tcb_signer))
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    algo = ec.ECDSA(hashes.SHA256())
    crls = [
        crl_signed_parts(crl_der(files[n], field=n)) for n in ("root_ca_crl.der", "pck_crl.der")
    ]
    signed = {
        n: parse_signed_json(files[n], o, what=n)
        for n, o in (("tcb_info.json", "tcbInfo"), ("qe_identity.json", "enclaveIdentity"))
    }
    qe_sig = _der_sig(q.signature.qe.qe_report_signature)
    qe_report = q.signature.qe.qe_report.to_bytes()
    point = b"\x04" + q.signature.attestation_key
    quote_sig = _der_sig(q.signature.quote_signature)
    quote_signed = q.signed_bytes

    def floor() -> None:
        ca_key = x509.load_der_x509_certificate(ca_der).public_key()
        leaf_key = x509.load_der_x509_certificate(leaf_der).public_key()
        tcb_key = x509.load_der_x509_certificate(tcb_der).public_key()
        att = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
        assert isinstance(tcb_key, ec.EllipticCurvePublicKey)
        ca_key.verify(leaf.signature, leaf.tbs_certificate_bytes, algo)
        root_key.verify(pck_ca.signature, pck_ca.tbs_certificate_bytes, algo)
        root_key.verify(tcb_signer.signature, tcb_signer.tbs_certificate_bytes, algo)
        root_key.verify(crls[0][1], crls[0][0], algo)
        ca_key.verify(crls[1][1], crls[1][0], algo)
        for item in signed.values():
            tcb_key.verify(_der_sig(item.signature), item.signed_bytes, algo)
        leaf_key.verify(qe_sig, qe_report, algo)
        att.verify(quote_sig, quote_signed, algo)

    floor()
    return floor


def snp_floor(case: Case) -> Callable[[], None]:
    """One P-384 verification over the report's signed bytes (0x000..0x2A0) with the VCEK key."""
    leaf_name = "vcek.der" if "vcek.der" in case.bundle.files else "vlek.der"
    with warnings.catch_warnings():  # AMD leaf certificates carry serial number 0
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(case.bundle.files[leaf_name])
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    report = case.evidence
    signed = report[:0x2A0]
    # AMD: r and s are 72-byte little-endian fields at 0x2A0 and 0x2E8.
    r = int.from_bytes(report[0x2A0 : 0x2A0 + 72], "little")
    s = int.from_bytes(report[0x2E8 : 0x2E8 + 72], "little")
    sig = encode_dss_signature(r, s)
    algo = ec.ECDSA(hashes.SHA384())
    key.verify(sig, signed, algo)  # the floor must do the real work

    def floor() -> None:
        key.verify(sig, signed, algo)

    return floor


def bench_case(case: Case, rounds: int, round_seconds: float) -> Row:
    row = Row(case.id, case.kind)
    cache = VerifyCache()

    def warm() -> object:
        return nacre.verify_evidence(
            case.evidence, collateral=case.bundle, now=case.now, cache=cache
        )

    def cold() -> object:
        if case.kind == "snp":
            default_cache().clear()  # belt and braces: nothing warm may leak into a cold call
        return nacre.verify_evidence(
            case.evidence, collateral=case.bundle, now=case.now, cache=VerifyCache()
        )

    warm()  # must accept: never time an error path
    fns: dict[str, Callable[[], object]] = {"nacre_warm": warm, "nacre_cold": cold}
    if case.kind == "snp":
        fns["floor"] = snp_floor(case)
    else:
        import dcap_qvl

        assert case.qvl_collateral_json is not None
        coll = dcap_qvl.QuoteCollateralV3.from_json(case.qvl_collateral_json)
        now_secs = int(case.now.timestamp())

        def qvl() -> object:
            return dcap_qvl.verify(case.evidence, coll, now_secs)

        qvl()
        fns["dcap_qvl"] = qvl
        fns["floor"] = dcap_floor(case)
        fns["cold_floor"] = dcap_cold_floor(case)
        fns["cold_floor_fresh"] = dcap_cold_floor_fresh_keys(case)
    samples = measure(fns, rounds, round_seconds)
    row.seconds = {name: statistics.median(xs) for name, xs in samples.items()}
    row.ratios["warm_over_floor"] = ratio(samples, "nacre_warm", "floor")
    if case.kind != "snp":
        row.ratios["warm_speedup_vs_qvl"] = ratio(samples, "dcap_qvl", "nacre_warm")
        row.ratios["cold_over_qvl"] = ratio(samples, "nacre_cold", "dcap_qvl")
        row.ratios["cold_floor_over_qvl"] = ratio(samples, "cold_floor", "dcap_qvl")
        row.ratios["cold_over_cold_floor"] = ratio(samples, "nacre_cold", "cold_floor")
        row.ratios["fresh_floor_over_qvl"] = ratio(samples, "cold_floor_fresh", "dcap_qvl")
        row.ratios["cold_over_fresh_floor"] = ratio(samples, "nacre_cold", "cold_floor_fresh")
    return row


def snp_case() -> Case | None:
    try:
        import nacre.verify.snp
    except ImportError:
        return None
    for case_id in SNP_CASES:
        if not (VECTORS / case_id).is_dir():
            continue
        case = load(case_id, "snp")
        try:
            nacre.verify_evidence(case.evidence, collateral=case.bundle, now=case.now)
        except nacre.NacreError:
            continue
        return case
    return None


# --------------------------------------------------------------------------- report


def goals(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        checks: list[tuple[str, str, float, float, bool]] = []
        if "warm_speedup_vs_qvl" in row.ratios:
            v = row.ratios["warm_speedup_vs_qvl"]
            checks.append(
                (
                    "nacre-warm throughput / dcap-qvl throughput",
                    ">=",
                    v,
                    GOAL_WARM_SPEEDUP,
                    v >= GOAL_WARM_SPEEDUP,
                )
            )
            v = row.ratios["cold_over_qvl"]
            checks.append(
                (
                    "nacre-cold time / dcap-qvl time",
                    "<=",
                    v,
                    GOAL_COLD_RATIO,
                    v <= GOAL_COLD_RATIO,
                )
            )
        if row.kind == "snp":
            v = row.ratios["warm_over_floor"]
            checks.append(
                ("SNP nacre-warm time / P-384 floor", "<=", v, GOAL_SNP_FLOOR, v <= GOAL_SNP_FLOOR)
            )
        for name, op, value, goal, met in checks:
            out.append(
                {
                    "case": row.case,
                    "ratio": name,
                    "value": round(value, 3),
                    "goal": f"{op} {goal}",
                    "met": met,
                }
            )
    return out


def print_table(rows: list[Row]) -> None:
    print(f"{'case':36} {'contender':16} {'ms/quote':>9} {'quotes/s':>10}")
    for row in rows:
        for name, secs in row.seconds.items():
            print(f"{row.case:36} {name:16} {secs * 1e3:9.3f} {1 / secs:10.0f}")
        print()
    print(f"{'case':36} {'ratio':44} {'value':>7}  goal     met")
    for g in goals(rows):
        mark = "yes" if g["met"] else "NO"
        print(f"{g['case']:36} {g['ratio']:44} {g['value']:7.2f}  {g['goal']:8} {mark}")
    print()
    print("ratios, informative:")
    for row in rows:
        print(f"  {row.case}: nacre-warm / floor = {row.ratios['warm_over_floor']:.2f}")
        if "cold_floor_over_qvl" in row.ratios:
            print(
                f"  {row.case}: cold floor (9 P-256 verifications) / dcap-qvl = "
                f"{row.ratios['cold_floor_over_qvl']:.2f}; "
                f"nacre-cold / cold floor = {row.ratios['cold_over_cold_floor']:.2f}"
            )
            print(
                f"  {row.case}: cold floor with the keys decoded per call / dcap-qvl = "
                f"{row.ratios['fresh_floor_over_qvl']:.2f}; "
                f"nacre-cold / that floor = {row.ratios['cold_over_fresh_floor']:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per figure (median)")
    ap.add_argument("--round-seconds", type=float, default=0.4, help="length of one round")
    args = ap.parse_args(argv)

    cases = [load(DCAP_CASES[0], "sgx"), load(DCAP_CASES[1], "tdx")]
    snp = snp_case()
    if snp is not None:
        cases.append(snp)
    rows = [bench_case(c, args.rounds, args.round_seconds) for c in cases]

    if args.json:
        doc = {
            "python": sys.version.split()[0],
            "rounds": args.rounds,
            "round_seconds": args.round_seconds,
            "snp": snp is not None,
            "rows": [asdict(r) for r in rows],
            "goals": goals(rows),
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(rows)
        if snp is None:
            print("SNP: nacre.verify.snp is not importable (or no SNP case verifies); skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
