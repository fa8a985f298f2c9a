"""What LSMR and LSQR share besides the bidiagonalisation: the problem they
solve, SciPy's stopping rules, and freezing columns that have stopped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _bidiag
from ._info import ISTOP_NONFINITE
from ._vectors import NEW_ARRAYS
from .operator import Operator

#: Entries of the state that are results: frozen once a column stops.
RESULT_KEYS = ("x", "istop", "itn", "normr", "normar", "norma", "conda", "normx",
               "r1norm", "var", "zx")


@dataclass(frozen=True)
class Problem:
    """A solve's fixed data: operator, scalar arithmetic, norm and stopping settings."""

    op: Operator
    S: Any
    norm: Callable[[Any], Any]
    zeros_x: Callable[[], Any]
    zeros_b: Callable[[], Any]
    damp: Any
    atol: float
    btol: float
    ctol: float
    maxiter: int
    #: How the long vectors are updated (`lsqdiff._vectors`).
    vec: Any = NEW_ARRAYS


def start(p: Problem, b: Any, x0: Any) -> tuple[Any, ...]:
    """What LSMR and LSQR share at the start: ``x, u, v, alpha, beta, normb, istop``.

    ``istop`` is 0 where ``A^H (b - A x0) = 0`` (``x0``, or zeros, solves the
    problem; this covers ``b = 0`` without ``x0``), 8 where a NaN or Inf
    appeared, and -1 (running) elsewhere.
    """
    S = p.S
    u, v, alpha, beta = _bidiag.start(p.op, b, x0, S, p.norm)
    normb = p.norm(b)
    # The tests are relative to ||b||. For b = 0 with a warm start the problem is
    # min ||A d + A x0||^2 + damp^2 ||d||^2: measure against ||b - A x0|| instead
    # (SciPy returns zeros there, which solves a different problem).
    normb = S.where(normb == 0, beta, normb)
    istop = S.where(alpha * beta == 0, 0, S.int_const(-1))
    istop = S.where(S.isfinite(alpha + beta), istop, ISTOP_NONFINITE)
    x = p.zeros_x() if x0 is None else x0
    return x, u, v, alpha, beta, normb, istop


def choose_stop(p: Problem, *, itn: Any, normr: Any, normar: Any, norma: Any,
                conda: Any, normx: Any, normb: Any, eps: float = 0.0) -> Any:
    """SciPy's stopping rules; a later rule overrides an earlier one, as in SciPy.

    ``eps`` is LSQR's guard against dividing by zero in tests 2 and 3; LSMR
    tests ``norma * normr != 0`` instead.
    """
    S = p.S
    test1 = S.div(normr, normb)
    if eps:
        test2 = S.div(normar, norma * normr + eps)
        test3 = S.div(1.0, conda + eps)
    else:
        prod = norma * normr
        test2 = S.where(prod != 0, S.div(normar, prod), float("inf"))
        test3 = S.div(1.0, conda)
    ratio = S.div(norma * normx, normb)
    t1 = S.div(test1, 1 + ratio)
    rtol = p.btol + p.atol * ratio

    istop = S.where(itn >= p.maxiter, 7, S.int_const(-1))
    for code, hit in ((6, 1 + test3 <= 1), (5, 1 + test2 <= 1), (4, 1 + t1 <= 1),
                      (3, test3 <= p.ctol), (2, test2 <= p.atol), (1, test1 <= rtol)):
        istop = S.where(hit, code, istop)
    return istop


def freeze(S: Any, old: dict[str, Any], new: dict[str, Any], active: Any, finite: Any) -> dict[str, Any]:
    """Keep the results of stopped columns, and of columns that just met a NaN/Inf.

    The other state of a stopped column runs on harmlessly (its results are
    never read again); only ``RESULT_KEYS`` are masked, which is cheap.
    """
    if not S.batched:  # one column: the loop ends as soon as it stops
        if finite:
            return new
        kept = {k: old[k] for k in RESULT_KEYS if k in old}
        return {**new, **kept, "istop": ISTOP_NONFINITE, "itn": new["itn"]}
    live = S.logical_and(active, finite)
    out = dict(new)
    for k in RESULT_KEYS:
        if k in old:
            out[k] = S.where(live, new[k], old[k])
    out["istop"] = S.where(
        active, S.where(finite, new["istop"], ISTOP_NONFINITE), old["istop"])
    out["itn"] = S.where(active, new["itn"], old["itn"])
    return out
