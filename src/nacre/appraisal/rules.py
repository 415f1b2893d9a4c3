"""Named-rule documents: the one format of KBS release policies and KMS key policies.

Either a bare CEL expression, or a YAML/JSON mapping::

    version: 1
    allow_warning: false    # accept an EAR status of "warning" too (default: affirming only)
    admin_use: false        # KMS only: principals with a use role may use the key
    rules:
      - name: enclave
        expr: claims.mrenclave == "3b56..."
        message: only the model server build 42

Parsing and compiling live here; what the rules see (the CEL variables) and what a denial means
belong to the caller (:mod:`nacre.server.release`, :mod:`nacre.kms.policy`). Every error is a
``POLICY_INVALID`` UsageError naming the field, the expected and the actual value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from nacre.appraisal.cel import CelCompileError, CelProgram, compile_expr
from nacre.errors import UsageError

__all__ = ["MAX_RULES", "NamedRule", "RuleDocument", "parse_rule_document"]

#: Rules in one document.
MAX_RULES: Final = 64
_KEYS: Final = ("version", "name", "allow_warning", "admin_use", "rules")
_RULE_KEYS: Final = ("name", "expr", "message")


@dataclass(frozen=True, slots=True)
class NamedRule:
    name: str
    program: CelProgram
    message: str


@dataclass(frozen=True, slots=True)
class RuleDocument:
    rules: tuple[NamedRule, ...]
    allow_warning: bool
    admin_use: bool


def _bad(message: str, field: str, expected: str, actual: object) -> UsageError:
    return UsageError(message, code="POLICY_INVALID", field=field, expected=expected, actual=actual)


def _compile(expr: object, field: str, what: str) -> CelProgram:
    if not isinstance(expr, str) or not expr.strip():
        raise _bad(
            "a rule needs a CEL expression", field, "a non-empty string", type(expr).__name__
        )
    try:
        return compile_expr(expr)
    except CelCompileError as exc:
        raise _bad(
            f"{what} rule does not compile: {exc.message}", field, "a CEL expression", expr[:200]
        ) from None


def _flag(doc: Mapping[str, Any], name: str, prefix: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise _bad(f"{name} is a boolean", f"{prefix}{name}", "true or false", value)
    return value


def parse_rule_document(
    text: str, *, what: str, prefix: str = "", bare_field: str = "expr"
) -> RuleDocument:
    """Parse and compile ``text``. ``what`` names the document in messages ("release policy"),
    ``prefix`` starts every field path ("policy."), ``bare_field`` names a bare expression."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = text  # not YAML at all: maybe a CEL expression with YAML-hostile characters
    if isinstance(doc, str) or doc is None:
        rule = NamedRule("expr", _compile(text.strip(), bare_field, what), "")
        return RuleDocument((rule,), allow_warning=False, admin_use=False)
    if not isinstance(doc, dict):
        raise _bad(
            f"a {what} is a CEL expression or a mapping", "policy", "mapping", type(doc).__name__
        )
    unknown = sorted(str(k) for k in doc if k not in _KEYS)
    if unknown:
        raise _bad(f"unknown key in {what}", f"{prefix}{unknown[0]}", ", ".join(_KEYS), unknown[0])
    if doc.get("version", 1) != 1:
        raise _bad(f"unsupported {what} version", f"{prefix}version", "1", doc.get("version"))
    allow_warning = _flag(doc, "allow_warning", prefix)
    admin_use = _flag(doc, "admin_use", prefix)
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        raise _bad(
            "rules is a list",
            f"{prefix}rules",
            f"a list of <= {MAX_RULES} rules",
            type(raw_rules).__name__,
        )
    rules: list[NamedRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        where = f"{prefix}rules[{i}]"
        if not isinstance(raw, dict):
            raise _bad("a rule is a mapping", where, "{name, expr, message?}", type(raw).__name__)
        extra = sorted(str(k) for k in raw if k not in _RULE_KEYS)
        if extra:
            raise _bad(
                "unknown key in rule", f"{where}.{extra[0]}", ", ".join(_RULE_KEYS), extra[0]
            )
        name = raw.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise _bad(
                "a rule needs a unique name", f"{where}.name", "a unique non-empty string", name
            )
        seen.add(name)
        message = raw.get("message", "")
        if not isinstance(message, str):
            raise _bad("message is a string", f"{where}.message", "string", type(message).__name__)
        rules.append(NamedRule(name, _compile(raw.get("expr"), f"{where}.expr", what), message))
    return RuleDocument(tuple(rules), allow_warning, admin_use)
