"""Appraisal policy documents: the model, and loading from YAML or JSON with strict checking.

A policy (schema ``version: 1``)::

    version: 1
    name: model-server-prod
    tcb_status: [UpToDate, SWHardeningNeeded]   # allowed Intel TCB statuses (default [UpToDate])
    allow_debug: false                          # loud escape hatch (default false)
    allow_sim: false                            # accept simulated evidence (default false)
    sgx:                                        # present = SGX evidence accepted
      mrenclave: ["<64 hex>", ...]              # any of; omitted = not constrained
      mrsigner: ["<64 hex>", ...]
      isv_prod_id: [1]
      min_isv_svn: 3
      config_id: ["<128 hex>"]
      min_config_svn: 0
    tdx:
      mr_td: ["<96 hex>"]                       # also rtmr0..rtmr3, mr_config_id, mr_owner,
      rtmr2: ["<96 hex>"]                       # mr_owner_config
      unsafe_allow_sept_ve: false               # accept TDs without SEPT_VE_DISABLE
      allow_service_td: false                   # accept TDs bound to a service TD
    snp:
      measurement: ["<96 hex>"]                 # also host_data (64 hex), id_key_digest (96 hex)
      policy_bits: {debug: false, migrate_ma: false, smt: true}
      min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}   # fmc too (Turin)
      vmpl: [0]
    rules:                                      # CEL over claims, tee, tcb_status, advisory_ids, sim
      - name: fresh-enough
        expr: "claims.isv_svn >= 3 && !('INTEL-SA-00615' in advisory_ids)"
        message: "enclave too old or platform affected by SA-00615"

Rules of the document:

- Unknown keys anywhere are an error naming the path (``sgx.mrenclav: unknown key; did you mean
  mrenclave?``); so are duplicate keys, wrong types and empty lists (an empty allow-list would match
  nothing: omit the key to leave a value unconstrained).
- Hex values are normalised to lower case (an optional ``0x`` prefix is dropped) and their length is
  checked against the field's size. In YAML, quote hex values: an unquoted all-digit value is read
  as a number.
- When the policy has at least one TEE section, evidence of a TEE without a section is refused.
  A policy without any TEE section accepts every TEE (its rules must then do the work).
- ``tcb_status`` defaults to ``[UpToDate]`` (fail closed: accepting a platform with known advisories
  is a decision the policy author writes down). ``Revoked`` can never be allowed.
- CEL expressions are compiled when the policy is loaded; a syntax error names the rule.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml

from nacre.appraisal.cel import MAX_CEL_EXPR_CHARS, CelCompileError, CelProgram, compile_expr
from nacre.errors import NacreError

__all__ = [
    "INTEL_TCB_STATUSES",
    "MAX_POLICY_BYTES",
    "MAX_POLICY_RULES",
    "MAX_REFERENCE_VALUES",
    "POLICY_SCHEMA_VERSION",
    "SNP_POLICY_BITS",
    "Policy",
    "PolicyDocumentError",
    "Rule",
    "SgxReference",
    "SnpMinTcb",
    "SnpReference",
    "TdxReference",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
]

#: The schema version this module reads.
POLICY_SCHEMA_VERSION: Final = 1
#: Size of one policy document.
MAX_POLICY_BYTES: Final = 256 * 1024
#: Rules in one policy.
MAX_POLICY_RULES: Final = 256
#: Entries in one allow-list (reference values of one field).
MAX_REFERENCE_VALUES: Final = 1024
#: Length of a policy or rule name.
MAX_NAME_CHARS: Final = 128
#: Length of a rule's message.
MAX_MESSAGE_CHARS: Final = 1024

#: Intel's TCB status words (DESIGN §3).
INTEL_TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
DEFAULT_TCB_STATUSES: Final = ("UpToDate",)

#: SEV-SNP guest policy bits a policy may pin (AMD SEV-SNP ABI, GUEST_POLICY).
SNP_POLICY_BITS: Final[Mapping[str, int]] = {
    "smt": 16,
    "migrate_ma": 18,
    "debug": 19,
    "single_socket": 20,
    "cxl_allow": 21,
    "mem_aes_256_xts": 22,
    "rapl_dis": 23,
    "ciphertext_hiding": 24,
    "page_swap_disable": 25,
}
_T = TypeVar("_T")
_S = TypeVar("_S")
_SNP_TCB_COMPONENTS: Final = ("bootloader", "tee", "snp", "microcode", "fmc")


class PolicyDocumentError(NacreError):
    """A policy document that cannot be used: bad syntax, unknown key, wrong type or value.

    ``field`` is the path inside the document (``sgx.mrenclave[1]``, ``rules[0].expr``).
    """

    default_code = "POLICY_INVALID"


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SgxReference:
    """SGX reference values. An empty tuple / ``None`` leaves the value unconstrained."""

    mrenclave: tuple[str, ...] = ()
    mrsigner: tuple[str, ...] = ()
    isv_prod_id: tuple[int, ...] = ()
    min_isv_svn: int | None = None
    config_id: tuple[str, ...] = ()
    min_config_svn: int | None = None


@dataclass(frozen=True, slots=True)
class TdxReference:
    """TDX reference values, and the TD attribute escape hatches of the baseline policy."""

    mr_td: tuple[str, ...] = ()
    rtmr0: tuple[str, ...] = ()
    rtmr1: tuple[str, ...] = ()
    rtmr2: tuple[str, ...] = ()
    rtmr3: tuple[str, ...] = ()
    mr_config_id: tuple[str, ...] = ()
    mr_owner: tuple[str, ...] = ()
    mr_owner_config: tuple[str, ...] = ()
    unsafe_allow_sept_ve: bool = False
    allow_service_td: bool = False


@dataclass(frozen=True, slots=True)
class SnpMinTcb:
    """Minimum SVN of each component of the SNP reported TCB (``None``: not constrained)."""

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple(
            (name, value)
            for name in _SNP_TCB_COMPONENTS
            if (value := getattr(self, name)) is not None
        )


@dataclass(frozen=True, slots=True)
class SnpReference:
    """SEV-SNP reference values. ``policy_bits`` pins named GUEST_POLICY bits to 0/1."""

    measurement: tuple[str, ...] = ()
    host_data: tuple[str, ...] = ()
    id_key_digest: tuple[str, ...] = ()
    policy_bits: tuple[tuple[str, bool], ...] = ()
    min_tcb: SnpMinTcb | None = None
    vmpl: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """A CEL rule: ``expr`` must evaluate to ``true`` for the evidence to pass."""

    name: str
    expr: str
    message: str = ""
    program: CelProgram | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Policy:
    """An appraisal policy. Build one with :func:`load_policy`, :func:`parse_policy` or
    :func:`policy_from_dict`, which check everything; the defaults fail closed."""

    name: str
    version: int = POLICY_SCHEMA_VERSION
    tcb_status: tuple[str, ...] = DEFAULT_TCB_STATUSES
    allow_debug: bool = False
    allow_sim: bool = False
    sgx: SgxReference | None = None
    tdx: TdxReference | None = None
    snp: SnpReference | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def tees(self) -> tuple[str, ...]:
        """The TEEs that have a section (empty: the policy names none, any TEE is accepted)."""
        return tuple(
            t
            for t, ref in (("sgx", self.sgx), ("tdx", self.tdx), ("snp", self.snp))
            if ref is not None
        )


# -- checking a document --------------------------------------------------------------------


def _err(
    path: str, message: str, expected: object = None, actual: object = None
) -> PolicyDocumentError:
    text = f"{path}: {message}" if path else message
    shown = None if actual is None else _show(actual)
    return PolicyDocumentError(text, field=path or None, expected=expected, actual=shown)


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(path, f"expected a mapping, got {_type_name(value)}", "a mapping", value)
    for key in value:
        if not isinstance(key, str):
            raise _err(path, f"keys must be strings, got {_type_name(key)}", "string keys", key)
    return value


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in d:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else f"; known keys: {', '.join(allowed)}"
            raise _err(_join(path, key), f"unknown key{hint}", " | ".join(allowed), key)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _err(path, f"expected true or false, got {_type_name(value)}", "a boolean", value)
    return value


def _int(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, f"expected an integer, got {_type_name(value)}", f"{lo}..{hi}", value)
    if not lo <= value <= hi:
        raise _err(path, f"{value} is out of range", f"{lo}..{hi}", value)
    return value


def _str(value: object, path: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _err(path, f"expected a string, got {_type_name(value)}", "a string", value)
    if not value.strip():
        raise _err(path, "must not be empty", "a non-empty string", value)
    if len(value) > max_chars:
        raise _err(
            path,
            f"longer than {max_chars} characters",
            f"<= {max_chars} characters",
            f"{len(value)} characters",
        )
    return value


def _hex(value: object, path: str, size: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _err(
            path,
            "got a number, expected a hex string (quote hex values in YAML)",
            f"{size * 2} hex digits",
            value,
        )
    if not isinstance(value, str):
        raise _err(
            path, f"expected a hex string, got {_type_name(value)}", f"{size * 2} hex digits", value
        )
    text = value.strip().lower()
    text = text.removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _err(path, "not a hex string", f"{size * 2} hex digits", value) from None
    if len(raw) != size or len(text) != size * 2:
        raise _err(
            path,
            f"wrong length: {len(text)} hex digits ({len(raw)} bytes), expected {size * 2} ({size} bytes)",
            f"{size * 2} hex digits ({size} bytes)",
            f"{len(text)} hex digits",
        )
    return text


def _list(value: object, path: str, item: Callable[[object, str], _T]) -> tuple[_T, ...]:
    if not isinstance(value, list):
        raise _err(path, f"expected a list, got {_type_name(value)}", "a list", value)
    if not value:
        raise _err(
            path,
            "an empty list matches nothing; omit the key to leave the value unconstrained",
            "a non-empty list",
            "[]",
        )
    if len(value) > MAX_REFERENCE_VALUES:
        raise _err(
            path,
            f"more than {MAX_REFERENCE_VALUES} entries",
            f"<= {MAX_REFERENCE_VALUES}",
            len(value),
        )
    return tuple(dict.fromkeys(item(v, f"{path}[{i}]") for i, v in enumerate(value)))


def _hex_list(size: int) -> Callable[[object, str], tuple[str, ...]]:
    return lambda v, p: _list(v, p, lambda x, q: _hex(x, q, size))


def _int_list(lo: int, hi: int) -> Callable[[object, str], tuple[int, ...]]:
    return lambda v, p: _list(v, p, lambda x, q: _int(x, q, lo, hi))


def _int_field(lo: int, hi: int) -> Callable[[object, str], int]:
    return lambda v, p: _int(v, p, lo, hi)


_U16: Final = 0xFFFF

_SGX_FIELDS: Final[Mapping[str, Callable[[object, str], Any]]] = {
    "mrenclave": _hex_list(32),
    "mrsigner": _hex_list(32),
    "isv_prod_id": _int_list(0, _U16),
    "min_isv_svn": _int_field(0, _U16),
    "config_id": _hex_list(64),
    "min_config_svn": _int_field(0, _U16),
}

_TDX_FIELDS: Final[Mapping[str, Callable[[object, str], Any]]] = {
    **{
        name: _hex_list(48)
        for name in (
            "mr_td",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mr_config_id",
            "mr_owner",
            "mr_owner_config",
        )
    },
    "unsafe_allow_sept_ve": _bool,
    "allow_service_td": _bool,
}


def _policy_bits(value: object, path: str) -> tuple[tuple[str, bool], ...]:
    d = _mapping(value, path)
    _check_keys(d, tuple(SNP_POLICY_BITS), path)
    if not d:
        raise _err(path, "an empty mapping pins nothing; omit the key", "at least one bit", "{}")
    return tuple((k, _bool(d[k], _join(path, k))) for k in SNP_POLICY_BITS if k in d)


def _min_tcb(value: object, path: str) -> SnpMinTcb:
    d = _mapping(value, path)
    _check_keys(d, _SNP_TCB_COMPONENTS, path)
    if not d:
        raise _err(
            path,
            "an empty mapping constrains nothing; omit the key",
            "at least one component",
            "{}",
        )
    return SnpMinTcb(**{k: _int(v, _join(path, k), 0, 255) for k, v in d.items()})


_SNP_FIELDS: Final[Mapping[str, Callable[[object, str], Any]]] = {
    "measurement": _hex_list(48),
    "host_data": _hex_list(32),
    "id_key_digest": _hex_list(48),
    "policy_bits": _policy_bits,
    "min_tcb": _min_tcb,
    "vmpl": _int_list(0, 3),
}


def _section(
    value: object, path: str, fields: Mapping[str, Callable[[object, str], Any]], cls: type[_S]
) -> _S:
    d = _mapping({} if value is None else value, path)
    _check_keys(d, tuple(fields), path)
    return cls(**{k: fields[k](v, _join(path, k)) for k, v in d.items()})


def _tcb_statuses(value: object, path: str) -> tuple[str, ...]:
    def one(v: object, p: str) -> str:
        if not isinstance(v, str) or v not in INTEL_TCB_STATUSES:
            near = difflib.get_close_matches(str(v), INTEL_TCB_STATUSES, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise _err(p, f"not an Intel TCB status{hint}", " | ".join(INTEL_TCB_STATUSES[:-1]), v)
        if v == "Revoked":
            raise _err(
                p,
                "a Revoked TCB is never acceptable to a policy",
                "not Revoked",
                v,
            )
        return v

    return _list(value, path, one)


def _rules(value: object, path: str) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise _err(path, f"expected a list, got {_type_name(value)}", "a list of rules", value)
    if len(value) > MAX_POLICY_RULES:
        raise _err(
            path, f"more than {MAX_POLICY_RULES} rules", f"<= {MAX_POLICY_RULES}", len(value)
        )
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        p = f"{path}[{i}]"
        d = _mapping(raw, p)
        _check_keys(d, ("name", "expr", "message"), p)
        for required in ("name", "expr"):
            if required not in d:
                raise _err(_join(p, required), "required", "a string", "missing")
        name = _str(d["name"], _join(p, "name"), MAX_NAME_CHARS)
        if name in seen:
            raise _err(_join(p, "name"), f"duplicate rule name {name!r}", "unique names", name)
        seen.add(name)
        expr = _str(d["expr"], _join(p, "expr"), MAX_CEL_EXPR_CHARS)
        message = (
            _str(d["message"], _join(p, "message"), MAX_MESSAGE_CHARS) if "message" in d else ""
        )
        try:
            program = compile_expr(expr)
        except CelCompileError as exc:
            raise PolicyDocumentError(
                f"{p}.expr: rule {name!r} does not compile: {exc.message}",
                field=f"{p}.expr",
                expected="a CEL expression",
                actual=_show(expr),
            ) from None
        rules.append(Rule(name=name, expr=expr, message=message, program=program))
    return tuple(rules)


_TOP_KEYS: Final = (
    "version",
    "name",
    "tcb_status",
    "allow_debug",
    "allow_sim",
    "sgx",
    "tdx",
    "snp",
    "rules",
)


def policy_from_dict(doc: object) -> Policy:
    """Check a decoded policy document and build the :class:`Policy` (compiling its rules)."""
    d = _mapping(doc, "")
    _check_keys(d, _TOP_KEYS, "")
    if "version" not in d:
        raise _err("version", "required", str(POLICY_SCHEMA_VERSION), "missing")
    version = d["version"]
    if isinstance(version, bool) or version != POLICY_SCHEMA_VERSION:
        raise _err(
            "version", "unsupported policy schema version", str(POLICY_SCHEMA_VERSION), version
        )
    if "name" not in d:
        raise _err("name", "required", "a policy name", "missing")
    return Policy(
        name=_str(d["name"], "name", MAX_NAME_CHARS),
        version=POLICY_SCHEMA_VERSION,
        tcb_status=_tcb_statuses(d["tcb_status"], "tcb_status")
        if "tcb_status" in d
        else DEFAULT_TCB_STATUSES,
        allow_debug=_bool(d.get("allow_debug", False), "allow_debug"),
        allow_sim=_bool(d.get("allow_sim", False), "allow_sim"),
        sgx=_section(d["sgx"], "sgx", _SGX_FIELDS, SgxReference) if "sgx" in d else None,
        tdx=_section(d["tdx"], "tdx", _TDX_FIELDS, TdxReference) if "tdx" in d else None,
        snp=_section(d["snp"], "snp", _SNP_FIELDS, SnpReference) if "snp" in d else None,
        rules=_rules(d["rules"], "rules") if "rules" in d else (),
    )


# -- decoding -------------------------------------------------------------------------------


class _StrictSafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no arbitrary objects), refusing duplicate mapping keys."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str) and key in seen:
            raise PolicyDocumentError(
                f"{key}: duplicate key (line {key_node.start_mark.line + 1})",
                field=key,
                expected="each key once per mapping",
                actual="duplicate",
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PolicyDocumentError(
                f"{k}: duplicate key",
                field=k,
                expected="each key once per object",
                actual="duplicate",
            )
        out[k] = v
    return out


def parse_policy(
    text: str | bytes, *, format: Literal["yaml", "json"] | None = None, source: str = "policy"
) -> Policy:
    """Decode a YAML or JSON policy document (``format=None``: JSON if it starts with ``{``)."""
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyDocumentError(
            f"{source} is larger than {MAX_POLICY_BYTES} bytes",
            code="LIMIT_EXCEEDED",
            field=source,
            expected=f"<= {MAX_POLICY_BYTES} bytes",
            actual=f"{len(text)} bytes",
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyDocumentError(
                f"{source} is not UTF-8 text", field=source, expected="UTF-8", actual=str(exc)
            ) from None
    fmt = format or ("json" if text.lstrip().startswith("{") else "yaml")
    doc: object
    if fmt == "json":
        try:
            doc = json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise PolicyDocumentError(
                f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                field=source,
                expected="a JSON object",
                actual=f"line {exc.lineno}",
            ) from None
    else:
        try:
            doc = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyDocumentError(
                f"{source} is not valid YAML: {problem}{where}",
                field=source,
                expected="a YAML mapping",
                actual=where.strip(" ()") or None,
            ) from None
    return policy_from_dict(doc)


def load_policy(path: str | Path) -> Policy:
    """Read a policy file: ``.json`` is JSON, ``.yaml``/``.yml`` YAML, anything else sniffed."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyDocumentError(
            f"cannot read policy {p}: {exc.strerror}", field=str(p), expected="a readable file"
        ) from None
    suffix = p.suffix.lower()
    fmt: Literal["yaml", "json"] | None = (
        "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    )
    return parse_policy(data, format=fmt, source=str(p))
