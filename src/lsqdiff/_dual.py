"""The dual of an undamped solve, carried beside LSMR's or LSQR's iterate.

The gradient of ``x = x0 + A^+ (b - A x0)`` needs ``y = A^+H (x - x0)``
(DESIGN.md section 2), which would be one more solve. The bidiagonalisation
already holds it: ``A^H u_k = alpha_k v_k + beta_k v_{k-1}``, so every ``v_k``
has the preimage under ``A^H``

    z(v_1) = u_1 / alpha_1,    z(v_k) = (u_k - beta_k z(v_{k-1})) / alpha_k,

and each iterate ``x_k - x0``, a combination of the ``v``'s, has the matching
combination ``z_k`` of these: ``A^H z_k = x_k - x0`` at any rank. Where
``A^H`` is injective (``A`` of full row rank) ``z_k`` is ``y``; otherwise it
differs from ``y`` by a part in ``null(A^H)`` along the solve's exact residual,
which the gradient removes and then checks (`lsqdiff._gradient.dual_pinv`).
The same holds for the backward solve with ``A^H``: its dual ``g`` with
``A g = b_bar`` gives ``A^+ b_bar``, which saves the solve for ``g``.

Cost: four vector updates of length ``m`` per iteration (LSQR: three), against
a solve's worth of products. A preimage rides along each vector of the
method (LSMR's ``h``, ``hbar`` and ``x``; LSQR's ``w`` and ``x``) and is
updated with the same coefficients.
"""

from __future__ import annotations

from typing import Any

#: The state entries the dual adds to LSMR's and LSQR's (``zx`` is the result).
STATE_KEYS = ("zx", "zv", "zh", "zhbar", "zw")


def start(S: Any, V: Any, u: Any, alpha: Any, zeros_b: Any) -> dict[str, Any]:
    """Preimages after the bidiagonalisation's first step: ``z(v_1)`` and ``z_0 = 0``
    (``V``: `lsqdiff._vectors`)."""
    return dict(zv=V.scaled(S.recip(alpha), u), zx=zeros_b)


def advance(S: Any, V: Any, zv: Any, u: Any, alpha: Any, beta: Any) -> Any:
    """Preimage of the new ``v`` given the bidiagonalisation's new ``u, alpha,
    beta``; where ``beta = 0`` the bidiagonalisation has ended and, like ``v``,
    it keeps its value. ``V`` (`lsqdiff._vectors`) may update ``zv`` in place."""
    if V.inplace and not beta >= S.tiny:
        return zv
    return S.where(beta >= S.tiny, V.scale(S.recip(alpha), V.xpay(u, -beta, zv)), zv)
