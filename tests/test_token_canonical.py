"""RFC 8785 JCS against the RFC's own examples, and the KBS v0.4.0 report_data binding."""

from __future__ import annotations

import hashlib
import struct

import pytest

from nacre.token.canonical import (
    canonicalize,
    canonicalize_text,
    es_number,
    kbs_report_data,
    kbs_runtime_data,
)
from nacre.token.errors import CanonicalizationError

# RFC 8785 Appendix B: IEEE-754 bit patterns and their ECMAScript serialisation.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),  # minus zero
    ("0000000000000001", "5e-324"),  # min positive
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),  # max
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),  # 2**53
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),  # 2**68, note (2)
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),  # note (4): round half to even
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert es_number(value) == expected
    # The RFC's output is its own canonical form.
    assert canonicalize_text(expected).decode() == expected


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_rfc8785_appendix_b_nan_and_infinity_refused(bits: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    with pytest.raises(CanonicalizationError):
        canonicalize([value])


def test_rfc8785_section_3_2_2_example() -> None:
    text = r"""{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize_text(text) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_sorting() -> None:
    text = r"""{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"""
    out = canonicalize_text(text).decode("utf-8")
    order = [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",  # U+1F600 sorts by its surrogates (0xD83D), before U+FB33
        "Hebrew Letter Dalet With Dagesh",
    ]
    positions = [out.index(name) for name in order]
    assert positions == sorted(positions)
    assert out.startswith('{"\\r":"Carriage Return","1":"One"')


def test_rfc8785_section_3_2_4_utf8() -> None:
    expected = bytes.fromhex(
        "7b 22 55 6e 6e 6f 72 6d 61 6c 69 7a 65 64 20 55 6e 69 63 6f 64 65 22 3a 22 41 cc 8a 22 7d"
    )
    assert canonicalize_text('{"Unnormalized Unicode":"A\\u030a"}') == expected


def test_escapes_are_minimal_and_lowercase() -> None:
    value = '\x00\x1f\x7f\u2028\b\t\n\f\r"\\/é'
    assert canonicalize(value) == '"\\u0000\\u001f\x7f\u2028\\b\\t\\n\\f\\r\\"\\\\/é"'.encode()


def test_integers_follow_doubles_or_are_refused() -> None:
    assert (
        canonicalize([1, -0, 2**53, 10**21, 10**20])
        == b"[1,0,9007199254740992,1e+21,100000000000000000000]"
    )
    with pytest.raises(CanonicalizationError):
        canonicalize(2**53 + 1)  # no double equals it: JCS would change the value
    with pytest.raises(CanonicalizationError):
        canonicalize(10**400)


@pytest.mark.parametrize(
    "value",
    [{1: "x"}, b"bytes", {"a": object()}, "\ud800", float("nan"), [float("-inf")]],
)
def test_unrepresentable_values_refused(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


@pytest.mark.parametrize("text", ['{"a":1,"a":2}', "[NaN]", "[Infinity]", "{", ""])
def test_bad_json_text_refused(text: str) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize_text(text)


def test_depth_limit() -> None:
    deep: object = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CanonicalizationError):
        canonicalize(deep)


def test_trustee_as_runtime_data_vector() -> None:
    # Trustee attestation-service/src/lib.rs test: SHA-384(JCS({"b":1,"a":"test","c":{"d":"e"}})).
    digest = hashlib.sha384(canonicalize({"b": 1, "a": "test", "c": {"d": "e"}})).hexdigest()
    assert digest == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )


NONCE = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8w="
JWK = {
    "kty": "EC",
    "crv": "P-256",
    "alg": "ECDH-ES+A256KW",
    "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
    "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
}


def test_kbs_report_data_known_answer() -> None:
    # Written out by hand from the spec: members sorted, no whitespace, the JWK members sorted too.
    jcs = (
        b'{"additional-evidence":"","nonce":"' + NONCE.encode() + b'","tee-pubkey":'
        b'{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC",'
        b'"x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",'
        b'"y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}}'
    )
    assert canonicalize(kbs_runtime_data(NONCE, JWK)) == jcs
    expected = hashlib.sha384(jcs).digest() + bytes(16)
    report_data = kbs_report_data(NONCE, JWK)
    assert report_data == expected
    assert len(report_data) == 64
    assert report_data.hex() == (
        "1eef05980b27a928eebb9af73031f50b0372fb770e0ffc7c657ca76e525c911e"
        "a4c9bee3c1a6401f1ba800e3d1128639" + "00" * 16
    )


def test_kbs_report_data_binds_every_member() -> None:
    base = kbs_report_data(NONCE, JWK)
    assert kbs_report_data(NONCE, JWK, '{"nvidia":{}}') != base
    assert kbs_report_data(NONCE[:-2] + "A=", JWK) != base
    assert kbs_report_data(NONCE, {**JWK, "x": JWK["y"]}) != base
    sha512 = kbs_report_data(NONCE, JWK, hash_algorithm="sha512")
    assert sha512 == hashlib.sha512(canonicalize(kbs_runtime_data(NONCE, JWK))).digest()
