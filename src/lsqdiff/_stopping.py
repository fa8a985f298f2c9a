"""What LSMR and LSQR share besides the bidiagonalisation: the problem they
solve, SciPy's stopping rules, and freezing columns that have stopped.

Scale: the vectors (``x``, ``u``, ``v``, ...) are in the problem's units, but
the scalar recurrences run on the problem scaled by powers of two, ``A / sa``
and ``b / sb``, with ``sa`` and ``sb`` within a factor 2 of the first
``alpha = ||A^H u_1||`` and ``beta = ||b - A x0||`` (`start`). In those units
every scalar is of order one, up to factors of the condition number, so
SciPy's products and squares of them (``normA2``, ``d``, ``xxnorm``,
``ddnorm``, ``rho * rhobar`` ...) under- or overflow only for a condition
number near 1e150, whatever the scale of ``A`` and ``b``; and since scaling
by a power of two is exact, the recurrences give SciPy's numbers (to
rounding: Python's ``x ** 2`` may differ from ``x * x`` by an ulp) wherever
SciPy's own do not under- or overflow. The stopping tests are ratios, the
same in either units; the diagnostics are reported in the problem's units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _bidiag
from ._info import ISTOP_NONFINITE
from ._vectors import NEW_ARRAYS
from .operator import Operator

#: SciPy's guard in LSQR's tests 2 and 3 (float64 machine epsilon, whatever the dtype).
EPS = 2.220446049250313e-16

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


def start(p: Problem, b: Any, x0: Any) -> dict[str, Any]:
    """What LSMR and LSQR share at the start, as entries of their state.

    ``x, u, v, alpha`` (``alpha`` in the problem's units: the
    bidiagonalisation's), the scales ``sa, sb`` and ``sx = sb / sa`` (``x``'s),
    ``damp``, ``normb`` and ``alpha1, beta1`` (the first ``alpha`` and
    ``beta``) in normalised units (module docstring), and ``istop``: 0 where
    ``A^H (b - A x0) = 0`` (``x0``, or zeros, solves the problem; this covers
    ``b = 0`` without ``x0``), 8 where a NaN or Inf appeared, and -1 (running)
    elsewhere.
    """
    S = p.S
    u, v, alpha, beta = _bidiag.start(p.op, b, x0, S, p.norm, p.vec)
    sa, sb = S.pow2(alpha), S.pow2(beta)
    alpha1, beta1 = alpha / sa, beta / sb
    # The tests are relative to ||b||. For b = 0 with a warm start the problem is
    # min ||A d + A x0||^2 + damp^2 ||d||^2: measure against ||b - A x0|| instead
    # (SciPy returns zeros there, which solves a different problem).
    normb = p.norm(b) / sb
    normb = S.where(normb == 0, beta1, normb)
    # In normalised units alpha1 * beta1 cannot underflow, as alpha * beta can.
    istop = S.where(alpha1 * beta1 == 0, 0, S.int_const(-1))
    istop = S.where(S.isfinite(alpha1 + beta1), istop, ISTOP_NONFINITE)
    x = p.zeros_x() if x0 is None else x0
    return dict(x=x, u=u, v=v, alpha=alpha, sa=sa, sb=sb, sx=sb / sa, damp=p.damp / sa,
                normb=normb, alpha1=alpha1, beta1=beta1, istop=istop)


def lsqr_guard(S: Any, sa: Any, sb: Any) -> Any:
    """LSQR's guard in test 2, ``normar / (norma * normr + guard)``, in normalised units.

    SciPy adds ``EPS`` in the problem's units: next to ``norma * normr`` that is
    negligible when ``||A|| ||b||`` is 1 or more, but at smaller scales it makes
    test 2 pass long before convergence (``lsqr(A, b * 1e-22)`` stopped at
    iteration 1). The guard is SciPy's where ``sa * sb >= 1`` and
    ``EPS * sa * sb`` (relative) below.
    """
    inv = S.div(S.div(1.0, sa), sb)
    return EPS * S.where(inv < 1, inv, 1.0)


def choose_stop(p: Problem, *, itn: Any, normr: Any, normar: Any, norma: Any,
                conda: Any, normx: Any, normb: Any, guard: Any = None) -> Any:
    """SciPy's stopping rules on normalised values (module docstring); a later
    rule overrides an earlier one, as in SciPy.

    ``guard`` is LSQR's guard against dividing by zero in test 2 (`lsqr_guard`),
    whose test 3 adds ``EPS``; LSMR tests ``norma * normr != 0`` instead.
    """
    S = p.S
    test1 = S.div(normr, normb)
    if guard is not None:
        test2 = S.div(normar, norma * normr + guard)
        test3 = S.div(1.0, conda + EPS)
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
