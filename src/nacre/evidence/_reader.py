"""A bounded little-endian byte reader: every read checks the length before slicing."""

from __future__ import annotations

from nacre.errors import MalformedEvidenceError

__all__ = ["Reader"]


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
        if n < 0 or self.remaining < n:
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

    def u16(self, field: str) -> int:
        return int.from_bytes(self.bytes(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.bytes(8, field), "little")
