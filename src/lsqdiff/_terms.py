"""The gradient of an operator as a short sum of scaled outer products.

`lsqdiff._gradient` computes it, the adapters turn it into gradients of a
dense or sparse ``A`` or of a `LinearOperator`'s parameters, and `lsqdiff.vjp`
hands it to the user (`lsqdiff.LowRank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Array = Any


@dataclass(frozen=True)
class Terms:
    """The gradient of ``A`` as ``sum_k s_k U_k V_k^H`` (``U_k``: (m,) or (m, j))."""

    terms: tuple[tuple[float, Array, Array], ...]

    def blocks(self, xp: Any) -> tuple[Array, Array]:
        """``[s_1 U_1, s_2 U_2, ...]`` and ``[V_1, V_2, ...]``, one column a term
        (or as many as the term has)."""
        U = xp.concat([s * (U if U.ndim == 2 else U[:, None]) for s, U, _ in self.terms], axis=1)
        V = xp.concat([V if V.ndim == 2 else V[:, None] for _, _, V in self.terms], axis=1)
        return U, V

    def contract(self, matvec: Any, xp: Any) -> Any:
        """``sum_k s_k Re<U_k, A V_k>``: its gradient in ``A`` (or in the parameters
        ``matvec`` depends on) is the operator's gradient.

        One block product ``A [V_1, V_2, ...]``: an operator that builds ``A`` as
        it goes (features made batch by batch) builds it once, not once a term."""
        U, V = self.blocks(xp)
        return real_inner(U, matvec(V), xp)

    def dense(self, xp: Any) -> Array:
        """``sum_k s_k U_k V_k^H`` as a dense ``(m, n)`` array.

        One product ``[s_1 U_1, s_2 U_2, ...] [V_1, V_2, ...]^H``: the only
        ``(m, n)`` array allocated is the result (a sum of outer products would
        allocate two or three more, and pass over them as often)."""
        U, V = self.blocks(xp)
        return U @ conj(V, xp).T


def real_inner(a: Array, b: Array, xp: Any) -> Any:
    """``Re <a, b> = Re sum(conj(a) * b)`` over all entries."""
    if xp.isdtype(a.dtype, "complex floating") or xp.isdtype(b.dtype, "complex floating"):
        return xp.sum(xp.real(xp.conj(a) * b))
    return xp.sum(a * b)


def conj(a: Array, xp: Any) -> Array:
    """``conj(a)``, free for real dtypes."""
    return xp.conj(a) if xp.isdtype(a.dtype, "complex floating") else a
