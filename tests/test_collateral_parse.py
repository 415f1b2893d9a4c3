"""Collateral parsers: real files parse; damaged ones give CollateralError naming the field."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral.certs import load_crl, load_pem_chain
from nacre.collateral.qe_identity import parse_qe_identity
from nacre.collateral.signed_json import parse_signed_json
from nacre.collateral.tcb_info import parse_tcb_info
from nacre.errors import CollateralError, LimitExceededError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
DCAP_CASES = sorted(p for p in VECTORS.iterdir() if (p / "quote.bin").exists())


@pytest.mark.parametrize("case", DCAP_CASES, ids=lambda p: p.name)
def test_real_collateral_parses(case: Path) -> None:
    tcb = parse_tcb_info((case / "tcb_info.json").read_bytes())
    qe = parse_qe_identity((case / "qe_identity.json").read_bytes())
    assert tcb.id in ("SGX", "TDX")
    assert qe.id == ("TD_QE" if tcb.id == "TDX" else "QE")
    # The signed bytes are exactly the object's bytes in the file.
    assert tcb.signed.signed_bytes in (case / "tcb_info.json").read_bytes()
    assert len(load_pem_chain((case / "tcb_info_issuer_chain.pem").read_bytes(), field="x")) == 2
    load_crl((case / "pck_crl.der").read_bytes(), field="pck_crl.der")


def test_tcb_info_v2_levels_are_read() -> None:
    tcb = parse_tcb_info(
        (VECTORS / "sgx-v3-automata-godcap-platform-ca-tcbinfo-v2" / "tcb_info.json").read_bytes()
    )
    assert tcb.version == 2
    assert len(tcb.levels[0].sgx_components) == 16
    assert tcb.levels[0].tdx_components is None


def test_signed_bytes_keep_whitespace() -> None:
    body = b'{ "tcbInfo" : {"a": 1,  "b":[1, 2]} , "signature":"' + b"ab" * 64 + b'" }'
    s = parse_signed_json(body, "tcbInfo", what="TCB info")
    assert s.signed_bytes == b'{"a": 1,  "b":[1, 2]}'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"tcbInfo":{},"signature":"00"}', "signature"),
        (b'{"tcbInfo":{}}', "TCB info"),
        (b'{"tcbInfo":{},"tcbInfo":{},"signature":"' + b"00" * 64 + b'"}', "tcbInfo"),
        (b"[1,2]", "TCB info"),
        (b'{"tcbInfo":{"version":4},"signature":"' + b"00" * 64 + b'"}', "tcbInfo.version"),
        (b'{"tcbInfo":{"version":3,"id":"XYZ"},"signature":"' + b"00" * 64 + b'"}', "tcbInfo.id"),
    ],
)
def test_malformed_tcb_info_names_field(body: bytes, field: str) -> None:
    with pytest.raises(CollateralError) as info:
        parse_tcb_info(body)
    assert info.value.field == field


def test_chain_limits() -> None:
    pem = (VECTORS / "sgx-v3-phala-processor-ca" / "pck_cert_chain.pem").read_bytes()
    with pytest.raises(LimitExceededError):
        load_pem_chain(pem * 2, field="chain")
    with pytest.raises(CollateralError):
        load_pem_chain(b"not pem", field="chain")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_collateral_error(data: bytes) -> None:
    for parse in (parse_tcb_info, parse_qe_identity):
        with contextlib.suppress(CollateralError):
            parse(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255))
def test_mutated_tcb_info_parses_or_errors(pos: int, value: int) -> None:
    raw = bytearray((VECTORS / "tdx-v4-dcaprs-00806f05-outofdate" / "tcb_info.json").read_bytes())
    raw[pos % len(raw)] = value
    with contextlib.suppress(CollateralError):
        parse_tcb_info(bytes(raw))
