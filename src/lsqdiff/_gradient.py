"""The gradient of a least-squares solve, written once for every backend.

Given the solution ``x`` of ``min ||A d - (b - A x0)||^2 + damp^2 ||d||^2``
(``x = x0 + d``) and the incoming gradient ``x_bar``, :func:`pullback` returns
the gradients of ``b``, ``x0``, ``damp`` and of ``A`` as a short sum of scaled
outer products ``sum_k s_k U_k V_k^H``. Each costs a few more minimum-norm LSMR
solves, never the iterations of the forward solve (DESIGN.md section 2):

* damped (``damp > 0``): one solve on the wide operator ``K = [A^H, damp I]``,
  whose minimum-norm solution of ``K c = x_bar`` is ``c = (A g, damp g)`` with
  ``g = (A^H A + damp^2 I)^-1 x_bar``;
* undamped (pseudo-inverse, any rank): ``b_bar = A^+H x_bar`` and
  ``y = A^+H (x - x0)`` as one two-column solve with ``A^H`` (two one-column
  solves on a CPU, where they are faster), then
  ``g = A^+ b_bar``: three solves;
* undamped with ``assume_full_rank``, one solve: a tall ``A`` needs no ``y``,
  and the ``b_bar`` solve's dual (`lsqdiff._dual`) is ``g``; a wide ``A``
  needs no ``g``, and ``y`` is the forward solve's dual.

:func:`pushforward` is the forward-mode rule (the tangent of ``x`` given the
tangents of the inputs), written with the same solves: each is passed through
``backend.linear_solve`` (a true inverse, with its adjoint) or
``backend.min_norm_solve`` (a pseudo-inverse), so that JAX transposes the
tangent rule into the reverse-mode rule above at the same number of solves, and
differentiates it again (second derivatives) by each solve's own derivative.

Gradients follow PyTorch's convention for complex numbers (the gradient of a
real loss is ``dL/dRe + i dL/dIm``, so a product ``A v`` pulls back through
``A^H``); the JAX adapter conjugates on the way in and out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from ._driver import lsmr_on, real_dtype
from .operator import Operator

Array = Any


@dataclass(frozen=True)
class Terms:
    """The gradient of ``A`` as ``sum_k s_k U_k V_k^H`` (``U_k``: (m,) or (m, j))."""

    terms: tuple[tuple[float, Array, Array], ...]

    def contract(self, matvec: Any, xp: Any) -> Any:
        """``sum_k s_k Re<U_k, A V_k>``: its gradient in ``A`` (or in the parameters
        ``matvec`` depends on) is the operator's gradient."""
        total = 0.0
        for s, U, V in self.terms:
            total = total + s * real_inner(U, matvec(V), xp)
        return total

    def dense(self, xp: Any) -> Array:
        """``sum_k s_k U_k V_k^H`` as a dense ``(m, n)`` array.

        One product ``[s_1 U_1, s_2 U_2, ...] [V_1, V_2, ...]^H``: the only
        ``(m, n)`` array allocated is the result (a sum of outer products would
        allocate two or three more, and pass over them as often)."""
        U = xp.concat([s * (U if U.ndim == 2 else U[:, None]) for s, U, _ in self.terms], axis=1)
        V = xp.concat([V if V.ndim == 2 else V[:, None] for _, _, V in self.terms], axis=1)
        return U @ _conj(V, xp).T


@dataclass(frozen=True)
class Cotangents:
    """Gradients of one solve's inputs (``x0`` is None when no warm start was given)."""

    b: Array
    x0: Array | None
    damp: Array
    A: Terms


def pullback(op: Operator, b: Array, x: Array, x0: Array | None, damp: Any, x_bar: Array, *,
             xp: Any, backend: Any, dtype: Any, atol: float, btol: float, ctol: float,
             maxiter: int | None, damped: bool, assume_full_rank: bool = False,
             limit: int | None = None, y: Array | None = None) -> Cotangents:
    """Gradients of ``b``, ``x0``, ``damp`` and ``A`` given ``x_bar`` (see the module doc).

    ``damped`` says which rule applies; it is decided from the value the user gave
    (a damp passed as an array is taken to be positive). Each solve runs at most
    ``limit`` iterations when given, else at least ``min(m, n)`` and ``maxiter``
    (`lsqdiff._driver.lsmr_on`). ``y = A^+H (x - x0)`` when the forward solve
    carried it (undamped, wide, ``assume_full_rank``: see `Prepared`).
    """
    m, n = op.shape
    settings = dict(xp=xp, backend=backend, dtype=dtype, atol=atol, btol=btol, ctol=ctol,
                    maxiter=maxiter, limit=limit)
    d = x if x0 is None else x - x0

    if damped:
        K = Operator((n, m + n), lambda c: op.rmatvec(c[:m, ...]) + damp * c[m:, ...],
                     lambda z: xp.concat([op.matvec(z), damp * z], axis=0))
        c = lsmr_on(K, x_bar, **settings)
        b_bar, g = c[:m, ...], c[m:, ...] / damp
        r = b - op.matvec(x)
        damp_bar = -2 * damp * real_inner(g, d, xp)
        x0_bar = None if x0 is None else (damp * damp) * g
        return Cotangents(b_bar, x0_bar, damp_bar, Terms(((1.0, r, g), (-1.0, b_bar, x))))

    AH = Operator((n, m), op.rmatvec, op.matvec)
    terms: list[tuple[float, Array, Array]] = []
    tall_full_rank = assume_full_rank and m >= n
    if tall_full_rank:
        # The null space is {0}: x0 and y drop out, and as A is injective the dual of
        # the b_bar solve, z with A z = b_bar, is g = A^+ b_bar (no second solve).
        b_bar, g = lsmr_on(AH, x_bar, dual=True, **settings)
        x0_bar = None if x0 is None else xp.zeros_like(x0)
    elif y is not None:  # carried by the forward solve
        b_bar = lsmr_on(AH, x_bar, **settings)
    elif backend.on_cpu(x_bar):
        # On a CPU a product with 2k columns costs more than 2k matrix-vector
        # products, and a single column's recurrences run on Python floats:
        # two solves are 2-5x faster than one block solve of both right-hand sides.
        b_bar = lsmr_on(AH, x_bar, **settings)
        y = lsmr_on(AH, d, **settings)
    else:
        k = 1 if x_bar.ndim == 1 else x_bar.shape[1]
        pair = xp.concat([xp.reshape(x_bar, (n, k)), xp.reshape(d, (n, k))], axis=1)
        Y = lsmr_on(AH, pair, **settings)
        b_bar = xp.reshape(Y[:, :k], (m,) + tuple(x_bar.shape[1:]))
        y = xp.reshape(Y[:, k:], b_bar.shape)
    if not tall_full_rank:
        w = x_bar - op.rmatvec(b_bar)
        terms.append((1.0, y, w))
        x0_bar = None if x0 is None else w
    if not (assume_full_rank and m < n):  # a wide full-rank A leaves no residual
        if not tall_full_rank:
            g = lsmr_on(op, b_bar, **settings)
        terms.append((1.0, b - op.matvec(x), g))
    terms.append((-1.0, b_bar, x))
    # At damp = 0 the solution does not move with damp to first order.
    damp_bar = xp.zeros((), dtype=real_dtype(xp, dtype), device=aac.device(x_bar))
    return Cotangents(b_bar, x0_bar, damp_bar, Terms(tuple(terms)))


def pushforward(op: Operator, b: Array, x: Array, x0: Array | None, damp: Any, *,
                dA: Operator | None, db: Array | None, dx0: Array | None, ddamp: Any, xp: Any,
                backend: Any, dtype: Any, atol: float, btol: float, ctol: float,
                maxiter: int | None, damped: bool | None, assume_full_rank: bool = False,
                limit: int | None = None, y: Array | None = None) -> Array:
    """The tangent of ``x`` given the inputs' tangents (None: zero).

    ``dA`` holds the products with the tangent of ``A``: ``dA.matvec(v) = A' v``
    and ``dA.rmatvec(u) = A'^H u``. With ``r = b - A x``, ``d = x - x0``:

    * damped, ``M = A^H A + damp^2 I``:
      ``x' = M^-1 (A^H (b' - A' x) + A'^H r + damp^2 x0' - 2 damp damp' d)``,
      one solve (the minimum-norm solution of ``[A^H, damp I] c = t`` is
      ``c = (A M^-1 t, damp M^-1 t)``);
    * undamped (from ``x = A^+ b + (I - A^+ A) x0`` and the derivative of the
      pseudo-inverse): ``w = A'^H y + x0'`` with ``y = A^+H d``, then
      ``x' = w + A^+ (b' - A' x - A w + A^+H (A'^H r))``: a solve with ``A^H`` for
      ``y`` (only when ``A`` moves) and one for the residual term, and one
      with ``A``; with ``assume_full_rank`` a wide ``A`` (``r = 0``) needs no
      residual term and takes ``y`` from the forward solve, and a tall ``A``
      (no null space, so no ``w``) one solve:
      ``x' = N^-1 (A^H (b' - A' x) + A'^H r)`` with ``N = A^H A``, whose
      solution is the dual of the minimum-norm solve with ``A^H`` (`lsqdiff._dual`).

    Settings and ``y`` as for :func:`pullback`; ``damped`` None (a traced damp)
    selects the rule where the solve runs, by ``damp > 0``. A tangent solve is
    skipped when the tangents it acts on are all None.
    """
    if damped is None:
        def rule(damp_: Any, damped_: bool) -> Callable[[], Array]:
            return lambda: xp.astype(pushforward(
                op, b, x, x0, damp_, dA=dA, db=db, dx0=dx0, ddamp=ddamp, xp=xp,
                backend=backend, dtype=dtype, atol=atol, btol=btol, ctol=ctol, maxiter=maxiter,
                damped=damped_, assume_full_rank=assume_full_rank, limit=limit, y=y), x.dtype)

        # The damped rule divides by damp: it runs on a stand-in damp of 1 where
        # damp = 0, so that the branch not taken (under vmap both run) cannot leak
        # a NaN into the tangent or, transposed, into a gradient.
        positive = damp > 0
        stand_in = xp.where(positive, damp, xp.ones_like(damp))
        return backend.select(positive, rule(stand_in, True), rule(damp, False))
    m, n = op.shape
    settings = dict(xp=xp, backend=backend, dtype=dtype, atol=atol, btol=btol, ctol=ctol,
                    maxiter=maxiter, limit=limit)
    d = x if x0 is None else x - x0

    def normal_terms() -> list[Array | None]:  # A^H (b' - A' x) + A'^H r
        q = _sum([db, None if dA is None else -dA.matvec(x)])
        return [None if q is None else op.rmatvec(q),
                None if dA is None else dA.rmatvec(b - op.matvec(x))]

    def normal(shift: Any) -> Any:  # v -> (A^H A + shift I) v
        return lambda v: op.rmatvec(op.matvec(v)) + shift * v

    if damped:
        K = Operator((n, m + n), lambda c: op.rmatvec(c[:m, ...]) + damp * c[m:, ...],
                     lambda z: xp.concat([op.matvec(z), damp * z], axis=0))

        def damped_solve(t: Array) -> Array:  # M^-1 t
            return lsmr_on(K, t, **settings)[m:, ...] / damp

        t = _sum(normal_terms() + [None if dx0 is None else (damp * damp) * dx0,
                                   None if ddamp is None else (-2 * damp * ddamp) * d])
        return _hermitian_solve(backend, damped_solve, normal(damp * damp), t, x, xp)

    AH = Operator((n, m), op.rmatvec, op.matvec)
    if assume_full_rank and m >= n:
        def dual_solve(t: Array) -> Array:  # N^-1 t
            return lsmr_on(AH, t, dual=True, **settings)[1]

        t = _sum(normal_terms() + [None if ddamp is None else (-2 * damp * ddamp) * d])
        return _hermitian_solve(backend, dual_solve, normal(0.0), t, x, xp)

    def solve(B: Operator, rhs: Array) -> Array:
        return lsmr_on(B, rhs, **settings)

    def pinv(rhs: Array) -> Array:  # A^+ rhs
        return backend.min_norm_solve(op, rhs, False, solve)

    def pinv_h(rhs: Array) -> Array:  # A^+H rhs
        return backend.min_norm_solve(op, rhs, True, solve)

    if y is None and (dA is not None or ddamp is not None):
        y = pinv_h(d)  # differentiable in A, for second derivatives
    w = _sum([None if dA is None else dA.rmatvec(y), dx0])
    terms = [db, None if dA is None else -dA.matvec(x), None if w is None else -op.matvec(w)]
    if dA is not None and not (assume_full_rank and m < n):  # a wide full-rank A leaves r = 0
        terms.append(pinv_h(dA.rmatvec(b - op.matvec(x))))
    if ddamp is not None:
        # A traced damp at 0 (the only way ddamp reaches this rule): the damped
        # rule's -2 damp damp' (A^H A)^+ d, zero here as x depends on damp^2, but
        # not its derivative in damp: d^2 x / d damp^2 = -2 (A^H A)^+ d at 0.
        terms.append((-2 * damp * ddamp) * y)
    q = _sum(terms)
    dx = _sum([None if q is None else pinv(q), w])
    return xp.zeros_like(x) if dx is None else dx


def _hermitian_solve(backend: Any, solve: Any, matvec: Any, t: Array | None, x: Array,
                     xp: Any) -> Array:
    """``solve(t)`` for a Hermitian ``matvec`` (so ``solve`` is its own adjoint);
    zeros where ``t`` is None."""
    if t is None:
        return xp.zeros_like(x)
    return backend.linear_solve(solve, solve, matvec, t)


def _sum(terms: list[Array | None]) -> Array | None:
    """The sum of the terms that are not None (None if all are)."""
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    return total


def real_inner(a: Array, b: Array, xp: Any) -> Any:
    """``Re <a, b> = Re sum(conj(a) * b)`` over all entries."""
    if xp.isdtype(a.dtype, "complex floating") or xp.isdtype(b.dtype, "complex floating"):
        return xp.sum(xp.real(xp.conj(a) * b))
    return xp.sum(a * b)


def _conj(a: Array, xp: Any) -> Array:
    return xp.conj(a) if xp.isdtype(a.dtype, "complex floating") else a
