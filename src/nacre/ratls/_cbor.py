"""A small, strict CBOR (RFC 8949) codec for the one structure RA-TLS needs.

Interoperable RA-TLS evidence is ``60000([bstr quote, bstr claims])`` with ``claims`` the encoding of
``{"pubkey-hash": bstr(encoding of [uint alg, bstr hash])}``: tags, arrays, maps, byte and text
strings and unsigned integers. This codec handles exactly that subset and refuses the rest:

* major types 0 (unsigned), 2 (bytes), 3 (text), 4 (array), 5 (map) and 6 (tag) only; negative
  integers, floats, simple values, ``break`` and indefinite lengths are refused;
* every argument must use its shortest form (RFC 8949 §4.2.1 preferred serialization), so one value
  has one encoding; text must be valid UTF-8; map keys are text or unsigned and never repeat;
* nesting depth and items per container are bounded (:data:`MAX_DEPTH`, :data:`MAX_ITEMS`), and a
  length can never run past the input; trailing bytes after the top-level item are refused.

Decoded values are ``int``, ``bytes``, ``str``, ``list``, ``dict`` and :class:`Tag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from nacre.errors import MalformedEvidenceError

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "CborError", "CborValue", "Tag", "decode", "encode"]

#: Containers nested deeper than this are refused (the RA-TLS structure is 3 deep).
MAX_DEPTH: Final = 8
#: Items in one array, or pairs in one map.
MAX_ITEMS: Final = 64

_UINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG = 0, 2, 3, 4, 5, 6
_MAJOR_NAMES: Final = {
    1: "negative integer",
    7: "float/simple value",
}


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged data item: ``number(value)``."""

    number: int
    value: CborValue


CborValue: TypeAlias = "int | bytes | str | list[CborValue] | dict[CborKey, CborValue] | Tag"
CborKey: TypeAlias = int | str


class CborError(MalformedEvidenceError):
    """Bytes that are not CBOR of the subset RA-TLS uses."""

    default_code = "RATLS_EVIDENCE_MALFORMED"


def _head(major: int, arg: int) -> bytes:
    if arg < 0 or arg >= 1 << 64:
        raise ValueError(f"CBOR argument out of range: {arg}")
    if arg < 24:
        return bytes([major << 5 | arg])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | ai]) + arg.to_bytes(size, "big")
    raise AssertionError("unreachable")


def encode(value: CborValue) -> bytes:
    """Encode with preferred (shortest) serialization; map keys keep the caller's order."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: CborValue, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("CBOR value nested too deep")
    if isinstance(value, bool):  # bool is an int subclass: refuse rather than encode 0/1
        raise TypeError("booleans are outside the RA-TLS CBOR subset")
    if isinstance(value, int):
        out += _head(_UINT, value)
    elif isinstance(value, bytes):
        out += _head(_BYTES, len(value)) + value
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += _head(_TEXT, len(raw)) + raw
    elif isinstance(value, list):
        out += _head(_ARRAY, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out += _head(_MAP, len(value))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    elif isinstance(value, Tag):
        out += _head(_TAG, value.number)
        _encode(value.value, out, depth + 1)
    else:
        raise TypeError(f"{type(value).__name__} is outside the RA-TLS CBOR subset")


def decode(data: bytes, *, what: str = "CBOR") -> CborValue:
    """Decode exactly one data item that fills ``data``; ``what`` names it in errors."""
    reader = _Reader(bytes(data), what)
    value = reader.item(0)
    if reader.pos != len(reader.data):
        raise reader.error(
            "trailing bytes after the CBOR item",
            expected=f"{reader.pos} bytes",
            actual=f"{len(reader.data)} bytes",
        )
    return value


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def error(self, message: str, *, expected: object = None, actual: object = None) -> CborError:
        return CborError(
            f"{self.what}: {message}",
            field=f"{self.what} @ byte {self.pos}",
            expected=expected,
            actual=actual,
        )

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.error(
                "length runs past the end of the data",
                expected=f"{n} more bytes",
                actual=f"{len(self.data) - self.pos} left",
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int]:
        initial = self.take(1)[0]
        major, ai = initial >> 5, initial & 0x1F
        if major in _MAJOR_NAMES:
            raise self.error(
                f"{_MAJOR_NAMES[major]} is outside the RA-TLS CBOR subset",
                expected="unsigned, bytes, text, array, map or tag",
                actual=f"major type {major}",
            )
        if ai < 24:
            return major, ai
        if ai == 31:
            raise self.error("indefinite lengths are refused", expected="definite length")
        if ai > 27:
            raise self.error("reserved additional information", actual=ai)
        size = 1 << (ai - 24)
        arg = int.from_bytes(self.take(size), "big")
        shortest = 24 if arg < 24 else next(s for s in (1, 2, 4, 8) if arg < 1 << (8 * s))
        if shortest != size:
            raise self.error(
                "argument not in its shortest form",
                expected="preferred serialization (RFC 8949 §4.2.1)",
                actual=f"{arg} in {size} bytes",
            )
        return major, arg

    def item(self, depth: int) -> CborValue:
        if depth > MAX_DEPTH:
            raise self.error("nested too deep", expected=f"<= {MAX_DEPTH} levels")
        major, arg = self.head()
        if major == _UINT:
            return arg
        if major == _BYTES:
            return self.take(arg)
        if major == _TEXT:
            raw = self.take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error("text string is not UTF-8") from exc
        if major in (_ARRAY, _MAP) and arg > MAX_ITEMS:
            raise self.error("too many items", expected=f"<= {MAX_ITEMS}", actual=arg)
        if major == _ARRAY:
            return [self.item(depth + 1) for _ in range(arg)]
        if major == _MAP:
            out: dict[CborKey, CborValue] = {}
            for _ in range(arg):
                key = self.item(depth + 1)
                if not isinstance(key, int | str):
                    raise self.error("map key is not text or unsigned", actual=type(key).__name__)
                if key in out:
                    raise self.error("duplicate map key", actual=repr(key))
                out[key] = self.item(depth + 1)
            return out
        return Tag(arg, self.item(depth + 1))
