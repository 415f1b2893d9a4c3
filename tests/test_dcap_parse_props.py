"""Properties of the DCAP quote parser (``nacre.evidence.parse_quote``), over random bytes and over
mutants of the real quotes in shared/vectors.

- whatever the bytes, the parser returns a DcapQuote or raises MalformedEvidenceError naming a field;
- whatever parses serialises back to exactly the bytes it came from;
- a quote cut short anywhere inside its meaningful length is refused, naming the field it ends in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacre.errors import MalformedEvidenceError, UnsupportedEvidenceError
from nacre.evidence import DcapQuote, parse_quote
from vectors import VectorCase, load_case, load_cases

DCAP_CASES: Final = load_cases(tee=("sgx", "tdx"))
QUOTES: Final = [c.evidence for c in DCAP_CASES]
HEADER_SIZE: Final = 48

#: One quote per layout, each without trailing padding: SGX v3, TDX v4 (TD report 1.0),
#: TDX v5 (TD report 1.5, with the v5 body descriptor).
TRUNCATION_CASES: Final = [
    load_case("sgx-v3-phala-processor-ca"),
    load_case("tdx-v4-trustee-debug-td-50806f"),
    load_case("tdx-v5-gtg-90c06f-uptodate"),
]

FAST: Final = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
HEAVY: Final = settings(
    max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def parse_or_refuse(data: bytes) -> DcapQuote | None:
    """The property every input must satisfy. Returns the quote, or None when refused."""
    refused: MalformedEvidenceError | None = None
    try:
        quote = parse_quote(data)
    except MalformedEvidenceError as exc:  # UnsupportedEvidenceError included
        refused = exc
    if refused is not None:
        assert refused.field, f"error without a field: {refused!r}"
        unsupported = isinstance(refused, UnsupportedEvidenceError)
        assert refused.code == ("QUOTE_UNSUPPORTED" if unsupported else "QUOTE_MALFORMED")
        return None
    # Anything that parses serialises back byte for byte (trailing bytes included).
    assert quote.to_bytes() == data
    return quote


# --------------------------------------------------------------------------- layout of a quote


@dataclass(frozen=True, slots=True)
class Spans:
    """Where a parsed quote's parts lie; ``free`` are bytes the parser does not interpret."""

    body: tuple[int, int]
    sig_len: int  # offset of the u32 signature data size
    end: int  # meaningful length (before trailing padding)
    free: tuple[tuple[int, int], ...]
    lengths: tuple[tuple[int, int], ...]  # (offset, width) of every length field


def spans(data: bytes) -> Spans:
    q = parse_quote(data)
    v5 = q.header.version == 5
    body_start = HEADER_SIZE + (6 if v5 else 0)
    body_end = body_start + len(q.body.to_bytes())
    sig_start = body_end + 4
    qe_start = sig_start + 128 + (0 if q.header.version == 3 else 6)
    auth_len = len(q.signature.qe.qe_auth_data)
    cert_start = qe_start + 448 + 2 + auth_len
    end = sig_start + len(q.signature.to_bytes())
    lengths = [(body_end, 4), (qe_start + 448, 2), (cert_start + 2, 4)]
    if v5:
        lengths.append((HEADER_SIZE + 2, 4))
    if q.header.version != 3:
        lengths.append((sig_start + 130, 4))
    free = (
        (8, HEADER_SIZE),  # QE/PCE SVN, QE vendor ID, user data
        (body_start, body_end),  # the report body
        (sig_start, sig_start + 128),  # quote signature, attestation key
        (qe_start, qe_start + 448),  # QE report and its signature
        (qe_start + 450, qe_start + 450 + auth_len),  # QE auth data
        (cert_start + 6, end),  # PCK chain (PEM)
    )
    return Spans((body_start, body_end), body_end, end, free, tuple(lengths))


# --------------------------------------------------------------------------- strategies


@st.composite
def header_like(draw: st.DrawFn) -> bytes:
    """A header the parser gets past (or nearly), followed by anything."""
    version = draw(st.sampled_from([3, 4, 5, 2, 6]))
    key = draw(st.sampled_from([2, 2, 2, 3]))
    tee = draw(st.sampled_from([0, 0x81, 0x81, 1]))
    head = (
        version.to_bytes(2, "little")
        + key.to_bytes(2, "little")
        + tee.to_bytes(4, "little")
        + draw(st.binary(min_size=40, max_size=40))
    )
    if version == 5 and draw(st.booleans()):
        body_type = draw(st.sampled_from([1, 2, 3, 0, 4]))
        size = draw(st.sampled_from([384, 584, 648, 0, 2**32 - 1]))
        head += body_type.to_bytes(2, "little") + size.to_bytes(4, "little")
    return head + draw(st.binary(max_size=2048))


@st.composite
def mutated_vector(draw: st.DrawFn) -> bytes:
    """A real quote with bytes changed, a length field rewritten, cut short and/or extended."""
    buf = bytearray(draw(st.sampled_from(QUOTES)))
    sp = spans(bytes(buf))
    for _ in range(draw(st.integers(0, 4))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        off, width = draw(st.sampled_from(sp.lengths))
        value = draw(
            st.one_of(
                st.integers(0, 2 ** (8 * width) - 1),
                st.integers(-16, 16).map(
                    lambda d: (
                        (int.from_bytes(buf[off : off + width], "little") + d) % 2 ** (8 * width)
                    )
                ),
            )
        )
        buf[off : off + width] = value.to_bytes(width, "little")
    if draw(st.booleans()):
        del buf[draw(st.integers(0, len(buf))) :]
    if draw(st.booleans()):
        buf += draw(st.binary(max_size=64))
    return bytes(buf)


ANY_BYTES: Final = st.one_of(st.binary(max_size=8192), header_like(), mutated_vector())


# --------------------------------------------------------------------------- properties


@FAST
@given(ANY_BYTES)
def test_any_bytes_parse_or_malformed(data: bytes) -> None:
    parse_or_refuse(data)


@pytest.mark.slow
@HEAVY
@given(ANY_BYTES)
def test_any_bytes_parse_or_malformed_heavy(data: bytes) -> None:
    parse_or_refuse(data)


@pytest.mark.parametrize("case", DCAP_CASES, ids=[c.id for c in DCAP_CASES])
def test_every_vector_round_trips(case: VectorCase) -> None:
    quote = parse_quote(case.evidence)
    assert quote.to_bytes() == case.evidence
    assert quote.tee == case.tee
    assert quote.header.version == case.version
    sp = spans(case.evidence)
    assert quote.trailing == case.evidence[sp.end :]
    assert quote.signed_bytes == case.evidence[: sp.body[1]]
    assert quote.pck_chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")


@st.composite
def content_mutant(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(original, mutant) with 1-8 bytes changed where the parser reads content, not structure."""
    original = draw(st.sampled_from(QUOTES))
    free = spans(original).free
    buf = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        lo, hi = draw(st.sampled_from(free))
        off = draw(st.integers(lo, hi - 1))
        buf[off] = (buf[off] + draw(st.integers(1, 255))) % 256
    return original, bytes(buf)


@FAST
@given(content_mutant())
def test_mutated_vectors_that_parse_round_trip(pair: tuple[bytes, bytes]) -> None:
    """Changing content bytes (not lengths or types) never stops a quote from parsing, and the
    mutant serialises back to itself, not to the original."""
    original, mutant = pair
    quote = parse_or_refuse(mutant)
    assert quote is not None
    assert quote.to_bytes() == mutant
    assert (quote.to_bytes() == original) == (mutant == original)


@FAST
@given(mutated_vector())
def test_mutated_vectors_parse_or_malformed(data: bytes) -> None:
    quote = parse_or_refuse(data)
    if quote is not None:
        assert parse_quote(quote.to_bytes()) == quote


def _expected_field(sp: Spans, cut: int, version: int) -> tuple[str, ...]:
    """Field-name prefixes the parser may name when the quote ends at ``cut``."""
    if cut < HEADER_SIZE:
        return ("header.",)
    if version == 5 and cut < sp.body[0]:
        return ("body.type", "body.size")
    if cut < sp.body[1]:
        return ("report", "td_report", "body")
    if cut < sp.sig_len + 4:
        return ("signature_data.size",)
    return ("signature_data",)


@pytest.mark.parametrize("case", TRUNCATION_CASES, ids=[c.id for c in TRUNCATION_CASES])
def test_truncation_at_every_offset_names_a_field(case: VectorCase) -> None:
    quote = case.evidence
    sp = spans(quote)
    assert sp.end == len(quote), "truncation cases have no trailing padding"
    fields: set[str] = set()
    for cut in range(sp.end):
        with pytest.raises(MalformedEvidenceError) as info:
            parse_quote(quote[:cut])
        exc = info.value
        assert type(exc) is MalformedEvidenceError
        assert exc.code == "QUOTE_MALFORMED"
        assert exc.field is not None
        assert exc.field.startswith(_expected_field(sp, cut, case.version)), (cut, exc.field)
        assert exc.expected
        assert exc.actual
        fields.add(exc.field)
    assert parse_quote(quote).to_bytes() == quote
    assert "signature_data" in fields
    assert any(f.startswith("header.") for f in fields)
