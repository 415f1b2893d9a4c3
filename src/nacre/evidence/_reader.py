"""A bounded little-endian byte reader: every read checks the length before slicing."""

from __future__ import annotations

import re
import struct
from dataclasses import fields
from typing import Any

from nacre.errors import MalformedEvidenceError

__all__ = ["Layout", "Reader"]


class Layout:
    """A fixed little-endian record: a ``struct`` format plus the field names, for fast parsing
    that still names the exact field a truncated input cuts through."""

    __slots__ = ("names", "offsets", "size", "struct")

    def __init__(self, fmt: str, record: type[Any]) -> None:
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.names = tuple(f.name for f in fields(record))
        codes = re.findall(r"\d*[sHIQB]", fmt.lstrip("<"))
        if len(codes) != len(self.names):
            raise AssertionError(f"{record.__name__}: {len(codes)} codes, {len(self.names)} fields")
        offsets, pos = [], 0
        for code in codes:
            offsets.append(pos)
            pos += struct.calcsize("<" + code)
        self.offsets = tuple(offsets)


class Reader:
    """Reads fields from ``data`` in order, raising :class:`MalformedEvidenceError` on truncation."""

    __slots__ = ("_code", "data", "pos")

    def __init__(self, data: bytes, *, pos: int = 0, code: str = "QUOTE_MALFORMED") -> None:
        self.data = data
        self.pos = pos
        self._code = code

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def bytes(self, n: int, field: str) -> bytes:
        if n < 0 or len(self.data) - self.pos < n:
            raise MalformedEvidenceError(
                f"evidence is truncated in {field}",
                code=self._code,
                field=field,
                expected=f"{n} bytes at offset {self.pos:#x}",
                actual=f"{max(self.remaining, 0)} bytes left",
                hint="the evidence was cut short or a length field is wrong; capture it again",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def record(self, layout: Layout, name: str) -> tuple[Any, ...]:
        """Unpack one fixed record; on truncation, name the first field that does not fit."""
        left = len(self.data) - self.pos
        if left < layout.size:
            ends = (*layout.offsets[1:], layout.size)
            for fname, off, end in zip(layout.names, layout.offsets, ends, strict=True):
                if end > left:
                    self.pos += off
                    self.bytes(end - off, f"{name}.{fname}")  # raises, naming the field
        out = layout.struct.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return out

    def u16(self, field: str) -> int:
        return int.from_bytes(self.bytes(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.bytes(8, field), "little")
