"""The gradient of a least-squares solve, written once for every backend.

Given the solution ``x`` of ``min ||A d - (b - A x0)||^2 + damp^2 ||d||^2``
(``x = x0 + d``) and the incoming gradient ``x_bar``, :func:`pullback` returns
the gradients of ``b``, ``x0``, ``damp`` and of ``A`` as a short sum of scaled
outer products ``sum_k s_k U_k V_k^H``. Each costs a few more minimum-norm LSMR
solves, never the iterations of the forward solve (DESIGN.md section 2):

* damped (``damp > 0``): one solve on the wide operator ``K = [A^H, damp I]``,
  whose minimum-norm solution of ``K c = x_bar`` is ``c = (A g, damp g)`` with
  ``g = (A^H A + damp^2 I)^-1 x_bar``;
* undamped (pseudo-inverse, any rank): ``Abar = -b_bar x^H + r g^H + y w^H``
  with ``b_bar = A^+H x_bar``, ``g = A^+ b_bar``, ``y = A^+H (x - x0)``,
  ``w = x_bar - A^H b_bar``: one solve with ``A^H`` for ``b_bar``, and ``g``
  and ``y`` from the duals (`lsqdiff._dual`) of that solve and of the forward
  solve (carried for a wide or square ``A`` only: a tall one needs ``y`` only
  where it is rank-deficient, and there its residual mostly makes the dual
  fail its check), which are exact at any rank once their part along the solve's
  residual is removed (`dual_pinv`); a term whose residual the solve found
  negligible is dropped. Only where a solve stopped on neither of its
  convergence tests (iteration or condition limit) does a dual give nothing,
  and ``g`` or ``y`` takes a solve of its own;
* undamped with ``assume_full_rank``: a tall ``A`` has ``w = 0`` and a wide
  one ``r = 0`` whatever the solves' stop codes.

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
from ._info import stopped_by
from ._terms import Terms, conj, real_inner
from .operator import Operator

Array = Any

#: Stop codes after which a solve's residual is negligible (its test 1 held: the
#: system is consistent to the tolerances), and after which it is a least-squares
#: residual (test 2 held, or ``op^H rhs = 0``): see `dual_pinv`.
CONSISTENT = (1, 4)
LEAST_SQUARES = (0, 2, 5)


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
    (`lsqdiff._driver.lsmr_on`). ``y``: what `forward_dual` took from the
    forward solve (undamped), else None.
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
    y_fwd, y_ok, r_zero = _from_forward(y, assume_full_rank and m < n)
    block = y is not None and _is_false(y_ok) and not backend.on_cpu(x_bar)
    if block:
        # The forward's dual failed its check, so y will likely take a solve: off a
        # CPU, one block solve of both right-hand sides costs less than two solves
        # (on a CPU it costs more). A tall A carries no dual: its y is rarely needed.
        k = 1 if x_bar.ndim == 1 else x_bar.shape[1]
        pair = xp.concat([xp.reshape(x_bar, (n, k)), xp.reshape(d, (n, k))], axis=1)
        Y, Z, stops = lsmr_on(AH, pair, dual=True, stop=True, **settings)
        shape = (m,) + tuple(x_bar.shape[1:])
        b_bar, z = xp.reshape(Y[:, :k], shape), xp.reshape(Z[:, :k], x_bar.shape)
        y_fwd, y_ok = xp.reshape(Y[:, k:], shape), True
        stop = stops if stops[0] is None else tuple(
            xp.reshape(a[:k], tuple(x_bar.shape[1:])) for a in stops)
    elif _all_true(r_zero, xp, backend):  # no r g^H term: neither g nor the dual is needed
        b_bar, stop = lsmr_on(AH, x_bar, stop=True, **settings)
        z = None
    else:
        b_bar, z, stop = lsmr_on(AH, x_bar, dual=True, stop=True, **settings)
    if assume_full_rank and m >= n:  # A is injective: w = 0, and the dual is g
        w, g, g_ok, w_zero = None, z, True, True
    elif z is None:
        w, g, g_ok = x_bar - op.rmatvec(b_bar), None, True
        w_zero = stopped_by(stop[0], CONSISTENT)
    else:
        w = x_bar - op.rmatvec(b_bar)
        g, g_ok, w_zero = dual_pinv(z, w, stop, xp, target=b_bar, adjoint=op.matvec,
                                    atol=atol, btol=btol)

    terms: list[tuple[float, Array, Array]] = [(-1.0, b_bar, x)]
    x0_bar = None if x0 is None else xp.zeros_like(x0)
    if not _all_true(w_zero, xp, backend):
        y = _complete(y_ok, y_fwd, lambda s, s0: lsmr_on(AH, s, x0=s0, **settings), d, xp,
                      backend)
        w = _zero_where(w_zero, w, xp)
        terms.append((1.0, y, w))
        x0_bar = None if x0 is None else w
    if not _all_true(r_zero, xp, backend):
        g = _complete(g_ok, g, lambda s, s0: lsmr_on(op, s, x0=s0, **settings), b_bar, xp,
                      backend)
        terms.append((1.0, _zero_where(r_zero, b - op.matvec(x), xp), g))
    # At damp = 0 the solution does not move with damp to first order.
    damp_bar = xp.zeros((), dtype=real_dtype(xp, dtype), device=aac.device(x_bar))
    return Cotangents(b_bar, x0_bar, damp_bar, Terms(tuple(terms)))


def forward_dual(op: Operator, b: Array, x: Array, x0: Array | None, z: Array, stop: Any, *,
                 xp: Any, atol: float, btol: float, full_row_rank: bool) -> tuple[Any, Any, Any]:
    """What the gradient takes from an undamped forward solve that carried its dual
    ``z`` (``A^H z = x - x0``): ``(y, y_ok, r_zero)`` with ``y = A^+H (x - x0)``
    where ``y_ok``, and ``r_zero`` where the residual ``b - A x`` is negligible
    (`dual_pinv`, with the forward's ``stop = (istop, norma)`` and the gradient's
    tolerances; per column for a 2-D ``b``). ``full_row_rank``
    (``assume_full_rank`` on a wide ``A``): ``r = 0`` and ``y = z``."""
    if full_row_rank:
        return z, True, True
    return dual_pinv(z, b - op.matvec(x), stop, xp, target=x if x0 is None else x - x0,
                     adjoint=op.rmatvec, atol=atol, btol=btol)


def _from_forward(carry: Any, full_row_rank: bool) -> tuple[Any, Any, Any]:
    """``(y, y_ok, r_zero)`` from `forward_dual`'s result (None: nothing carried).
    A wide ``A`` of full rank leaves no residual and its dual is ``y``: decided
    here, where the flags are still Python bools (under JAX the carried ones are
    traced)."""
    if full_row_rank:
        return (None, False, True) if carry is None else (carry[0], True, True)
    return (None, False, False) if carry is None else carry


def dual_pinv(z: Array, res: Array, stop: Any, xp: Any, *, target: Array, adjoint: Any,
              atol: float, btol: float) -> tuple[Any, Any, Any]:
    """The minimum-norm solution ``p = op^+H target`` of ``op^H p = target``, from
    the dual of a solve of ``op s = rhs`` (``target = s``): ``(p, ok, negligible)``
    per column. ``adjoint`` applies ``op^H``; ``stop = (istop, norma, tilt)``
    (`lsqdiff._driver.lsmr_on`).

    The dual ``z`` satisfies ``op^H z = s`` and lies in ``span{rhs, range(op)}``,
    so it is ``p`` plus a part in ``null(op^H)`` along the exact residual
    ``res* = rhs - op s*``. Where the solve stopped on its test 1 (``istop`` in
    `CONSISTENT`), ``res*`` is negligible: ``p = z``, and the caller drops the
    residual's term. Where it stopped on test 2 (`LEAST_SQUARES`), the computed
    ``res = rhs - op s`` has the direction of ``res*`` to within about
    ``atol cond(op)``, and ``z`` minus its part along ``res`` is ``p`` up to an
    error that this direction's error can amplify (by the size of that part
    against ``p``, which grows with the iterations): it is taken only if it
    passes the test 1 that a solve of ``op^H p = target`` would have to pass,
    ``||target - op^H p|| <= btol ||target|| + atol norma ||p||`` (one product).
    Elsewhere (iteration or condition limit, NaN), or where that check fails,
    ``ok`` is false and ``p`` must come from a solve, for which the returned
    ``p`` is a warm start: zero (None for one host column), or the projected
    dual where its part left in ``null(op^H)`` is small. That part is about
    ``(tilt + c tilt^2) ||p||`` with ``c`` the removed part's size against
    ``||p||`` and ``tilt`` the residual direction's error (`lsqdiff._driver.residual_tilt`),
    so where ``c tilt <= 1`` it is of the order of the error that the computed
    residual already puts into the gradient's ``r g^H`` term, and the warm
    start saves most of the solve (at ``atol = btol = 1e-8``, 75-85%).
    """
    istop, norma, tilt = stop
    if istop is None:  # z is a minimum-norm solve of its own (`lsqdiff._driver.lsmr_on`)
        return z, True, False
    negligible = stopped_by(istop, CONSISTENT)
    least_squares = stopped_by(istop, LEAST_SQUARES)
    if isinstance(negligible, bool):
        if negligible:
            return z, True, True
        if least_squares:
            p, warm = _project_out(z, res, tilt, xp)
            if bool(_passes(p, target, adjoint, norma, atol, btol, xp)):
                return p, True, False
            return (p if bool(warm) else None), False, False
        return None, False, False
    p, warm = _project_out(z, res, tilt, xp)
    passes = _passes(p, target, adjoint, norma, atol, btol, xp)
    ok = xp.logical_and(least_squares, passes)
    start = _zero_where(xp.logical_not(xp.logical_and(least_squares, xp.logical_or(passes, warm))),
                        p, xp)
    return xp.where(negligible, z, start), xp.logical_or(negligible, ok), negligible


def _passes(p: Array, target: Array, adjoint: Any, norma: Any, atol: float, btol: float,
            xp: Any) -> Any:
    """Per column: whether ``p`` passes LSMR's test 1 for ``op^H p = target``, with
    the tolerances raised to what the explicit residual can be computed to
    (``100 eps``: LSMR's own test 4 stops there too)."""
    norm = lambda a: xp.linalg.vector_norm(a, axis=0)  # noqa: E731
    floor = 100 * float(xp.finfo(p.dtype).eps)
    return (norm(target - adjoint(p))
            <= max(btol, floor) * norm(target) + max(atol, floor) * norma * norm(p))


def _project_out(z: Array, res: Array, tilt: Any, xp: Any) -> tuple[Array, Any]:
    """``z`` minus its part along ``res``, column by column (scaled first, so that
    no square of a tiny or huge residual is formed), and whether it may serve as
    a warm start: where the removed part, times ``tilt``, is at most the rest
    (`dual_pinv`)."""
    norm = xp.linalg.vector_norm(res, axis=0)
    unit = res / xp.astype(xp.where(norm > 0, norm, xp.ones_like(norm)), res.dtype)
    along = xp.sum(conj(unit, xp) * z, axis=0)
    p = z - unit * along
    return p, xp.abs(along) * tilt <= xp.linalg.vector_norm(p, axis=0)


def _all_true(flag: Any, xp: Any, backend: Any) -> bool:
    """Whether ``flag`` holds in every column, where that is known without tracing."""
    if isinstance(flag, bool):
        return flag
    return not backend.traced and bool(xp.all(flag))


def _is_false(flag: Any) -> bool:
    return isinstance(flag, bool) and not flag


def _or(a: Any, b: Any, xp: Any) -> Any:
    """``a or b`` for flags that are Python bools or boolean arrays."""
    if a is True or b is True:
        return True
    if isinstance(a, bool) and isinstance(b, bool):
        return False
    return b if a is False else a if b is False else xp.logical_or(a, b)


def _where(flag: Any, a: Array, b: Array, xp: Any) -> Array:
    """``a`` where ``flag`` holds, else ``b``."""
    if isinstance(flag, bool):
        return a if flag else b
    return xp.where(flag, a, b)


def _zero_where(flag: Any, a: Array, xp: Any) -> Array:
    """``a`` with the columns where ``flag`` holds set to zero."""
    if isinstance(flag, bool):
        return xp.zeros_like(a) if flag else a
    return xp.where(flag, xp.zeros_like(a), a)


def _complete(have: Any, value: Any, solve: Any, rhs: Array, xp: Any, backend: Any) -> Array:
    """``value`` where ``have`` holds, ``solve(rhs, start)`` elsewhere, warm-started
    from ``value`` there (zeros, or None for none: `dual_pinv`). The solve gets a
    zero right-hand side and start in the columns that have their value, and
    LSMR stops on a zero right-hand side before its first iteration. A traced backend
    skips the solve where every column has its value (`Backend.select`): the
    rules that call this with traced flags are evaluated (the JAX primitives'
    values), never transposed, where a branch on values could not be."""
    if isinstance(have, bool):
        return value if have else solve(rhs, value)

    def fill() -> Array:
        return xp.where(have, value,
                        solve(_zero_where(have, rhs, xp), _zero_where(have, value, xp)))

    if backend.traced:
        return backend.select(xp.all(have), lambda: value, fill)
    return fill()


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
      ``x' = w + A^+ (b' - A' x - A w + A^+H (A'^H r))``: ``y`` from the forward
      solve's dual (`forward_dual`; a solve with ``A^H`` only where that gives
      nothing), a solve with ``A^H`` for the residual term (none where the
      forward found ``r`` negligible, or with ``assume_full_rank`` on a wide
      ``A``), and one with ``A``; with ``assume_full_rank`` a tall ``A``
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

    def pinv_h(rhs: Array, hint: Any = None) -> Array:  # A^+H rhs
        return backend.min_norm_solve(op, rhs, True, solve, hint)

    def pinv_pair_adjoint(A: Operator, c: Array) -> tuple[Array, Array]:
        # (A^+H c, A^+ A^+H c) from one solve with A^H: the second is the dual of
        # the first where `dual_pinv` accepts it (as g in `pullback`), else a solve.
        AH_ = Operator((n, m), A.rmatvec, A.matvec)
        p, z, stop = lsmr_on(AH_, c, dual=True, stop=True, **settings)
        g, ok, _ = dual_pinv(z, c - A.rmatvec(p), stop, xp, target=p, adjoint=A.matvec,
                             atol=atol, btol=btol)
        return p, _complete(ok, g, lambda s, s0: lsmr_on(A, s, x0=s0, **settings), p, xp,
                            backend)

    def tangent_adjoint(A: Operator, c: Array, d_: Array, hint_: Any, r_zero_: Any,
                        with_g: bool, with_y: bool
                        ) -> tuple[Array, Array | None, Array | None, Array]:
        # The tangent rule transposed: (A^+H c, A^+ A^+H c, A^+H d, (I - A^+ A) c)
        # from one solve with A^H. g is its dual where `dual_pinv` accepts it, zero
        # where the forward's residual is negligible (``r_zero_``: its term r g^H
        # is dropped), else a solve; y = A^+H d is solved for only in the columns
        # where the projection w of c onto null(A) is not negligible (its term
        # y w^H vanishes elsewhere) and the forward's dual gave nothing.
        AH_ = Operator((n, m), A.rmatvec, A.matvec)
        g = None
        if with_g:
            p, z, stop = lsmr_on(AH_, c, dual=True, stop=True, **settings)
            w_ = c - A.rmatvec(p)
            g, g_ok, w_zero = dual_pinv(z, w_, stop, xp, target=p, adjoint=A.matvec,
                                        atol=atol, btol=btol)
            # g where its dual passed, zero where r g^H is dropped, else a warm start.
            known = xp.zeros_like(c) if g is None else _where(g_ok, g, _zero_where(r_zero_, g, xp),
                                                                xp)
            g = _complete(_or(g_ok, r_zero_, xp), known,
                          lambda s_, s0: lsmr_on(A, s_, x0=s0, **settings), p, xp, backend)
        else:
            p, stop = lsmr_on(AH_, c, stop=True, **settings)
            w_ = c - A.rmatvec(p)
            w_zero = stopped_by(stop[0], CONSISTENT)
        y_ = None
        if with_y:
            value, ok = (None, False) if hint_ is None else hint_
            zeros = xp.zeros((m,) + tuple(d_.shape[1:]), dtype=d_.dtype, device=aac.device(d_))
            known = zeros if value is None else _where(ok, value, _zero_where(w_zero, value, xp),
                                                       xp)
            y_ = _complete(_or(ok, w_zero, xp), known,
                           lambda s_, s0: lsmr_on(AH_, s_, x0=s0, **settings), d_, xp, backend)
        return p, g, y_, _zero_where(w_zero, w_, xp)

    # y from the forward solve's dual (`forward_dual`) where it passed its check,
    # as the value of the solve for y (its hint), which a traced backend
    # differentiates by that solve's own rule (a y read off the forward loop would
    # drop out of second derivatives); that solve runs only where the check failed.
    y_fwd, y_ok, r_zero = _from_forward(y, assume_full_rank and m < n)
    hint = None
    if y_fwd is not None and not _is_false(y_ok):
        hint = (y_fwd, y_ok if y_ok is True else xp.broadcast_to(y_ok, tuple(d.shape[1:])))
    if dA is not None and ddamp is None:
        # x' = A^+ (q0 - A w + A^+H s) + w with w = A'^H y + x0': JAX transposes it
        # by `tangent_adjoint`, which needs y only where the cotangent says so.
        q0 = _sum([db, -dA.matvec(x)])
        s = None if r_zero is True else dA.rmatvec(b - op.matvec(x))
        return backend.min_norm_tangent(op, d, hint, q0, s, dA.rmatvec, dx0, solve,
                                        pinv_pair_adjoint, tangent_adjoint,
                                        None if s is None else r_zero)
    y = None if dA is None and ddamp is None else pinv_h(d, hint)
    w = _sum([None if dA is None else dA.rmatvec(y), dx0])
    terms = [db, None if dA is None else -dA.matvec(x), None if w is None else -op.matvec(w)]
    if ddamp is not None:
        # A traced damp at 0 (the only way ddamp reaches this rule): the damped
        # rule's -2 damp damp' (A^H A)^+ d, zero here as x depends on damp^2, but
        # not its derivative in damp: d^2 x / d damp^2 = -2 (A^H A)^+ d at 0.
        terms.append((-2 * damp * ddamp) * y)
    q = _sum(terms)
    # The residual term A^+H (A'^H r), none where r = 0 is known: with it,
    # A^+ (q + A^+H s) is one pair, whose transpose takes a single solve.
    s = None if dA is None or r_zero is True else dA.rmatvec(b - op.matvec(x))
    if s is None:
        dx = _sum([None if q is None else pinv(q), w])
    else:
        q = xp.zeros((m,) + tuple(s.shape[1:]), dtype=s.dtype, device=aac.device(s)) \
            if q is None else q
        dx = _sum([backend.min_norm_pair(op, q, s, solve, pinv_pair_adjoint), w])
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
