"""The dual of an undamped solve, carried beside LSMR's or LSQR's iterate.

For ``x`` the minimum-norm solution of ``min ||A x - b||`` (from ``x0``), the
gradient needs ``y = A^+H (x - x0)``, which would be one more solve. The
bidiagonalisation already holds it: ``A^H u_k = alpha_k v_k + beta_k v_{k-1}``,
so every ``v_k`` has the preimage under ``A^H``

    z(v_1) = u_1 / alpha_1,    z(v_k) = (u_k - beta_k z(v_{k-1})) / alpha_k,

and each iterate ``x_k - x0``, a combination of the ``v``'s, has the matching
combination ``z_k`` of these, with ``A^H z_k = x_k - x0``. ``z_k`` may hold a
part outside ``range(A)``, and only there can it differ from ``y``: since
``P A v = 0`` for ``P`` the projector onto ``null(A^H)``, the recurrence gives
``P u_{k+1} = -alpha_k P u_k / beta_{k+1}``, so every vector carried has ``P``-part
a known multiple ``e`` of ``P u_1``. At the solution ``P u_1 = r / beta_1`` with
``r = b - A x``, hence

    y = z - (e / beta_1) r.

Cost: three or four vector updates of length ``m`` per iteration, against a
solve's worth of products. A pair ``(z, e)`` rides along each vector of the
method (LSMR's ``h``, ``hbar`` and ``x``; LSQR's ``w`` and ``x``) and is
updated with the same coefficients.
"""

from __future__ import annotations

from typing import Any

State = dict[str, Any]


def start(S: Any, u: Any, alpha: Any, beta: Any, zeros_b: Any) -> State:
    """The dual's state after the bidiagonalisation's first step."""
    inv = S.recip(alpha)
    one = S.const(1.0)
    return dict(zv=u * inv, ev=one * inv, cu=one, zx=zeros_b, ex=S.const(0.0), beta1=beta)


def advance(S: Any, st: State, u: Any, alpha_old: Any, alpha: Any, beta: Any) -> State:
    """Preimage of the new ``v`` (and the ``P``-coefficients of ``u`` and of it),
    given the bidiagonalisation's new ``u, alpha, beta``. Where ``beta = 0`` the
    bidiagonalisation has ended and, like ``v``, they keep their values."""
    going = beta > 0
    cu = -alpha_old * st["cu"] * S.recip(beta)
    inv = S.recip(alpha)
    zv = (u - beta * st["zv"]) * inv
    ev = (cu - beta * st["ev"]) * inv
    return dict(zv=S.where(going, zv, st["zv"]), ev=S.where(going, ev, st["ev"]),
                cu=S.where(going, cu, st["cu"]))


def range_part(S: Any, st: State, r: Any) -> Any:
    """``y = A^+H (x - x0)`` from a final state and the residual ``r = b - A x``."""
    return st["zx"] - (st["ex"] * S.recip(st["beta1"])) * r
