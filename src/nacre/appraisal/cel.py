"""CEL (Common Expression Language) for appraisal rules: a thin adapter over ``cel``.

The library is ``common-expression-language`` (Python bindings to the Rust ``cel`` interpreter).
CEL has no loops or recursion, so evaluation time is bounded by the expression's size; on top of
that this adapter bounds the expression length (:data:`MAX_CEL_EXPR_CHARS`), and the parser refuses
nesting deeper than its recursion limit. Expressions are compiled once (when a policy is loaded) and
evaluated per appraisal against an activation built from :class:`VerifiedEvidence` only:

    claims        map of the evidence's claims (DESIGN §3 names; bytes as lower-case hex)
    tee           "sgx" | "tdx" | "snp"
    tcb_status    Intel's status word, or null (SEV-SNP)
    advisory_ids  list of strings
    sim           bool: simulated evidence

A rule passes only when it evaluates to the boolean ``true``. Anything else — ``false``, a
non-boolean, a missing claim, a type error — fails it, with the reason as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nacre.errors import NacreError
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "CEL_VARIABLES",
    "MAX_CEL_EXPR_CHARS",
    "CelCompileError",
    "CelEvaluationError",
    "CelProgram",
    "CelVariables",
    "activation",
    "compile_expr",
    "evaluate_bool",
]

#: Length of one CEL expression, in characters.
MAX_CEL_EXPR_CHARS: Final = 4096
#: Length of an error text carried into a check (the parser's caret diagrams can be long).
MAX_CEL_ERROR_CHARS: Final = 400
#: The variables an expression may use.
CEL_VARIABLES: Final = ("claims", "tee", "tcb_status", "advisory_ids", "sim")


class CelCompileError(NacreError):
    """An expression that does not parse (or is over a limit)."""

    default_code = "CEL_COMPILE"


class CelEvaluationError(NacreError):
    """An expression that failed while evaluating (missing claim, type error, ...)."""

    default_code = "CEL_EVALUATION"


def _short(text: str) -> str:
    # The Rust parser repeats the source with a caret line under it: keep the first error line.
    first = text.strip().splitlines()[0] if text.strip() else type(text).__name__
    return first if len(first) <= MAX_CEL_ERROR_CHARS else first[: MAX_CEL_ERROR_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class CelProgram:
    """A compiled expression."""

    source: str
    _program: Any = field(repr=False, compare=False)


def compile_expr(expr: str) -> CelProgram:
    """Compile ``expr``; raise :class:`CelCompileError` with the parser's message."""
    if len(expr) > MAX_CEL_EXPR_CHARS:
        raise CelCompileError(
            f"expression longer than {MAX_CEL_EXPR_CHARS} characters",
            code="LIMIT_EXCEEDED",
            field="expr",
            expected=f"<= {MAX_CEL_EXPR_CHARS} characters",
            actual=f"{len(expr)} characters",
        )
    import cel as _cel  # here, not at module import: the binding pulls in its CLI's deps

    try:
        program = _cel.compile(expr)
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover
        raise
    except BaseException as exc:  # the Rust side may raise a PanicException (a BaseException)
        text = str(exc)
        text = text.split(": ERROR: ", 1)[-1] if ": ERROR: " in text else text
        raise CelCompileError(_short(text), field="expr", expected="a CEL expression") from None
    return CelProgram(expr, program)


def _plain(value: Any) -> Any:
    """Claims as plain JSON-like values (CEL maps and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def activation(verified: VerifiedEvidence) -> dict[str, Any]:
    """The variables of :data:`CEL_VARIABLES` for ``verified``."""
    if not isinstance(verified, VerifiedEvidence):
        raise TypeError("CEL rules evaluate over VerifiedEvidence only")
    return {
        "claims": _plain(verified.claims),
        "tee": verified.tee,
        "tcb_status": verified.tcb_status,
        "advisory_ids": list(verified.advisory_ids),
        "sim": verified.sim,
    }


class CelVariables:
    """Variables converted to CEL values once, for several evaluations (a policy's rules): the
    engine otherwise converts every variable again for every expression. One evaluation at a
    time (the engine's context is not thread-safe): build one per policy evaluation.

    Raises :class:`CelEvaluationError` when a value has no CEL form (a set, an object)."""

    __slots__ = ("_context",)

    def __init__(self, variables: Mapping[str, Any]) -> None:
        import cel as _cel

        try:
            self._context = _cel.Context(dict(variables))
        except (KeyboardInterrupt, SystemExit):  # pragma: no cover
            raise
        except BaseException as exc:  # ValueError from the binding; a Rust panic otherwise
            raise CelEvaluationError(
                f"{type(exc).__name__}: {_short(str(exc))}", field="variables"
            ) from None


def evaluate_bool(program: CelProgram, variables: Mapping[str, Any] | CelVariables) -> bool:
    """Evaluate ``program``; return its boolean result.

    Raise :class:`CelEvaluationError` when evaluation fails or the result is not a boolean.
    """
    try:
        env = variables._context if isinstance(variables, CelVariables) else dict(variables)
        result = program._program.execute(env)
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover
        raise
    except KeyError as exc:
        raise CelEvaluationError(
            f"no such key: {exc.args[0] if exc.args else exc}", field="expr"
        ) from None
    except BaseException as exc:  # the Rust side may raise a PanicException (a BaseException)
        raise CelEvaluationError(
            f"{type(exc).__name__}: {_short(str(exc))}", field="expr"
        ) from None
    if not isinstance(result, bool):
        raise CelEvaluationError(
            f"the expression evaluated to {type(result).__name__} {result!r:.80}, not a boolean",
            field="expr",
            expected="bool",
            actual=type(result).__name__,
        )
    return result
