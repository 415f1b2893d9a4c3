"""Release rules share one CEL conversion of their variables; results and reasons are those of
evaluating each rule on its own, and a value with no CEL form fails only the rules naming it."""

from __future__ import annotations

from typing import Any

import pytest

import nacre.server.release as release
from nacre.appraisal.cel import CelEvaluationError, CelVariables, compile_expr, evaluate_bool
from nacre.server.release import ReleaseRule, _rule_variables


def _rule(name: str, expr: str) -> ReleaseRule:
    return ReleaseRule(name, compile_expr(expr), "")


def test_shared_variables_give_each_rules_own_result() -> None:
    variables: dict[str, Any] = {"claims": {"isv_svn": 3, "mr": "ab"}, "tee": "sgx", "sim": True}
    rules = (
        _rule("svn", "claims.isv_svn >= 3"),
        _rule("mr", "claims.mr == 'cd'"),
        _rule("tee", "tee == 'sgx' && sim"),
        _rule("missing", "claims.nope == 1"),
    )
    over = _rule_variables(rules, variables)
    shared = over(rules[0])
    assert isinstance(shared, CelVariables)
    assert all(over(rule) is shared for rule in rules)
    for rule in rules[:3]:
        alone = {k: v for k, v in variables.items() if k in release._used_by(rule, variables)}
        assert evaluate_bool(rule.program, shared) == evaluate_bool(rule.program, alone)
    with pytest.raises(CelEvaluationError):
        evaluate_bool(rules[3].program, shared)


def test_a_value_without_cel_form_fails_only_the_rules_naming_it() -> None:
    variables: dict[str, Any] = {"claims": {"isv_svn": 3}, "odd": {1, 2}}
    with pytest.raises(CelEvaluationError) as caught:
        CelVariables(variables)
    assert caught.value.field == "variables"
    rules = (_rule("svn", "claims.isv_svn == 3"), _rule("odd", "size(odd) == 2"))
    over = _rule_variables(rules, variables)
    assert evaluate_bool(rules[0].program, over(rules[0])) is True
    with pytest.raises(CelEvaluationError):
        evaluate_bool(rules[1].program, over(rules[1]))


def test_no_rules_no_conversion() -> None:
    over = _rule_variables((), {"claims": {}})
    assert over(_rule("x", "true")) == {}
