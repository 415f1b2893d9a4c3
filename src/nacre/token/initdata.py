"""KBS ``init-data``: configuration the host hands a TEE at launch, bound to the evidence.

Trustee's Initdata specification: a TOML document ``version = "0.1.0"``, ``algorithm = "sha256" |
"sha384" | "sha512"``, and a ``[data]`` table of strings. Its digest (the named algorithm over the
document's exact UTF-8 bytes) is measured into the TEE at launch: SGX ``CONFIGID`` (64 bytes),
TDX ``MRCONFIGID`` (48), SEV-SNP ``HOST_DATA`` (32); the digest is zero-padded, or truncated, to
the field's size, as Trustee's verifiers do. A KBS client that sends ``init-data`` with its attest
request is told whether its evidence carries exactly that document: if not, the attestation is
refused (the host handed the TEE other configuration than the one presented).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from nacre.errors import UsageError, VerificationError

__all__ = ["InitData", "check_init_data", "parse_init_data"]

_ALGORITHMS: Final = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
#: The evidence claim the digest is measured into, and that field's size in bytes.
_FIELDS: Final = {"sgx": ("config_id", 64), "tdx": ("mr_config_id", 48), "snp": ("host_data", 32)}
#: Largest init-data document accepted (Kata caps its annotation at a few KiB).
MAX_INIT_DATA_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class InitData:
    version: str
    algorithm: str
    data: Mapping[str, str]
    digest: bytes  # the algorithm over the document's bytes

    def claims(self) -> dict[str, Any]:
        """What the EAR carries about it (policies can test ``init_data.data[...]``)."""
        return {
            "version": self.version,
            "algorithm": self.algorithm,
            "digest": self.digest.hex(),
            "data": dict(self.data),
        }


def _bad(message: str, field: str, expected: str, actual: object) -> UsageError:
    return UsageError(
        message,
        field=f"init-data.{field}" if field else "init-data",
        expected=expected,
        actual=actual,
        hint="send the init-data document the TEE was launched with "
        '({"format": "toml", "body": "<the TOML text>"})',
    )


def parse_init_data(value: object) -> InitData:
    """The ``init-data`` member of a KBS attest request: ``{"format": "toml", "body": "..."}``."""
    if not isinstance(value, dict):
        raise _bad("init-data must be an object", "", '{"format", "body"}', type(value).__name__)
    unknown = sorted(set(value) - {"format", "body"})
    if unknown:
        raise _bad("init-data has unknown members", "", "format, body", ", ".join(unknown))
    fmt, body = value.get("format"), value.get("body")
    if fmt != "toml":
        raise _bad("unsupported init-data format", "format", "toml", fmt)
    if not isinstance(body, str):
        raise _bad("init-data body must be text", "body", "a TOML string", type(body).__name__)
    try:
        raw = body.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON "\\ud800" escape
        raise _bad("init-data body is not valid text", "body", "UTF-8 text", str(exc)) from None
    if len(raw) > MAX_INIT_DATA_BYTES:
        raise _bad(
            "init-data is too large", "body", f"<= {MAX_INIT_DATA_BYTES} bytes", f"{len(raw)} bytes"
        )
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise _bad("init-data body is not TOML", "body", "a TOML document", str(exc)) from None
    version, algorithm, data = doc.get("version"), doc.get("algorithm"), doc.get("data", {})
    if not isinstance(version, str):
        raise _bad("init-data has no version", "version", 'a string, e.g. "0.1.0"', version)
    if algorithm not in _ALGORITHMS:
        raise _bad(
            "unsupported init-data algorithm", "algorithm", " | ".join(_ALGORITHMS), algorithm
        )
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise _bad("init-data [data] must map names to strings", "data", "a table of strings", data)
    return InitData(version, algorithm, data, _ALGORITHMS[algorithm](raw).digest())


def check_init_data(init: InitData, tee: str, claims: Mapping[str, object]) -> None:
    """The evidence's launch-configuration field holds ``init``'s digest, sized as that field."""
    if tee not in _FIELDS:
        raise VerificationError(
            f"init-data cannot be bound to {tee} evidence",
            code="INIT_DATA_UNSUPPORTED",
            field="init-data",
            expected=" | ".join(_FIELDS),
            actual=tee,
        )
    name, size = _FIELDS[tee]
    expected = init.digest[:size].ljust(size, b"\x00").hex()
    actual = claims.get(name)
    if actual != expected:
        raise VerificationError(
            f"the evidence's {name} is not the digest of the init-data presented",
            code="INIT_DATA_MISMATCH",
            step="init_data",
            field=name,
            expected=expected,
            actual=str(actual),
            hint="the TEE was launched with other configuration than the init-data sent; "
            "send the document its launch measured",
        )
