"""The orjson fast path of parse_signed_json agrees with the exact scanner on every input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral import signed_json
from nacre.collateral.signed_json import SignedJson, parse_signed_json
from nacre.errors import CollateralError
from vectors import VECTORS_DIR

SIG = "ab" * 64
BODIES = sorted(VECTORS_DIR.glob("*/tcb_info.json")) + sorted(
    VECTORS_DIR.glob("*/qe_identity.json")
)


def _name(path: Path) -> str:
    return "tcbInfo" if path.name == "tcb_info.json" else "enclaveIdentity"


def _outcome(fn: object, body: bytes, name: str) -> tuple[str, object]:
    try:
        got = fn(body, name, what="X")  # type: ignore[operator]
    except CollateralError as exc:
        return ("error", (exc.code, exc.field, exc.expected, exc.actual, str(exc)))
    except RecursionError:
        return ("recursion", None)
    assert isinstance(got, SignedJson)
    return ("ok", (got.name, got.signed_bytes, got.signature, got.value))


def _agree(body: bytes, name: str) -> tuple[str, object]:
    """parse_signed_json (fast path first) and the exact scanner give the same outcome."""
    fast = _outcome(parse_signed_json, body, name)
    exact = _outcome(signed_json._parse_exact, body, name)
    assert fast == exact
    if fast[0] == "ok":  # the value has the same types too, not only equal (1 == 1.0 == True)
        assert repr(fast[1]) == repr(exact[1])
    return fast


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_vectors_take_the_fast_path_and_agree(path: Path) -> None:
    body = path.read_bytes()
    assert signed_json._fast(body, _name(path)) is not None
    assert _agree(body, _name(path))[0] == "ok"


def _body(value: str, sig: str = f'"{SIG}"', name: str = "tcbInfo", first: bool = True) -> bytes:
    a, b = f'"{name}":{value}', f'"signature":{sig}'
    return ("{" + (f"{a},{b}" if first else f"{b},{a}") + "}").encode("utf-8", "surrogatepass")


ADVERSARIAL: list[tuple[str, bytes, str]] = [
    ("plain", _body('{"a":1}'), "ok"),
    ("signature first", _body('{"a":1}', first=False), "ok"),
    (
        "whitespace",
        b' \n{\t"tcbInfo" :\r {"a" : [1, 2]} ,\n "signature" : "' + SIG.encode() + b'" }\n',
        "ok",
    ),
    ("form feed", b'{"tcbInfo":{"a":1},\x0c"signature":"' + SIG.encode() + b'"}', "error"),
    ("nbsp", b'{"tcbInfo":{"a":1},\xc2\xa0"signature":"' + SIG.encode() + b'"}', "error"),
    ("trailing garbage", _body('{"a":1}') + b"x", "error"),
    ("trailing object", _body('{"a":1}') + b"{}", "error"),
    ("two values", _body('{"a":1} {"b":2}'), "error"),
    ("duplicate signature", _body(f'{{"a":1}},"signature":"{SIG}","x":{{"b":2}}'), "error"),
    ("duplicate name", _body('{"a":1},"tcbInfo":{"a":2}'), "error"),
    ("signature text inside", _body(f'{{"a":"\\"signature\\":\\"{SIG}\\""}}'), "ok"),
    ("signature member inside", _body(f'{{"signature":"{SIG}","a":1}}'), "ok"),
    ("nested duplicate keys", _body('{"a":1,"a":2}'), "ok"),
    ("extra member", _body('{"a":1},"x":2'), "ok"),
    ("NaN", _body('{"a":NaN}'), "ok"),
    ("Infinity", _body('{"a":-Infinity}'), "ok"),
    ("huge float", _body('{"a":1e400}'), "ok"),
    ("huge int", _body('{"a":18446744073709551616}'), "ok"),
    ("huge negative int", _body('{"a":[-9223372036854775809]}'), "ok"),
    ("spaced huge int", _body('{"a": - 1}'), "error"),
    ("max u64", _body('{"a":18446744073709551615}'), "ok"),
    ("long digits in a string", _body('{"a":"00000000000000000000000000"}'), "ok"),
    ("float", _body('{"a":0.30000000000000004,"b":1E5,"c":-0.0,"d":-0}'), "ok"),
    ("lone surrogate", _body('{"a":"\\ud800"}'), "ok"),
    ("lone low surrogate key", _body('{"\\udc00":1}'), "ok"),
    ("raw surrogate bytes", _body('{"a":"\ud800"}'), "error"),
    ("invalid utf-8", b'{"tcbInfo":{"a":"\xff"},"signature":"' + SIG.encode() + b'"}', "error"),
    (
        "overlong utf-8",
        b'{"tcbInfo":{"a":"\xc0\x80"},"signature":"' + SIG.encode() + b'"}',
        "error",
    ),
    ("BOM", b"\xef\xbb\xbf" + _body('{"a":1}'), "error"),
    ("control char", _body('{"a":"\t"}'), "error"),
    ("escaped key", _body('{"a":1}').replace(b"tcbInfo", b"tcb\\u0049nfo"), "ok"),
    ("value not object", _body("[1]"), "error"),
    ("short signature", _body('{"a":1}', sig='"abcd"'), "error"),
    ("uppercase signature", _body('{"a":1}', sig=f'"{SIG.upper()}"'), "ok"),
    # bytes.fromhex skips spaces: the scanner takes this 63-byte signature (verification fails)
    ("spaced signature", _body('{"a":1}', sig='"' + "ab " * 42 + 'ab"'), "ok"),
    ("non-hex signature", _body('{"a":1}', sig='"' + "zz" * 64 + '"'), "error"),
    ("escaped signature", _body('{"a":1}', sig='"\\u0061' + "b" + "ab" * 63 + '"'), "ok"),
    ("deep", _body('{"a":' + "[" * 600 + "]" * 600 + "}"), "recursion-or-ok"),
    ("deeper", _body('{"a":' + "[" * 1100 + "]" * 1100 + "}"), "recursion"),
    ("empty", b"", "error"),
    ("not an object", b"[]", "error"),
]


@pytest.mark.parametrize(("label", "body", "kind"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_inputs_agree(label: str, body: bytes, kind: str) -> None:
    got = _agree(body, "tcbInfo")[0]
    assert got == kind or (kind == "recursion-or-ok" and got in ("recursion", "ok")), label


def test_fast_path_refuses_what_orjson_reads_differently() -> None:
    for value in ('{"a":18446744073709551616}', '{"a":NaN}', '{"a":"\\ud800"}', '{"a":1e400}'):
        assert signed_json._fast(_body(value), "tcbInfo") is None, value
    assert signed_json._fast(_body('{"a":[1, 2.5, "x"]}'), "tcbInfo") is not None


def _mutations(body: bytes) -> list[bytes]:
    value = json.loads(body)
    name = next(k for k in value if k != "signature")
    signed = signed_json._parse_exact(body, name, what="X").signed_bytes
    sig = f'"signature":"{value["signature"]}"'.encode()
    return [
        body,
        body + b"\n",
        b"\n " + body.replace(b",", b" ,\n", 1),
        body.replace(b"}", b"}}", 1),
        body[:-1] + b',"signature":"' + b"0" * 128 + b'"}',
        b"{" + sig + b',"' + name.encode() + b'":' + signed + b"}",
        b"{" + sig + b',"' + name.encode() + b'":' + signed + b"," + sig + b"}",
        body.replace(b":1,", b":NaN,", 1),
        body.replace(b":0,", b":123456789012345678901234,", 1),
        body.replace(b'"', b"\xff", 3),
        body.replace(b"1", b"1.0", 1),
    ]


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_mutated_vectors_agree(path: Path) -> None:
    for mutated in _mutations(path.read_bytes()):
        _agree(mutated, _name(path))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    value=st.dictionaries(st.text(max_size=6), _json_values, max_size=5),
    first=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    sig=st.sampled_from([SIG, SIG.upper(), "ab" * 63, "gg" * 64, "ab" * 65]),
    tail=st.sampled_from(["", " ", "\n", "x", "}", ",", '{"a":1}']),
)
def test_generated_bodies_agree(
    value: dict[str, object], first: bool, indent: int | None, sig: str, tail: str
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    _agree(_body(text, sig=f'"{sig}"', first=first) + tail.encode(), "tcbInfo")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=200))
def test_spliced_bytes_agree(junk: bytes, at: int) -> None:
    body = _body('{"a":[1,{"b":"c"}],"d":"e"}')
    at = min(at, len(body))
    _agree(body[:at] + junk + body[at:], "tcbInfo")
