"""Differential tests: nacre against dcap-qvl 0.7.0 on the SGX/TDX vectors and on mutants of them.

dcap-qvl applies the same appraisal as ``nacre.verify_evidence``'s baseline policy (debug, SEPT_VE,
reserved TD attribute bits, MRSERVICETD, Revoked), so the two must agree on accept/reject for the
published quotes and for every mutant of them, and on TCB status and advisories when both accept.
Where they legitimately differ, the difference is listed in ``KNOWN_DIFFERENCES`` with Intel's rule.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import dcap_qvl
import pytest

import nacre
from nacre.errors import NacreError
from nacre.evidence import parse_quote
from nacre.verify import VerifyCache
from vectors import VectorCase, load_cases

#: dcap-qvl 0.7.0 cannot parse TCB info v2 ("missing field `sgxtcbcomponents`"), so this vector
#: has no reference verdict to compare with. It is the only exclusion, and
#: test_excluded_case_is_still_unreadable_by_dcap_qvl keeps it honest.
QVL_CANNOT_READ: Final = frozenset({"sgx-v3-automata-godcap-platform-ca-tcbinfo-v2"})

CASES: Final = [c for c in load_cases(tee=("sgx", "tdx")) if c.id not in QVL_CANNOT_READ]
CASE_IDS: Final = [c.id for c in CASES]

SEED: Final = 0x4E414352  # "NACR"
MUTANTS_PER_CASE: Final = 400  # x 10 cases = 4,000 mutants in the default run

# One cache for the whole module: collateral-side verification stays warm across mutants.
CACHE: Final = VerifyCache(max_entries=4096)


# --------------------------------------------------------------------------- running both


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: str | None = None
    advisories: tuple[str, ...] = ()
    error: str = ""  # nacre error code / dcap-qvl message

    @property
    def verdict(self) -> tuple[bool, str | None, tuple[str, ...]]:
        return self.ok, self.status, self.advisories


def run_nacre(case: VectorCase, quote: bytes) -> Outcome:
    """nacre with the baseline policy. Only NacreError subclasses may escape as a rejection."""
    try:
        v = nacre.verify_evidence(quote, collateral=_bundle(case), now=case.now, cache=CACHE)
    except NacreError as exc:
        return Outcome(False, error=exc.code)
    return Outcome(True, v.tcb_status, tuple(v.advisory_ids))


def run_qvl(case: VectorCase, quote: bytes) -> Outcome:
    try:
        r = dcap_qvl.verify(quote, _qvl_collateral(case), int(case.now.timestamp()))
    except ValueError as exc:  # dcap-qvl reports every rejection as ValueError
        return Outcome(False, error=" ".join(str(exc).split()))
    return Outcome(True, str(r.status), tuple(str(a) for a in r.advisory_ids))


_BUNDLES: dict[str, nacre.CollateralBundle] = {}
_QVL_COLLATERAL: dict[str, Any] = {}


def _bundle(case: VectorCase) -> nacre.CollateralBundle:
    if case.id not in _BUNDLES:
        _BUNDLES[case.id] = case.bundle()
    return _BUNDLES[case.id]


def _qvl_collateral(case: VectorCase) -> Any:
    if case.id not in _QVL_COLLATERAL:
        _QVL_COLLATERAL[case.id] = dcap_qvl.QuoteCollateralV3.from_json(
            case.dcap_qvl_collateral_json()
        )
    return _QVL_COLLATERAL[case.id]


# --------------------------------------------------------------------------- the published vectors


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vector_verdicts_agree(case: VectorCase) -> None:
    quote = case.evidence
    ours, theirs = run_nacre(case, quote), run_qvl(case, quote)
    assert ours.ok == theirs.ok, f"nacre {ours}, dcap-qvl {theirs}"
    assert ours.ok == (case.expected["verdict"] == "ok")
    if ours.ok:
        assert ours.status == theirs.status
        # Both list advisories in the order of Intel's collateral (platform, then QE / module).
        assert ours.advisories == theirs.advisories
        assert ours.status == case.expected["tcb_status"]
        assert set(ours.advisories) == set(case.expected["advisory_ids"])
    else:
        assert ours.error == case.expected["error"]


def test_excluded_case_is_still_unreadable_by_dcap_qvl() -> None:
    """The exception above is narrow: it holds only while dcap-qvl really rejects TCB info v2."""
    (case,) = [c for c in load_cases(tee=("sgx",)) if c.id in QVL_CANNOT_READ]
    theirs = run_qvl(case, case.evidence)
    assert not theirs.ok
    assert "sgxtcbcomponents" in theirs.error
    assert run_nacre(case, case.evidence) == Outcome(
        True, case.expected["tcb_status"], tuple(case.expected["advisory_ids"])
    )


# --------------------------------------------------------------------------- quote layout


@dataclass(frozen=True, slots=True)
class Layout:
    """Byte ranges [start, end) of a quote's parts, and where its length fields sit."""

    regions: dict[str, tuple[int, int]]
    #: name -> (offset, width in bytes) of each length field.
    lengths: dict[str, tuple[int, int]]
    #: the quote's meaningful length: everything after it is trailing padding.
    end: int

    def region_of(self, offset: int) -> str:
        for name, (lo, hi) in self.regions.items():
            if lo <= offset < hi:
                return name
        return "trailing"


_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"


def layout_of(quote: bytes) -> Layout:
    q = parse_quote(quote)
    v = q.header.version
    regions: dict[str, tuple[int, int]] = {"header": (0, 48)}
    lengths: dict[str, tuple[int, int]] = {}
    pos = 48
    if v == 5:
        regions["body_descriptor"] = (48, 54)
        lengths["body.size"] = (50, 4)
        pos = 54
    body_len = len(q.body.to_bytes())
    regions["body"] = (pos, pos + body_len)
    pos += body_len
    regions["sig_data_len"] = (pos, pos + 4)
    lengths["signature_data.size"] = (pos, 4)
    sig_start = pos + 4
    regions["quote_signature"] = (sig_start, sig_start + 64)
    regions["attestation_key"] = (sig_start + 64, sig_start + 128)
    pos = sig_start + 128
    if v != 3:
        regions["outer_cert_type"] = (pos, pos + 2)
        regions["outer_cert_size"] = (pos + 2, pos + 6)
        lengths["cert_data.size"] = (pos + 2, 4)
        pos += 6
    regions["qe_report"] = (pos, pos + 384)
    regions["qe_report_signature"] = (pos + 384, pos + 448)
    pos += 448
    auth = len(q.signature.qe.qe_auth_data)
    regions["qe_auth_data"] = (pos, pos + 2 + auth)
    lengths["qe_auth_data.size"] = (pos, 2)
    pos += 2 + auth
    regions["pck_cert_type"] = (pos, pos + 2)
    regions["pck_cert_size"] = (pos + 2, pos + 6)
    lengths["pck_cert_data.size"] = (pos + 2, 4)
    pos += 6
    pem = q.signature.qe.certification_data.data
    starts = [i for i in range(len(pem)) if pem.startswith(_BEGIN, i)]
    assert len(starts) == 3, "the vectors embed PCK leaf, PCK CA and root"
    regions["pem_leaf"] = (pos, pos + starts[1])
    regions["pem_pck_ca"] = (pos + starts[1], pos + starts[2])
    regions["pem_root"] = (pos + starts[2], pos + len(pem))
    pos += len(pem)
    end = sig_start + len(q.signature.to_bytes())
    if end > pos:
        regions["signature_padding"] = (pos, end)
    assert end == len(quote) - len(q.trailing)
    return Layout(regions, lengths, end)


# --------------------------------------------------------------------------- mutants


@dataclass(frozen=True, slots=True)
class Mutant:
    kind: str  # "bytes", "truncate", "length"
    data: bytes
    #: (offset, new byte) of every changed byte ("bytes"/"length"), or the cut offset ("truncate").
    edits: tuple[tuple[int, int], ...]
    regions: frozenset[str]
    note: str = ""

    def describe(self, case: VectorCase) -> str:
        if self.kind == "truncate":
            return f"{case.id}: truncate to {self.edits[0][0]} bytes ({self.note})"
        edits = ", ".join(f"[{o:#06x}]={b:#04x}" for o, b in self.edits)
        return f"{case.id}: {self.kind} {edits} in {sorted(self.regions)} {self.note}".rstrip()


#: Where single-byte mutations go (weights). "any" is anywhere in the meaningful length.
REGION_WEIGHTS: Final = {
    "any": 8,
    "header": 3,
    "body_descriptor": 1,
    "body": 3,
    "quote_signature": 2,
    "attestation_key": 2,
    "outer_cert_type": 1,
    "outer_cert_size": 1,
    "qe_report": 3,
    "qe_report_signature": 2,
    "qe_auth_data": 2,
    "pck_cert_type": 1,
    "pck_cert_size": 1,
    "pem_leaf": 3,
    "pem_pck_ca": 2,
    "pem_root": 2,
}


def _new_byte(rng: random.Random, old: int) -> int:
    if rng.random() < 0.5:
        return old ^ (1 << rng.randrange(8))  # one bit flip
    return (old + rng.randrange(1, 256)) % 256  # any other value


def _byte_mutant(
    quote: bytes, lay: Layout, rng: random.Random, names: list[str], weights: list[int]
) -> Mutant:
    """1-4 bytes changed in one region (scattered, or a burst of adjacent bytes)."""
    n = rng.randint(1, 4)
    region = rng.choices(names, weights)[0]
    lo, hi = (0, lay.end) if region == "any" else lay.regions[region]
    if rng.random() < 0.5 or hi - lo < 4:
        offsets = sorted({rng.randrange(lo, hi) for _ in range(n)})
    else:
        start = rng.randrange(lo, hi - n + 1)
        offsets = list(range(start, start + n))
    buf = bytearray(quote)
    for off in offsets:
        buf[off] = _new_byte(rng, buf[off])
    edits = tuple((off, buf[off]) for off in offsets)
    return Mutant("bytes", bytes(buf), edits, frozenset(lay.region_of(o) for o in offsets))


def _length_mutant(quote: bytes, lay: Layout, rng: random.Random) -> Mutant:
    """One length field nudged by a little, set to an edge value, or to anything."""
    name = rng.choice(sorted(lay.lengths))
    off, width = lay.lengths[name]
    modulus = 1 << (8 * width)
    old = int.from_bytes(quote[off : off + width], "little")
    roll = rng.random()
    if roll < 0.6:
        new = old + rng.choice([-64, -8, -4, -2, -1, 1, 2, 4, 8, 64, 1000])
    elif roll < 0.8:
        new = rng.choice([0, 1, modulus - 1, modulus >> 1])
    else:
        new = rng.randrange(modulus)
    new %= modulus
    if new == old:
        new = (old + 1) % modulus
    buf = bytearray(quote)
    buf[off : off + width] = new.to_bytes(width, "little")
    edits = tuple((o, buf[o]) for o in range(off, off + width) if buf[o] != quote[o])
    return Mutant(
        "length", bytes(buf), edits, frozenset({lay.region_of(off)}), f"{name} {old} -> {new}"
    )


def _truncation(quote: bytes, lay: Layout, rng: random.Random) -> Mutant:
    cut = rng.randrange(0, lay.end)
    where = lay.region_of(cut)
    return Mutant("truncate", quote[:cut], ((cut, 0),), frozenset({where}), where)


def mutants(case: VectorCase, count: int, seed: int = SEED) -> Iterator[Mutant]:
    """``count`` mutants of the case's quote (the same ones for the same seed): 72 % byte
    mutations, 14 % length-field edits, 14 % truncations inside the meaningful length."""
    quote = case.evidence
    lay = layout_of(quote)
    rng = random.Random(f"{seed}:{case.id}")
    weights = {r: w for r, w in REGION_WEIGHTS.items() if r == "any" or r in lay.regions}
    names, w = list(weights), list(weights.values())
    for _ in range(count):
        roll = rng.random()
        if roll < 0.72:
            yield _byte_mutant(quote, lay, rng, names, w)
        elif roll < 0.86:
            yield _length_mutant(quote, lay, rng)
        else:
            yield _truncation(quote, lay, rng)


# --------------------------------------------------------------------------- known differences


@dataclass(frozen=True, slots=True)
class KnownDifference:
    """A documented, narrow disagreement: mutants touching only ``regions`` (all edits inside
    them), where nacre rejects with ``nacre_code`` and dcap-qvl accepts."""

    regions: frozenset[str]
    nacre_code: str
    reason: str
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({"bytes"}))

    @property
    def regions_label(self) -> str:
        return "+".join(sorted(self.regions))

    def explains(self, m: Mutant, ours: Outcome, theirs: Outcome) -> bool:
        return (
            m.kind in self.kinds
            and m.regions <= self.regions
            and not ours.ok
            and ours.error == self.nacre_code
            and theirs.ok
        )


#: Intel's Quote Verification Library (SGX-TDX-DCAP-QuoteVerificationLibrary, QVL/Src/AttestationLibrary)
#: is the reference for who is right. In each case below nacre follows it and dcap-qvl is lenient.
KNOWN_DIFFERENCES: Final[tuple[KnownDifference, ...]] = (
    KnownDifference(
        regions=frozenset({"outer_cert_type"}),
        nacre_code="QUOTE_UNSUPPORTED",
        reason="v4/v5 outer certification data type must be 6 (QE report certification data): "
        "Intel QVL Quote::validate() rejects any other type (QuoteVerification/Quote.cpp); "
        "dcap-qvl's AuthDataV4::decode reads the container without looking at its type",
    ),
    KnownDifference(
        regions=frozenset({"pck_cert_size"}),
        nacre_code="QUOTE_MALFORMED",
        kinds=frozenset({"bytes", "length"}),
        reason="v4/v5: a shrunken inner PCK certification data size leaves bytes over inside the "
        "type-6 container; Intel QVL QEReportCertificationData::insert() rejects 'additional, not "
        "expected data' (QuoteStructures.cpp), dcap-qvl ignores what follows the inner data",
    ),
    KnownDifference(
        regions=frozenset({"pem_root"}),
        nacre_code="CERT_CHAIN_INVALID",
        reason="the quote's copy of the Intel SGX Root CA is altered: Intel QVL "
        "PckCertVerifier::verify() requires the chain's root to parse, verify and carry the "
        "trusted root's signature (STATUS_SGX_PCK_CERT_CHAIN_UNTRUSTED); dcap-qvl (webpki) only "
        "uses it as a path-building candidate and ignores it when it does not match",
    ),
)


# --------------------------------------------------------------------------- the campaign


@dataclass
class Campaign:
    ran: int = 0
    by_region: Counter[str] = field(default_factory=Counter)
    accepted_by_both: int = 0
    explained: Counter[str] = field(default_factory=Counter)  # known difference -> mutants
    disagreements: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)


def run_campaign(case: VectorCase, count: int, seed: int = SEED) -> Campaign:
    result = Campaign()
    for m in mutants(case, count, seed):
        assert m.data != case.evidence
        result.ran += 1
        result.by_region.update(m.regions)
        try:
            ours = run_nacre(case, m.data)
        except Exception as exc:  # anything but a NacreError is a nacre bug
            result.crashes.append(f"{m.describe(case)}: {type(exc).__name__}: {exc}")
            continue
        theirs = run_qvl(case, m.data)
        line = f"{m.describe(case)}: nacre {ours}, dcap-qvl {theirs}"
        if ours.ok == theirs.ok:
            if ours.ok:
                result.accepted_by_both += 1
                if (ours.status, ours.advisories) != (theirs.status, theirs.advisories):
                    result.disagreements.append(line)
            continue
        known = [k for k in KNOWN_DIFFERENCES if k.explains(m, ours, theirs)]
        if known:
            result.explained[known[0].regions_label] += 1
        else:
            result.disagreements.append(line)
    return result


def _check(case: VectorCase, result: Campaign, count: int) -> None:
    assert not result.crashes, "nacre raised a non-NacreError:\n" + "\n".join(result.crashes)
    assert not result.disagreements, "nacre and dcap-qvl disagree:\n" + "\n".join(
        result.disagreements
    )
    assert result.ran == count
    # The campaign reached every part of the quote.
    missed = set(layout_of(case.evidence).regions) - set(result.by_region)
    assert not missed, f"no mutant touched {sorted(missed)}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mutants_agree_with_dcap_qvl(case: VectorCase) -> None:
    _check(case, run_campaign(case, MUTANTS_PER_CASE), MUTANTS_PER_CASE)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mutants_agree_with_dcap_qvl_heavy(case: VectorCase, seed: int) -> None:
    _check(case, run_campaign(case, 2000, seed), 2000)


def test_campaign_size() -> None:
    """At least 2,000 mutants in the default run, across every SGX/TDX vector dcap-qvl reads."""
    assert len(CASES) * MUTANTS_PER_CASE >= 2000
    assert {c.version for c in CASES} == {3, 4, 5}


# --------------------------------------------------------------------------- targeted mutants


def _set(quote: bytes, offset: int, value: bytes) -> bytes:
    return quote[:offset] + value + quote[offset + len(value) :]


def _root_signature_char(quote: bytes) -> int:
    """Offset of a base64 character inside the signature of the chain's root certificate."""
    lo, hi = layout_of(quote).regions["pem_root"]
    end_marker = quote.rindex(b"-----END CERTIFICATE-----", lo, hi)
    return end_marker - 20  # last PEM line: the tail of the ECDSA signature value


def _known_difference_example(case_id: str, part: str) -> bytes:
    case = next(c for c in CASES if c.id == case_id)
    quote = case.evidence
    lay = layout_of(quote)
    if part == "outer_cert_type":
        return _set(quote, lay.regions["outer_cert_type"][0], (7).to_bytes(2, "little"))
    if part == "pck_cert_size":
        off, width = lay.lengths["pck_cert_data.size"]
        size = int.from_bytes(quote[off : off + width], "little")
        return _set(quote, off, (size - 1).to_bytes(width, "little"))
    off = _root_signature_char(quote)
    return _set(quote, off, b"A" if quote[off : off + 1] != b"A" else b"B")


@pytest.mark.parametrize(
    ("case_id", "part"),
    [
        ("tdx-v4-phala-b0c06f-uptodate", "outer_cert_type"),
        ("tdx-v5-gtg-90c06f-uptodate", "outer_cert_type"),
        ("tdx-v4-gtg-cos113-00806f05-uptodate", "pck_cert_size"),
        ("tdx-v5-gtg-90c06f-uptodate", "pck_cert_size"),
        ("sgx-v3-phala-processor-ca", "pem_root"),
        ("tdx-v4-phala-b0c06f-uptodate", "pem_root"),
    ],
)
def test_known_differences_hold(case_id: str, part: str) -> None:
    """Each documented difference is real today: nacre rejects as Intel's QVL does, dcap-qvl
    accepts. (If dcap-qvl becomes strict, this fails and the table entry should go.)"""
    case = next(c for c in CASES if c.id == case_id)
    mutant = _known_difference_example(case_id, part)
    (entry,) = [k for k in KNOWN_DIFFERENCES if part in k.regions]
    ours, theirs = run_nacre(case, mutant), run_qvl(case, mutant)
    assert not ours.ok
    assert ours.error == entry.nacre_code
    assert theirs.ok


PADDED_CASES: Final = [c for c in CASES if layout_of(c.evidence).end < len(c.evidence)]


@pytest.mark.parametrize("case", PADDED_CASES, ids=[c.id for c in PADDED_CASES])
def test_trailing_bytes_are_not_part_of_the_quote(case: VectorCase) -> None:
    """Bytes after the signature data (published quotes sit in zero-padded buffers) are ignored by
    both verifiers: removing them, or filling them with noise, changes nothing."""
    quote = case.evidence
    end = layout_of(quote).end
    rng = random.Random(f"{SEED}:trailing:{case.id}")
    noise = bytes(rng.randrange(256) for _ in range(len(quote) - end))
    expected = run_qvl(case, quote).verdict
    for variant in (quote[:end], quote[:end] + noise, quote[: (end + len(quote)) // 2]):
        assert run_nacre(case, variant).verdict == run_qvl(case, variant).verdict == expected


# --------------------------------------------------------------------------- nacre bugs found here

#: Mutants of the PCK chain found by the campaign on which nacre raised something other than a
#: NacreError (``cryptography`` parses certificate fields lazily, so a malformed name, extension
#: or key surfaces as ValueError / UnsupportedAlgorithm / DuplicateExtension / InvalidVersion
#: at first use). dcap-qvl rejects all of them; nacre must reject them with a NacreError.
CHAIN_PARSE_MUTANTS: Final = [
    # (case, ((offset, new byte), ...), where nacre raised it)
    ("tdx-v4-trustee-debug-td-50806f", ((0x064F, 0x73),), "PCK leaf subject (chain.cn)"),
    ("tdx-v4-trustee-debug-td-50806f", ((0x0CBE, 0x6C),), "PCK CA issuer (chain._issued_by)"),
    ("sgx-v3-automata-godcap-platform-ca", ((0x1042, 0x68),), "root subject (top.issuer)"),
    ("sgx-v3-automata-godcap-platform-ca", ((0x0D8F, 0x65),), "PCK CA CRL DP (extensions)"),
    ("sgx-v3-automata-solana-debug-enclave", ((0x0C54, 0x71),), "PCK CA curve OID (verify)"),
    ("sgx-v3-phala-processor-ca", ((0x0D88, 0x6B), (0x0D9F, 0x53)), "duplicate extension"),
    ("tdx-v4-phala-b0c06f-uptodate", ((0x0516, 0x43),), "PCK leaf version (load_pem_chain)"),
]


@pytest.mark.parametrize(
    ("case_id", "edits", "where"), CHAIN_PARSE_MUTANTS, ids=[m[2] for m in CHAIN_PARSE_MUTANTS]
)
def test_malformed_pck_chain_is_rejected_with_a_nacre_error(
    case_id: str, edits: tuple[tuple[int, int], ...], where: str
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    buf = bytearray(case.evidence)
    lay = layout_of(case.evidence)
    for off, value in edits:
        assert lay.region_of(off).startswith("pem_"), where
        buf[off] = value
    m = Mutant("bytes", bytes(buf), edits, frozenset(lay.region_of(o) for o, _ in edits))
    ours = run_nacre(case, m.data)  # raises (failing the test) on a non-NacreError
    theirs = run_qvl(case, m.data)
    assert not ours.ok
    # dcap-qvl rejects them too, except an altered root copy (a documented difference).
    assert not theirs.ok or any(k.explains(m, ours, theirs) for k in KNOWN_DIFFERENCES)
