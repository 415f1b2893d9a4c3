"""A small, bounded DER reader for the vendor extensions `cryptography` hands back as raw bytes.

Intel's SGX PCK extension (OID 1.2.840.113741.1.13.1) and AMD's VCEK/VLEK extensions
(1.3.6.1.4.1.3704.1.*) are plain DER: SEQUENCE, OBJECT IDENTIFIER, INTEGER, OCTET STRING,
ENUMERATED, BOOLEAN, IA5String. This reads exactly those, checking every length.
"""

from __future__ import annotations

from typing import NamedTuple

from nacre.errors import CollateralError

__all__ = [
    "TAG_BOOLEAN",
    "TAG_ENUMERATED",
    "TAG_IA5STRING",
    "TAG_INTEGER",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "Tlv",
    "decode_int",
    "decode_oid",
    "header",
    "oid_der",
    "oid_pairs",
    "read_all",
    "read_one",
]

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30

_MAX_DEPTH = 8


class Tlv(NamedTuple):
    tag: int
    value: bytes

    def children(self) -> list[Tlv]:
        if self.tag != TAG_SEQUENCE:
            raise _bad("DER value", "SEQUENCE", f"tag {self.tag:#x}")
        return read_all(self.value)


def _bad(field: str, expected: str, actual: str) -> CollateralError:
    return CollateralError(
        "certificate extension is not valid DER",
        code="CERT_EXTENSION_MALFORMED",
        field=field,
        expected=expected,
        actual=actual,
        hint="the certificate is damaged or not issued by Intel/AMD",
    )


def read_one(data: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """Read one TLV at ``pos``; return it and the position after it."""
    if pos + 2 > len(data):
        raise _bad("DER header", "tag and length", f"{len(data) - pos} bytes")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _bad("DER tag", "single-byte tag", f"{tag:#x}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        nbytes = first & 0x7F
        if nbytes == 0 or nbytes > 4 or pos + nbytes > len(data):
            raise _bad("DER length", "1-4 length bytes", f"{nbytes}")
        length = int.from_bytes(data[pos : pos + nbytes], "big")
        pos += nbytes
    if pos + length > len(data):
        raise _bad("DER length", f"<= {len(data) - pos}", str(length))
    return Tlv(tag, data[pos : pos + length]), pos + length


def read_all(data: bytes) -> list[Tlv]:
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        tlv, pos = read_one(data, pos)
        out.append(tlv)
        if len(out) > 4096:
            raise _bad("DER sequence", "at most 4096 elements", "more")
    return out


def decode_int(tlv: Tlv) -> int:
    if tlv.tag not in (TAG_INTEGER, TAG_ENUMERATED) or not tlv.value:
        raise _bad("DER integer", "INTEGER or ENUMERATED", f"tag {tlv.tag:#x}")
    return int.from_bytes(tlv.value, "big", signed=True)


def decode_oid(tlv: Tlv) -> str:
    if tlv.tag != TAG_OID or not tlv.value:
        raise _bad("DER OID", "OBJECT IDENTIFIER", f"tag {tlv.tag:#x}")
    arcs: list[int] = []
    value = 0
    for b in tlv.value:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if tlv.value[-1] & 0x80:
        raise _bad("DER OID", "terminated arc", "truncated")
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def oid_der(dotted: str) -> bytes:
    """The DER content bytes of an OBJECT IDENTIFIER given in dotted form."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def header(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at ``pos``, within ``limit``."""
    if pos + 2 > limit:
        raise _bad("DER header", "tag and length", f"{limit - pos} bytes")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _bad("DER tag", "single-byte tag", f"{tag:#x}")
    length = data[pos + 1]
    pos += 2
    if length >= 0x80:
        nbytes = length & 0x7F
        if nbytes == 0 or nbytes > 4 or pos + nbytes > limit:
            raise _bad("DER length", "1-4 length bytes", f"{nbytes}")
        # The two short long forms read directly (this runs ~100 times per cold verification).
        if nbytes == 2:
            length = data[pos] << 8 | data[pos + 1]
        elif nbytes == 1:
            length = data[pos]
        else:
            length = int.from_bytes(data[pos : pos + nbytes], "big")
        pos += nbytes
    if pos + length > limit:
        raise _bad("DER length", f"<= {limit - pos}", str(length))
    return tag, pos, pos + length


def oid_pairs(content: bytes) -> dict[bytes, Tlv]:
    """A SEQUENCE OF SEQUENCE {OID, value} (the content bytes) as OID content bytes -> value.

    One linear pass with no intermediate lists: this runs on every cold PCK verification.
    """
    out: dict[bytes, Tlv] = {}
    pos, limit = 0, len(content)
    while pos < limit:
        tag, start, end = header(content, pos, limit)
        if tag != TAG_SEQUENCE:
            raise _bad("DER (OID, value) pair", "SEQUENCE", f"tag {tag:#x}")
        otag, ostart, oend = header(content, start, end)
        vtag, vstart, vend = header(content, oend, end)
        if otag != TAG_OID or vend != end:
            raise _bad("DER (OID, value) pair", "exactly OID then one value", f"tag {otag:#x}")
        oid = content[ostart:oend]
        if oid in out:
            raise _bad("DER (OID, value) pair", "each OID once", f"{oid.hex()} twice")
        out[oid] = Tlv(vtag, content[vstart:vend])
        pos = end
    return out
