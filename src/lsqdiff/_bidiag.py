"""Golub-Kahan bidiagonalisation, shared by LSMR and LSQR.

The recurrences (Paige & Saunders 1982) produce orthonormal ``u``, ``v`` and
positive ``alpha``, ``beta`` with

    beta_1 u_1 = b - A x0,             alpha_1 v_1 = A^H u_1,
    beta_{k+1} u_{k+1} = A v_k - alpha_k u_k,
    alpha_{k+1} v_{k+1} = A^H u_{k+1} - beta_{k+1} v_k.

Vectors are ``(n,)`` or ``(n, k)`` (one column per right-hand side); the
scalars broadcast against their last axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._vectors import NEW_ARRAYS
from .operator import Operator

Norm = Callable[[Any], Any]


def sym_ortho(S: Any, a: Any, b: Any) -> tuple[Any, Any, Any]:
    """Givens rotation ``(c, s, r)`` with ``[c s; -s c] [a; b] = [r; 0]``, ``r >= 0``.

    ``hypot`` avoids overflow as SciPy's ``_sym_ortho`` does, and needs no branch,
    so the same code runs on floats and traced arrays. ``a = b = 0`` gives zeros.
    """
    r = S.hypot(a, b)
    inv = S.recip(r)
    return a * inv, b * inv, r


def start(op: Operator, b: Any, x0: Any, S: Any, norm: Norm,
          V: Any = NEW_ARRAYS) -> tuple[Any, Any, Any, Any]:
    """First step from ``b - A x0``: returns ``u, v, alpha, beta``."""
    u = b if x0 is None else b - op.matvec(x0)
    beta = norm(u)
    u = V.scaled(S.recip(beta), u)  # never in place: u may be b
    v = op.rmatvec(u)
    alpha = norm(v)
    return u, V.scaled(S.recip(alpha), v), alpha, beta


def step(op: Operator, u: Any, v: Any, alpha: Any, S: Any, norm: Norm,
         V: Any = NEW_ARRAYS) -> tuple[Any, Any, Any, Any]:
    """One more step: returns the next ``u, v, alpha, beta``.

    Where ``beta = 0`` the bidiagonalisation has ended and, as in SciPy,
    ``v`` and ``alpha`` keep their values; so it has where ``beta`` is
    subnormal (`lsqdiff._scalars.HostScalars.recip`). ``V`` (`lsqdiff._vectors`) may
    update ``u`` and ``v`` in place, and then takes ``A^H u`` in the pieces
    the operator gives, where it gives them.
    """
    u = V.xpay(op.matvec(v), -alpha, u)
    beta = norm(u)
    u = V.scale(S.recip(beta), u)
    going = beta >= S.tiny
    if V.inplace and not going:  # one column, host scalars: keep v as it is
        return u, v, alpha, beta
    pieces = V.inplace and op.rmatvec_pieces is not None
    g = op.rmatvec_pieces(u) if pieces else op.rmatvec(u)

    def next_v(norm: Norm, v: Any, g: Any) -> tuple[tuple[Any], tuple[Any]]:
        v = V.xpay(g, -beta, v)
        return (v,), (norm(v),)

    (v_next,), (alpha_next,) = V.sweep(next_v, (v, g), norm)
    v_next = V.scale(S.recip(alpha_next), v_next)
    return u, S.where(going, v_next, v), S.where(going, alpha_next, alpha), beta
