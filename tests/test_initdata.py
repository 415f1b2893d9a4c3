"""KBS init-data: Trustee's Initdata TOML, its digest, and its binding to CONFIGID / MRCONFIGID /
HOST_DATA (zero-padded or truncated to the field, as Trustee's verifiers do)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.errors import UsageError, VerificationError
from nacre.token.initdata import MAX_INIT_DATA_BYTES, check_init_data, parse_init_data

DOC = 'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\n"policy.rego" = "allow = true"\n'


def test_digest_is_over_the_exact_text() -> None:
    init = parse_init_data({"format": "toml", "body": DOC})
    assert init.algorithm == "sha384"
    assert init.digest == hashlib.sha384(DOC.encode()).digest()
    assert init.data == {"policy.rego": "allow = true"}
    # Same TOML meaning, other bytes: another digest (the launch measured these bytes).
    other = parse_init_data({"format": "toml", "body": DOC + "\n"})
    assert other.digest != init.digest
    assert init.claims()["digest"] == init.digest.hex()


@pytest.mark.parametrize(
    ("tee", "field", "size"),
    [("sgx", "config_id", 64), ("tdx", "mr_config_id", 48), ("snp", "host_data", 32)],
)
@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_binding_pads_or_truncates_to_the_field(
    tee: str, field: str, size: int, algorithm: str
) -> None:
    body = f'version = "0.1.0"\nalgorithm = "{algorithm}"\n'
    init = parse_init_data({"format": "toml", "body": body})
    value = init.digest[:size].ljust(size, b"\x00")
    check_init_data(init, tee, {field: value.hex()})
    with pytest.raises(VerificationError) as info:
        check_init_data(init, tee, {field: bytes(size).hex()})
    assert info.value.code == "INIT_DATA_MISMATCH"
    assert info.value.field == field
    assert info.value.expected == value.hex()


def test_unknown_tee_is_refused() -> None:
    init = parse_init_data({"format": "toml", "body": DOC})
    with pytest.raises(VerificationError) as info:
        check_init_data(init, "sample", {})
    assert info.value.code == "INIT_DATA_UNSUPPORTED"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("toml", "init-data"),
        ({"format": "json", "body": "{}"}, "init-data.format"),
        ({"format": "toml"}, "init-data.body"),
        ({"format": "toml", "body": DOC, "extra": 1}, "init-data"),
        ({"format": "toml", "body": "version = "}, "init-data.body"),
        ({"format": "toml", "body": 'algorithm = "sha384"'}, "init-data.version"),
        ({"format": "toml", "body": 'version = "0.1.0"\nalgorithm = "md5"'}, "init-data.algorithm"),
        (
            {"format": "toml", "body": 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\na = 1'},
            "init-data.data",
        ),
        (
            {"format": "toml", "body": "#" * (MAX_INIT_DATA_BYTES + 1)},
            "init-data.body",
        ),
        ({"format": "toml", "body": 'version = "\ud800"'}, "init-data.body"),
    ],
)
def test_malformed_init_data_names_the_field(value: object, field: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_init_data(value)
    assert info.value.field == field


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=[]), max_size=300))
def test_any_body_parses_or_is_a_usage_error(body: str) -> None:
    try:
        init = parse_init_data({"format": "toml", "body": body})
    except UsageError:
        return
    assert len(init.digest) in (32, 48, 64)
