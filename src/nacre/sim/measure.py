"""Deterministic measurements of a simulated workload, from a manifest.

A manifest is TOML (``.toml``) or JSON (any other name)::

    name = "hello"
    entrypoint = "app.py"
    isv_prod_id = 1            # SGX ISVPRODID (0..65535)
    isv_svn = 2                # SGX ISVSVN (0..65535)
    debug = false              # SGX ATTRIBUTES.DEBUG / TD ATTRIBUTES.DEBUG
    config_id = "00ab..."      # hex, <= 64 bytes: SGX CONFIGID; TDX MRCONFIGID (first 48 bytes)
    config_svn = 0
    signer_key = "signer.pem"  # optional PEM key (private or public); default: the platform's

    [[files]]                  # read and hashed at load time; paths relative to the manifest
    path = "app.py"
    sha256 = "..."             # optional pin: loading fails when the file differs

    [[events]]                 # TDX event log, extended into the RTMRs in order
    rtmr = 2
    data = "cmdline=..."       # digest = SHA-384(data); or digest = "<96 hex digits>"

Canonical encoding (``LP(b) = u32le(len(b)) || b``; files sorted by their manifest path)::

    content   = "nacre-sim-measure-v1" 0x00 || LP(entrypoint) || u32le(n)
                || for each file: LP(path) || SHA-256(file bytes)
    MRENCLAVE = SHA-256("SGX" 0x00 || content)
    MRTD      = SHA-384("TDX" 0x00 || content)
    MRSIGNER  = SHA-256(DER SubjectPublicKeyInfo of the signer's public key)
    RTMR[i]   = 48 zero bytes, then RTMR[i] = SHA-384(RTMR[i] || event digest) per event

Moving the manifest's directory leaves the measurements unchanged; changing one byte of a
measured file, the entrypoint or the file list changes them.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from nacre.errors import LimitExceededError, UsageError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_FILES",
    "Manifest",
    "ManifestEvent",
    "ManifestFile",
    "Measurement",
    "measure",
    "mr_signer_of",
]

MAX_MANIFEST_BYTES: Final = 1024 * 1024
MAX_MANIFEST_FILES: Final = 10_000
_DOMAIN: Final = b"nacre-sim-measure-v1\x00"
_RTMR_COUNT: Final = 4


def _bad(message: str, field: str, expected: str, actual: object) -> UsageError:
    return UsageError(message, field=field, expected=expected, actual=str(actual)[:120], hint=_HINT)


_HINT: Final = "see the manifest format in nacre.sim.measure"


@dataclass(frozen=True, slots=True)
class ManifestFile:
    path: str  # as written in the manifest (POSIX form)
    sha256: bytes


@dataclass(frozen=True, slots=True)
class ManifestEvent:
    rtmr: int
    digest: bytes  # 48 (SHA-384)
    description: str = ""


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str = "nacre-sim-default"
    entrypoint: str = ""
    files: tuple[ManifestFile, ...] = ()
    isv_prod_id: int = 0
    isv_svn: int = 0
    debug: bool = False
    config_id: bytes = field(default=bytes(64))
    config_svn: int = 0
    #: Signer key file (absolute once loaded); None: the platform's simulation signer.
    signer_key: Path | None = None
    events: tuple[ManifestEvent, ...] = ()

    def __post_init__(self) -> None:
        for name, value in (
            ("isv_prod_id", self.isv_prod_id),
            ("isv_svn", self.isv_svn),
            ("config_svn", self.config_svn),
        ):
            if not 0 <= value <= 0xFFFF:
                raise _bad(f"manifest {name} is out of range", name, "0..65535", value)
        if len(self.config_id) != 64:
            raise _bad(
                "manifest config_id must be 64 bytes", "config_id", "64", len(self.config_id)
            )
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            dup = next(p for p in paths if paths.count(p) > 1)
            raise _bad("a file is listed twice in the manifest", "files", "unique paths", dup)
        for ev in self.events:
            if not 0 <= ev.rtmr < _RTMR_COUNT or len(ev.digest) != 48:
                raise _bad(
                    "manifest event is invalid",
                    "events",
                    "rtmr 0..3 with a 48-byte SHA-384 digest",
                    f"rtmr {ev.rtmr}, {len(ev.digest)}-byte digest",
                )

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a TOML or JSON manifest and hash the files it lists (relative to its directory)."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise LimitExceededError(
                    f"manifest {p} is too large",
                    field="--manifest",
                    expected=f"<= {MAX_MANIFEST_BYTES} bytes",
                    actual=f"{size} bytes",
                )
            raw = p.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read manifest {p}: {exc.strerror}",
                field="--manifest",
                expected="a readable TOML or JSON manifest",
                actual=str(p),
            ) from exc
        try:
            data: Any = (
                tomllib.loads(raw.decode("utf-8"))
                if p.suffix.lower() == ".toml"
                else json.loads(raw)
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"manifest {p} does not parse", "--manifest", "TOML or JSON", exc) from exc
        if not isinstance(data, dict):
            raise _bad("a manifest is a table/object", "--manifest", "an object", type(data))
        return cls.from_mapping(data, base_dir=p.parent)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, base_dir: str | Path) -> Manifest:
        base = Path(base_dir)
        known = {
            "name",
            "entrypoint",
            "files",
            "isv_prod_id",
            "isv_svn",
            "debug",
            "config_id",
            "config_svn",
            "signer_key",
            "events",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise _bad("unknown manifest keys", unknown[0], ", ".join(sorted(known)), unknown)

        def text(key: str, default: str) -> str:
            v = data.get(key, default)
            if not isinstance(v, str):
                raise _bad(f"manifest {key} must be a string", key, "a string", repr(v))
            return v

        def integer(key: str) -> int:
            v = data.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise _bad(f"manifest {key} must be an integer", key, "an integer", repr(v))
            return v

        debug = data.get("debug", False)
        if not isinstance(debug, bool):
            raise _bad("manifest debug must be true or false", "debug", "a boolean", repr(debug))
        config_hex = text("config_id", "")
        try:
            config = bytes.fromhex(config_hex)
        except ValueError:
            raise _bad("manifest config_id is not hex", "config_id", "hex", config_hex) from None
        if len(config) > 64:
            raise _bad("manifest config_id is too long", "config_id", "<= 64 bytes", len(config))
        signer = data.get("signer_key")
        if signer is not None and not isinstance(signer, str):
            raise _bad("manifest signer_key must be a path", "signer_key", "a string", signer)
        return cls(
            name=text("name", "workload"),
            entrypoint=text("entrypoint", ""),
            files=_files(data.get("files", []), base),
            isv_prod_id=integer("isv_prod_id"),
            isv_svn=integer("isv_svn"),
            debug=debug,
            config_id=config.ljust(64, b"\x00"),
            config_svn=integer("config_svn"),
            signer_key=None if signer is None else (base / signer).resolve(),
            events=_events(data.get("events", [])),
        )


def _files(raw: Any, base: Path) -> tuple[ManifestFile, ...]:
    if not isinstance(raw, list):
        raise _bad("manifest files must be a list", "files", "a list of {path}", type(raw))
    if len(raw) > MAX_MANIFEST_FILES:
        raise LimitExceededError(
            "manifest lists too many files",
            field="files",
            expected=f"<= {MAX_MANIFEST_FILES}",
            actual=str(len(raw)),
        )
    out = []
    for i, item in enumerate(raw):
        entry = {"path": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise _bad("manifest file entry needs a path", f"files[{i}]", "{path = ...}", item)
        name = str(PurePosixPath(entry["path"]))
        target = base / name
        h = hashlib.sha256()
        try:
            with target.open("rb") as f:
                while chunk := f.read(1 << 16):
                    h.update(chunk)
        except OSError as exc:
            raise UsageError(
                f"cannot read measured file {target}: {exc.strerror}",
                field=f"files[{i}].path",
                expected="a readable file",
                actual=str(target),
            ) from exc
        digest = h.digest()
        pin = entry.get("sha256")
        if pin is not None and (not isinstance(pin, str) or pin.lower() != digest.hex()):
            raise _bad(
                f"measured file {name} differs from its pinned hash",
                f"files[{i}].sha256",
                str(pin),
                digest.hex(),
            )
        out.append(ManifestFile(name, digest))
    return tuple(out)


def _events(raw: Any) -> tuple[ManifestEvent, ...]:
    if not isinstance(raw, list):
        raise _bad("manifest events must be a list", "events", "a list of {rtmr, data}", raw)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad("manifest event must be a table", f"events[{i}]", "{rtmr, data}", item)
        rtmr = item.get("rtmr")
        if isinstance(rtmr, bool) or not isinstance(rtmr, int):
            raise _bad("manifest event needs an rtmr", f"events[{i}].rtmr", "0..3", rtmr)
        if "digest" in item:
            try:
                digest = bytes.fromhex(str(item["digest"]))
            except ValueError:
                raise _bad(
                    "event digest is not hex", f"events[{i}].digest", "96 hex", item["digest"]
                ) from None
        elif isinstance(item.get("data"), str):
            digest = hashlib.sha384(item["data"].encode()).digest()
        else:
            raise _bad("manifest event needs data or digest", f"events[{i}]", "data", item)
        out.append(ManifestEvent(rtmr, digest, str(item.get("description", ""))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a simulated enclave / TD reports about itself."""

    mr_enclave: bytes  # 32
    mr_signer: bytes  # 32
    mr_td: bytes  # 48
    rtmrs: tuple[bytes, bytes, bytes, bytes]  # 48 each
    isv_prod_id: int
    isv_svn: int
    config_id: bytes  # 64
    config_svn: int
    debug: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "mrenclave": self.mr_enclave.hex(),
            "mrsigner": self.mr_signer.hex(),
            "mr_td": self.mr_td.hex(),
            **{f"rtmr{i}": r.hex() for i, r in enumerate(self.rtmrs)},
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "config_id": self.config_id.hex(),
            "config_svn": self.config_svn,
            "debug": self.debug,
        }


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _content(m: Manifest) -> bytes:
    files = sorted(m.files, key=lambda f: f.path)
    parts = [_DOMAIN, _lp(m.entrypoint.encode()), len(files).to_bytes(4, "little")]
    parts += [_lp(f.path.encode()) + f.sha256 for f in files]
    return b"".join(parts)


def mr_signer_of(public_key: PublicKeyTypes) -> bytes:
    """MRSIGNER of a simulated signer: SHA-256 of its DER SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _load_signer(path: Path) -> PublicKeyTypes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the manifest's signer key {path}: {exc.strerror}",
            field="signer_key",
            expected="a PEM private or public key",
            actual=str(path),
        ) from exc
    try:
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise _bad("the signer key is not a PEM key", "signer_key", "PEM", exc) from exc


def measure(manifest: Manifest, default_signer: PublicKeyTypes) -> Measurement:
    """Measure ``manifest``; ``default_signer`` signs it unless it names its own key."""
    signer = default_signer if manifest.signer_key is None else _load_signer(manifest.signer_key)
    content = _content(manifest)
    rtmrs = [bytes(48)] * _RTMR_COUNT
    for ev in manifest.events:
        rtmrs[ev.rtmr] = hashlib.sha384(rtmrs[ev.rtmr] + ev.digest).digest()
    return Measurement(
        mr_enclave=hashlib.sha256(b"SGX\x00" + content).digest(),
        mr_signer=mr_signer_of(signer),
        mr_td=hashlib.sha384(b"TDX\x00" + content).digest(),
        rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
        isv_prod_id=manifest.isv_prod_id,
        isv_svn=manifest.isv_svn,
        config_id=manifest.config_id,
        config_svn=manifest.config_svn,
        debug=manifest.debug,
    )
