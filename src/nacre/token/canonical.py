"""RFC 8785 JSON Canonicalization Scheme (JCS) and the KBS report_data binding.

JCS (RFC 8785 §3.2) in four rules:

1. No whitespace between tokens.
2. Object members sorted by their names as arrays of UTF-16 code units (§3.2.3), recursively;
   array order is kept.
3. Strings: only ``"``, ``\\`` and U+0000..U+001F are escaped; the five with a short form use it
   (``\\b \\t \\n \\f \\r``), the others ``\\u00xx`` in lower-case hex. Everything else is literal UTF-8.
4. Numbers are IEEE-754 doubles serialised like ECMAScript ``Number.prototype.toString`` (§3.2.2.3);
   NaN and Infinity have no JSON form and are refused. A Python ``int`` is taken as the double it
   equals; an int that no double equals exactly is refused rather than silently rounded.

The KBS binding (Trustee KBS protocol v0.4.0): the TEE puts
``pad64(SHA-384(JCS({"additional-evidence": s, "nonce": n, "tee-pubkey": jwk})))`` into its report data.
See :func:`kbs_report_data`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from nacre.token.errors import CanonicalizationError

__all__ = [
    "KBS_REPORT_DATA_BYTES",
    "MAX_JCS_DEPTH",
    "canonicalize",
    "canonicalize_text",
    "es_number",
    "kbs_report_data",
    "kbs_runtime_data",
]

#: Nesting depth of arrays/objects JCS will walk; runtime data is 2-3 levels deep.
MAX_JCS_DEPTH: Final = 64
#: The report_data field of SGX/TDX/SNP evidence is 64 bytes.
KBS_REPORT_DATA_BYTES: Final = 64

_SHORT_ESCAPES: Final = {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}
_NEEDS_ESCAPE: Final = re.compile(r'[\x00-\x1f"\\]')
_FLOAT_REPR: Final = re.compile(r"^(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return _SHORT_ESCAPES.get(code) or f"\\u{code:04x}"


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(
            "string holds a lone surrogate, which is not Unicode text",
            field="string",
            expected="well-formed Unicode",
            actual=repr(value[exc.start : exc.end]),
        ) from None
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, value) + '"'


def es_number(value: float | int) -> str:
    """Serialise a number as ECMAScript ``Number.prototype.toString`` does (RFC 8785 §3.2.2.3)."""
    if isinstance(value, bool):
        raise CanonicalizationError("a bool is not a number", field="number", actual=repr(value))
    if isinstance(value, int):
        try:
            as_double = float(value)
        except OverflowError:
            raise CanonicalizationError(
                "integer is beyond the IEEE-754 double range",
                field="number",
                expected="|n| < 1.8e308",
                actual=str(value),
            ) from None
        if as_double != value:
            raise CanonicalizationError(
                "integer has no exact IEEE-754 double; JCS would change its value",
                field="number",
                expected="an integer a double can hold exactly (|n| <= 2**53 always is)",
                actual=str(value),
            )
        value = as_double
    if math.isnan(value) or math.isinf(value):
        raise CanonicalizationError(
            "NaN and Infinity have no JSON form",
            field="number",
            expected="a finite number",
            actual=repr(value),
        )
    if value == 0:
        return "0"  # both +0 and -0 (ECMAScript step 2)
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digit string that round-trips to the same double, the same
    # digits ECMAScript's step 5 asks for (k as small as possible, ties to the closer value).
    match = _FLOAT_REPR.match(repr(abs(value)))
    if match is None:  # pragma: no cover - repr of a finite positive float always matches
        raise CanonicalizationError("unexpected float form", field="number", actual=repr(value))
    int_part, frac_part, exp_part = match.group(1), match.group(2) or "", match.group(3)
    # abs(value) == int(int_part + frac_part) × 10**(exp - len(frac_part)); normalise to
    # digits × 10**(n - k) with no leading or trailing zeros in digits (k = len(digits)).
    all_digits = (int_part + frac_part).lstrip("0")
    digits = all_digits.rstrip("0")
    scale = (int(exp_part) if exp_part else 0) - len(frac_part) + (len(all_digits) - len(digits))
    k = len(digits)
    n = k + scale
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        exp_text = ("+" if exponent >= 0 else "-") + str(abs(exponent))
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = mantissa + "e" + exp_text
    return sign + text


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the sequence of UTF-16 code units does.
    return name.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str], depth: int) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int | float):
        out.append(es_number(value))
    elif isinstance(value, Mapping):
        if depth >= MAX_JCS_DEPTH:
            raise CanonicalizationError(
                "JSON nesting too deep", field="depth", expected=f"<= {MAX_JCS_DEPTH}"
            )
        for name in value:
            if not isinstance(name, str):
                raise CanonicalizationError(
                    "object member names must be strings",
                    field="key",
                    expected="str",
                    actual=type(name).__name__,
                )
        out.append("{")
        for index, name in enumerate(sorted(value, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_string(name))
            out.append(":")
            _write(value[name], out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if depth >= MAX_JCS_DEPTH:
            raise CanonicalizationError(
                "JSON nesting too deep", field="depth", expected=f"<= {MAX_JCS_DEPTH}"
            )
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(
            "value has no JSON form",
            field="value",
            expected="dict, list, str, int, float, bool or None",
            actual=type(value).__name__,
        )


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON-shaped Python value."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, item in pairs:
        if name in result:
            raise CanonicalizationError(
                "duplicate object member name (I-JSON forbids it)", field="key", actual=name
            )
        result[name] = item
    return result


def _refuse_constant(name: str) -> Any:
    raise CanonicalizationError(
        "NaN and Infinity have no JSON form",
        field="number",
        expected="a finite number",
        actual=name,
    )


def canonicalize_text(text: str | bytes) -> bytes:
    """Parse JSON text (refusing duplicate names and NaN/Infinity) and canonicalize it.

    Numbers are parsed as IEEE-754 doubles, as RFC 8785 §3.2.2.3 assumes.
    """
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_int=float,
        )
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, CanonicalizationError):
            raise
        raise CanonicalizationError("not JSON text", field="json", actual=str(exc)) from None
    return canonicalize(value)


def kbs_runtime_data(
    nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str = ""
) -> dict[str, Any]:
    """The object KBS v0.4.0 binds into the primary evidence's report data.

    Trustee ``kbs/src/attestation/backend.rs`` builds exactly these three members for the primary
    evidence (``additional-evidence`` is the ``tee-evidence.additional_evidence`` JSON *string*,
    ``""`` when there is none); the ``tee-pubkey`` JWK is hashed as the client sent it.
    """
    return {
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": dict(tee_pubkey),
    }


def kbs_report_data(
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    additional_evidence: str = "",
    *,
    hash_algorithm: Literal["sha256", "sha384", "sha512"] = "sha384",
) -> bytes:
    """The 64 report_data bytes a KBS v0.4.0 client puts into its evidence.

    ``digest(JCS(kbs_runtime_data(...)))`` zero-padded on the right to 64 bytes, as Trustee's
    ``regularize_data(.., 64, ..)`` does. SHA-384 is what KBS uses for every TEE but IBM SE (SHA-512).
    """
    if hash_algorithm not in ("sha256", "sha384", "sha512"):
        raise CanonicalizationError(
            "unsupported report-data hash",
            field="hash_algorithm",
            expected="sha256, sha384 or sha512",
            actual=hash_algorithm,
        )
    material = canonicalize(kbs_runtime_data(nonce, tee_pubkey, additional_evidence))
    digest = hashlib.new(hash_algorithm, material).digest()
    return digest.ljust(KBS_REPORT_DATA_BYTES, b"\x00")
