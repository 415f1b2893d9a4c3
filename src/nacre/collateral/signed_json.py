"""Intel's signed JSON collateral: ``{"<name>": {...}, "signature": "<hex r||s>"}``.

The signature covers the exact bytes of the ``<name>`` object as they appear in the body, so the
object is located by scanning the top-level object, not by re-serialising parsed JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def parse_signed_json(body: bytes, name: str, *, what: str) -> SignedJson:
    """Split ``body`` into the signed object named ``name`` (exact bytes) and its signature."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(what, what, "UTF-8 JSON", str(exc)) from exc
    dec = json.JSONDecoder()
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
