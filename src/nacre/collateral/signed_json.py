"""Intel's signed JSON collateral: ``{"<name>": {...}, "signature": "<hex r||s>"}``.

The signature covers the exact bytes of the ``<name>`` object as they appear in the body, so the
object is located by scanning the top-level object, not by re-serialising parsed JSON.

Bodies of exactly the two shapes Intel publishes take a fast path (an anchored regex for the
envelope, then orjson for the signed object); anything else, and anything orjson reads differently
from :mod:`json`, falls back to the exact scanner, so every result and every error is the scanner's.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from nacre.errors import CollateralError

__all__ = ["SignedJson", "parse_signed_json"]

_WS = " \t\n\r"


@dataclass(frozen=True, slots=True)
class SignedJson:
    name: str
    signed_bytes: bytes  # the exact bytes of the signed object
    signature: bytes  # raw r || s (64 bytes for P-256)
    value: dict[str, Any]


def _bad(what: str, field: str, expected: str, actual: str) -> CollateralError:
    return CollateralError(
        f"{what} is not valid signed collateral JSON",
        code="COLLATERAL_MALFORMED",
        field=field,
        expected=expected,
        actual=actual,
        hint="fetch the collateral again: nacre collateral fetch EVIDENCE --out DIR",
    )


_DECODER = json.JSONDecoder()

_J_WS = rb"[ \t\n\r]*"  # JSON whitespace, the only bytes json's scanner skips between tokens
_SIG_MEMBER = _J_WS.join([rb'"signature"', b":", rb'"([0-9a-fA-F]{128})"'])
# orjson differs from json on integers beyond 64 bits (orjson: float; json: int) and on nesting
# json cannot recurse into (json: RecursionError). One translate screens for both: whitespace and
# "-" are dropped, digits become "0", "," becomes ":" and "[" becomes "{", so a number token of 19
# or more digits shows up as ":" or "{" then 19 "0"s (strings only add false alarms, which fall
# back), and the count of "{" bounds the nesting depth.
_SCREEN = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x3A if b == 0x2C else 0x7B if b == 0x5B else b
    for b in range(256)
)
_SCREEN_DROP = b" \t\n\r-"
_LONG_NUMBERS = (b":" + b"0" * 19, b"{" + b"0" * 19)  # may not fit orjson's i64/u64


@lru_cache(maxsize=8)
def _shapes(name: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes]] | None:
    """``{"name": {...}, "signature": "hex"}`` and the signature-first order, whole body."""
    if not name.isascii() or not name.isidentifier() or name == "signature":
        return None
    key = b'"' + name.encode("ascii") + b'"'
    obj = _J_WS.join([key, b":", rb"(\{.*\})"])

    def whole(first: bytes, second: bytes) -> re.Pattern[bytes]:
        body = _J_WS.join([rb"\A", rb"\{", first, b",", second, rb"\}", rb"\Z"])
        return re.compile(body, re.DOTALL)

    return whole(obj, _SIG_MEMBER), whole(_SIG_MEMBER, obj)


def _fast(body: bytes, name: str) -> SignedJson | None:
    """The common case, or None: then the exact scanner decides (and names any error)."""
    shapes = _shapes(name)
    if shapes is None:
        return None
    if (m := shapes[0].match(body)) is not None:
        signed, sig_hex = m.group(1, 2)
    elif (m := shapes[1].match(body)) is not None:
        sig_hex, signed = m.group(1, 2)
    else:
        return None
    screened = signed.translate(_SCREEN, _SCREEN_DROP)
    if (
        _LONG_NUMBERS[0] in screened
        or _LONG_NUMBERS[1] in screened
        or screened.count(b"{") >= sys.getrecursionlimit() // 2
    ):
        return None
    try:
        # One JSON value or an error: orjson rejects trailing content, invalid UTF-8, NaN,
        # Infinity, lone surrogates and out-of-range floats, all of which json accepts or
        # reports itself.
        value = orjson.loads(signed)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        return None
    return SignedJson(name, signed, bytes.fromhex(sig_hex.decode("ascii")), value)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def parse_signed_json(body: bytes, name: str, *, what: str) -> SignedJson:
    """Split ``body`` into the signed object named ``name`` (exact bytes) and its signature."""
    if (fast := _fast(body, name)) is not None:
        return fast
    return _parse_exact(body, name, what=what)


def _parse_exact(body: bytes, name: str, *, what: str) -> SignedJson:
    """The reference scanner: every member, duplicate keys refused, errors named."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(what, what, "UTF-8 JSON", str(exc)) from exc
    dec = _DECODER
    members: dict[str, tuple[Any, int, int]] = {}
    try:
        i = _skip_ws(text, 0)
        if i >= len(text) or text[i] != "{":
            raise _bad(what, what, "a JSON object", repr(text[:20]))
        i = _skip_ws(text, i + 1)
        while i < len(text) and text[i] != "}":
            key, i = dec.raw_decode(text, i)
            if not isinstance(key, str):
                raise _bad(what, what, "a string key", repr(key))
            i = _skip_ws(text, i)
            if i >= len(text) or text[i] != ":":
                raise _bad(what, what, "':' after a key", repr(text[i : i + 10]))
            start = _skip_ws(text, i + 1)
            value, end = dec.raw_decode(text, start)
            if key in members:
                raise _bad(what, key, "each key once", f"{key!r} twice")
            members[key] = (value, start, end)
            i = _skip_ws(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
        if i >= len(text) or _skip_ws(text, i + 1) != len(text):
            raise _bad(what, what, "one JSON object", "trailing content")
    except json.JSONDecodeError as exc:
        raise _bad(what, what, "valid JSON", str(exc)) from exc
    if name not in members or "signature" not in members:
        raise _bad(what, what, f'keys "{name}" and "signature"', ", ".join(members) or "none")
    value, start, end = members[name]
    sig_hex = members["signature"][0]
    if not isinstance(value, dict):
        raise _bad(what, name, "an object", type(value).__name__)
    if not isinstance(sig_hex, str) or len(sig_hex) != 128:
        raise _bad(what, "signature", "128 hex digits (r || s)", f"{sig_hex!r:.40}")
    try:
        signature = bytes.fromhex(sig_hex)
    except ValueError as exc:
        raise _bad(what, "signature", "hex", str(exc)) from exc
    return SignedJson(name, text[start:end].encode("utf-8"), signature, value)
