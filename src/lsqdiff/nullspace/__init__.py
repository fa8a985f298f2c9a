"""The null-space method: training under hard equality constraints ``c(theta) = 0``.

`project` turns a direction ``h`` (a gradient, or an optimizer's update) into

    d = h - J^+ (J h - gamma c(theta)),      J = dc/dtheta,

with one minimum-norm LSMR solve on ``J``, which is never formed: its products
are the framework's JVP and VJP of the constraint. Stepping ``theta - eta d``
keeps ``c`` fixed to first order and removes a fraction ``eta * gamma`` of the
residual. The optimizer wrappers live in `lsqdiff.nullspace.torch`
(``ConstrainedOptimizer``) and `lsqdiff.nullspace.optax` (``nullspace``).

This module imports no framework; the PyTorch or JAX part loads when tensors
of that framework arrive.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._core import PLACEMENTS, ProjectionInfo, check_knobs, solve
from ._linear import LinearConstraint

__all__ = ["PLACEMENTS", "LinearConstraint", "ProjectionInfo", "project"]


def project(direction: Any, constraint: Callable[[Any], Any], params: Any, *,
            gamma: float = 0.0, normalize_gamma: bool = False, damp: float = 0.0,
            maxiter: int = 50, atol: float = 1e-6, btol: float = 1e-6
            ) -> tuple[Any, ProjectionInfo]:
    """Project a direction onto the constraint's null space, plus a correction.

    Returns ``d = h - J^+ (J h - gamma_eff c)`` with ``h = direction``,
    ``c = constraint(params)`` and ``J = dc/dparams``, so that
    ``J d = gamma_eff c`` (to solver tolerance, for ``J`` of full row rank).
    With ``gamma = 0``, ``d`` is the orthogonal projection of ``h`` onto the
    null space of ``J``. Descend with ``params - eta * d``: the constraint then
    stays fixed to first order and its residual shrinks by the factor
    ``1 - eta * gamma_eff`` per step.

    ``J^+`` is applied by one `lsqdiff.lsmr` solve on a `lsqdiff.LinearOperator`
    of shape ``(k, N)`` whose products are the JVP (``J v``) and VJP
    (``J^T u``) of the constraint at ``params`` (JAX: ``jax.linearize`` once
    and its transpose; PyTorch: the constraint's graph built once, ``J^T u``
    a backward pass through it and ``J v`` a second one through that, or
    ``torch.func.jvp`` where the graph has no second derivative). ``J`` is
    never formed.

    Parameters
    ----------
    direction : pytree or tensor(s)
        ``h``, with the structure and leaf shapes of ``params``. Never modified.
    constraint : callable or LinearConstraint
        ``params -> c``, a 1-D array of length ``k`` of the same framework,
        computed from its argument (not from tensors it closes over: those
        get no derivative). A `LinearConstraint` (``c = A theta - b``) brings
        ``A``'s own products, which then replace the framework's derivatives.
    params : pytree or tensor(s)
        JAX: any pytree of arrays. PyTorch: a tensor, a list or tuple of
        tensors, or a dict of tensors (``constraint`` receives the same kind
        of container). Leaves may have different floating dtypes: the solve
        runs in the widest, and each leaf of ``d`` comes back in its
        direction leaf's dtype.
    gamma : float, optional
        Gain ``gamma >= 0`` of the correction towards ``c = 0``.
    normalize_gamma : bool, optional
        Use ``gamma_eff = gamma / max(||c||, tiny)`` instead of ``gamma``
        (``tiny`` is the smallest normal number of the solve dtype), so that
        the correction moves ``c`` by ``gamma`` per unit step in 2-norm,
        whatever the size of the violation. Then ``c`` does not converge to 0
        but to a band of width about ``eta * gamma`` around it.
    damp : float, optional
        LSMR damping ``lambda >= 0``: regularises a rank-deficient ``J``
        (``J^+`` becomes ``(J^T J + lambda^2 I)^{-1} J^T``).
    maxiter : int, optional
        LSMR iteration cap per projection (each iteration costs one JVP and
        one VJP).
    atol, btol : float, optional
        LSMR tolerances (see `lsqdiff.lsmr`).

    Returns
    -------
    d : pytree or tensor(s)
        Same structure, shapes and dtypes as ``direction``. PyTorch: new
        tensors without autograd history.
    info : ProjectionInfo
        ``constraint_norm``, ``itn``, ``istop``, ``converged``, ``gamma``
        (effective) and ``residual_norm``.

    Notes
    -----
    Works under ``jax.jit`` (the whole call; fields of ``info`` are then JAX
    arrays). Outside ``jit`` each JAX call traces and compiles its LSMR loop
    anew, so call it from a jitted step. PyTorch needs, for every operation
    of the constraint, a second derivative or else a forward-mode one
    (``torch.func.jvp``, which then runs ``scaled_dot_product_attention`` with
    its math kernel, as the fused kernels have no forward-mode derivative).

    Examples
    --------
    Keep ``x + y + z = 3`` while following the direction ``(1, 0, 0)``:

    >>> import torch
    >>> from lsqdiff.nullspace import project
    >>> theta = torch.tensor([1.0, 1.0, 1.0])
    >>> constraint = lambda p: (p.sum() - 3.0).reshape(1)
    >>> d, info = project(torch.tensor([1.0, 0.0, 0.0]), constraint, theta)
    >>> torch.round(d, decimals=4)
    tensor([ 0.6667, -0.3333, -0.3333])
    >>> info.converged, info.constraint_norm
    (True, 0.0)

    The same with JAX, on a pytree, with a correction for a violated constraint:

    >>> import jax.numpy as jnp
    >>> params = {"a": jnp.array([1.0, 1.0]), "b": jnp.array(2.0)}
    >>> c = lambda p: (p["a"].sum() + p["b"] - 3.0).reshape(1)
    >>> h = {"a": jnp.zeros(2), "b": jnp.array(0.0)}
    >>> d, info = project(h, c, params, gamma=0.5)
    >>> [round(float(v), 4) for v in (*d["a"], d["b"])]
    [0.1667, 0.1667, 0.1667]
    """
    check_knobs(gamma=gamma, damp=damp, maxiter=maxiter, atol=atol, btol=btol,
                normalize_gamma=normalize_gamma)
    lin = framework(params).linearize(constraint, params, direction)
    return solve(lin, gamma=float(gamma), sign=1.0, normalize_gamma=normalize_gamma,
                 damp=float(damp), maxiter=int(maxiter), atol=float(atol), btol=float(btol))


def framework(params: Any) -> Any:
    """The framework part (``_torch`` or ``_jax``) for ``params``, imported lazily."""
    torch = sys.modules.get("torch")
    if torch is not None and _is_torch(params, torch):
        from . import _torch
        return _torch
    jax = sys.modules.get("jax")
    if jax is not None:
        leaves = jax.tree_util.tree_leaves(params)
        if leaves and all(isinstance(leaf, jax.Array) for leaf in leaves):
            from . import _jax
            return _jax
    raise TypeError(
        "params must be a pytree of JAX arrays, or a torch tensor, a list/tuple of "
        f"tensors or a dict of tensors, got {_describe(params)}; NumPy arrays have no "
        "autodiff to linearise the constraint with")


def _is_torch(params: Any, torch: Any) -> bool:
    if isinstance(params, torch.Tensor):
        return True
    if isinstance(params, Mapping):
        values = list(params.values())
    elif isinstance(params, Sequence) and not isinstance(params, str):
        values = list(params)
    else:
        return False
    return bool(values) and isinstance(values[0], torch.Tensor)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        inner = {type(v).__name__ for v in value.values()}
        return f"{type(value).__name__} of {', '.join(sorted(inner)) or 'nothing'}"
    if isinstance(value, (list, tuple)):
        inner = {type(v).__name__ for v in value}
        return f"{type(value).__name__} of {', '.join(sorted(inner)) or 'nothing'}"
    return type(value).__name__


def __getattr__(name: str) -> Any:
    # `lsqdiff.nullspace.torch` / `.optax` import their framework: load on first use.
    if name in ("torch", "optax"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
