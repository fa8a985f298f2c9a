"""JAX: the null-space method as an optax gradient transformation.

``nullspace(constraint)`` goes last in a chain and projects the chain's
update (``placement="update"``), or first and projects the raw gradients
(``placement="gradient"``), with `lsqdiff.nullspace.project`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _jax
from ._core import ProjectionInfo, check_knobs, solve

__all__ = ["NullspaceState", "nullspace"]


class NullspaceState(NamedTuple):
    """State of `nullspace`: steps taken and the last projection's diagnostics.

    ``info`` holds zeros until the first projection and keeps its value
    through warm-up steps.
    """

    count: Any
    info: ProjectionInfo


def nullspace(constraint: Callable[[Any], Any], *, placement: str = "update",
              gamma: float = 1e-2, normalize_gamma: bool = False, warmup: int = 0,
              damp: float = 0.0, maxiter: int = 50, atol: float = 1e-6, btol: float = 1e-6
              ) -> optax.GradientTransformation:
    """An optax transformation that keeps ``constraint(params) = 0``.

    Each update solves one minimum-norm least-squares problem with the
    constraint Jacobian ``J = dc/dparams`` (LSMR; ``J`` is applied through
    ``jax.linearize`` and its transpose, never formed). ``update`` needs
    ``params``; everything is traceable, so the chain's update can be jitted.

    Parameters
    ----------
    constraint : callable or lsqdiff.nullspace.LinearConstraint
        ``params -> c``, a 1-D JAX array of length ``k``; a `LinearConstraint`
        brings ``A``'s own products in place of ``jax.linearize``.
    placement : {"update", "gradient"}, optional
        ``"update"`` (default): use as the last element,
        ``optax.chain(optax.adam(1e-3), nullspace(c))``. The incoming updates
        ``u`` (added to params by ``optax.apply_updates``) become
        ``u' = u - J^+ (J u + gamma c(params))``, so ``J u' = -gamma c`` to
        solver tolerance: the applied step lies in the null space of ``J`` plus
        the correction, and ``gamma`` is the fraction of the (linearised)
        residual removed per step.
        ``"gradient"``: use as the first element,
        ``optax.chain(nullspace(c, placement="gradient"), optax.adam(1e-3))``.
        The incoming gradients ``h`` become ``d = h - J^+ (J h - gamma c)``
        (descent convention). With SGD at learning rate ``eta`` the residual
        shrinks by ``1 - eta * gamma`` per step; with Adam's per-coordinate
        rescaling the applied step is not exactly in the null space.
    gamma : float, optional
        Correction gain ``>= 0``.
    normalize_gamma : bool, optional
        Use ``gamma / max(||c||, tiny)``: the correction moves ``c`` by
        ``gamma`` (``"update"``) or ``eta * gamma`` (``"gradient"``, SGD) per
        step in 2-norm, down to a band of that width around ``c = 0``.
    warmup : int, optional
        Number of initial updates passed through unchanged (a ``lax.cond``:
        no solve runs then).
    damp, maxiter, atol, btol : optional
        LSMR settings per projection (see `lsqdiff.nullspace.project`).

    Returns
    -------
    optax.GradientTransformation
        With state `NullspaceState` (``count``, ``info``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> from lsqdiff.nullspace.optax import nullspace
    >>> X = jax.random.normal(jax.random.key(0), (50, 5))
    >>> y = X @ jnp.arange(5.0)
    >>> loss = lambda w: jnp.mean((X @ w - y) ** 2)
    >>> opt = optax.chain(optax.adam(0.05), nullspace(lambda w: (w.sum() - 1.0)[None]))
    >>> w = jnp.full(5, 0.2)
    >>> state = opt.init(w)
    >>> @jax.jit
    ... def step(w, state):
    ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
    ...     return optax.apply_updates(w, updates), state
    >>> for _ in range(100):
    ...     w, state = step(w, state)
    >>> bool(abs(w.sum() - 1.0) < 1e-4), bool(state[1].info.converged)
    (True, True)
    """
    check_knobs(gamma=gamma, damp=damp, maxiter=maxiter, atol=atol, btol=btol,
                normalize_gamma=normalize_gamma, placement=placement, warmup=warmup)
    if not callable(constraint):
        raise TypeError(f"constraint must be callable, got {type(constraint).__name__}")
    # project() descends along d; an additive update u (theta + u) has the other sign.
    settings = dict(gamma=float(gamma), sign=1.0 if placement == "gradient" else -1.0,
                    normalize_gamma=normalize_gamma, damp=float(damp), maxiter=int(maxiter),
                    atol=float(atol), btol=float(btol))

    def projected(updates: Any, params: Any) -> tuple[Any, ProjectionInfo]:
        return solve(_jax.linearize(constraint, params, updates), **settings)

    def init_fn(params: Any) -> NullspaceState:
        # Zeros of the dtypes a projection returns, so the state keeps one type.
        shapes = jax.eval_shape(lambda p: projected(p, p)[1], params)
        info = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return NullspaceState(count=jnp.zeros((), jnp.int32), info=info)

    def update_fn(updates: Any, state: NullspaceState, params: Any = None
                  ) -> tuple[Any, NullspaceState]:
        if params is None:
            raise ValueError("nullspace: update(updates, state, params) needs params, the "
                             "point where the constraint is linearised")

        def project_branch(_: Any) -> tuple[Any, ProjectionInfo]:
            new, info = projected(updates, params)
            return new, jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), info, state.info)

        if warmup == 0:
            new_updates, info = project_branch(None)
        else:
            new_updates, info = jax.lax.cond(state.count < warmup, lambda _: (updates, state.info),
                                             project_branch, None)
        count = optax.safe_int32_increment(state.count)
        return new_updates, NullspaceState(count=count, info=info)

    return optax.GradientTransformation(init_fn, update_fn)
