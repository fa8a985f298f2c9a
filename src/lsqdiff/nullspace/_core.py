"""The null-space projection, written once against the array API.

A framework module (``_jax``, ``_torch``) flattens the parameters and the
direction and linearises the constraint; everything after that is here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..operator import LinearOperator
from ..solvers import lsmr

Array = Any

#: The two places the projection can sit relative to the base optimizer.
PLACEMENTS = ("update", "gradient")


@dataclass(frozen=True)
class ProjectionInfo:
    """Diagnostics of one null-space projection.

    Under PyTorch the fields are Python scalars; under JAX they are 0-d JAX
    arrays, so the info can be returned from ``jax.jit`` and kept in optimizer
    state.

    Attributes
    ----------
    constraint_norm : float or array
        ``||c(theta)||`` at the parameters the projection linearised at.
    itn : int or array
        LSMR iterations of the solve with ``J``.
    istop : int or array
        LSMR's stop code (see `lsqdiff.STOP_MESSAGES`).
    converged : bool or array
        Whether LSMR met its tolerances (``istop`` in 0, 1, 2, 4, 5).
    gamma : float or array
        The correction gain actually used: ``gamma``, or
        ``gamma / max(||c||, tiny)`` with ``normalize_gamma=True``.
    residual_norm : float or array
        ``||J d - gamma c||`` (for the optimizers' ``"update"`` placement,
        ``||J u' + gamma c||``), from LSMR's own estimate of its residual: no
        extra product with ``J``. Zero up to the solver tolerance when ``J``
        has full row rank and LSMR converged.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.nullspace import project
    >>> theta = torch.tensor([1.0, 2.0])
    >>> d, info = project(torch.tensor([1.0, 0.0]), lambda p: p.sum()[None] - 2.0, theta)
    >>> info.converged, round(info.constraint_norm, 6), info.gamma
    (True, 1.0, 0.0)
    """

    constraint_norm: Any
    itn: Any
    istop: Any
    converged: Any
    gamma: Any
    residual_norm: Any


@dataclass(frozen=True)
class Linearization:
    """A constraint linearised at the parameters, with the direction flattened.

    ``n`` is the number of parameters; ``h`` and ``c`` are 1-D arrays in the
    solve dtype ``dtype`` (``h`` may be None where the caller gives ``J h`` to
    `correction` itself); ``matvec``
    (``v -> J v``) and ``rmatvec`` (``u -> J^T u``) take and return that dtype;
    ``rmatvec_pieces``, where given, returns ``J^T u`` leaf by leaf
    (`lsqdiff.LinearOperator`); ``unflatten`` maps a flat vector back to the
    direction's structure and dtypes; ``host`` turns a diagnostic into its
    reported form.
    """

    xp: Any
    dtype: Any
    n: int
    h: Array | None
    c: Array
    matvec: Callable[[Array], Array]
    rmatvec: Callable[[Array], Array]
    unflatten: Callable[[Array], Any]
    host: Callable[[Any], Any]
    rmatvec_pieces: Callable[[Array], list[Array]] | None = None


def solve(lin: Linearization, **settings: Any) -> tuple[Any, ProjectionInfo]:
    """``d = h - J^+ (J h - sign * gamma_eff * c)`` in the direction's structure;
    ``settings`` are those of `correction`."""
    x, info = correction(lin, **settings)
    return lin.unflatten(lin.h - x), info


def correction(lin: Linearization, *, gamma: float, sign: float, normalize_gamma: bool,
               damp: float, maxiter: int, atol: float, btol: float,
               jh: Callable[[], Array] | None = None
               ) -> tuple[Array, ProjectionInfo]:
    """``x = J^+ (J h - sign * gamma_eff * c)``, flat, so that ``d = h - x``: one
    LSMR solve with ``J``.

    ``sign = +1`` is the descent convention of `project`; ``sign = -1`` the
    additive-update convention of the optimizers' ``"update"`` placement.
    ``jh``: a function returning ``J h``, where the caller has it without
    ``h`` (a linear constraint's ``c(theta + h) - c(theta)``); a function, so
    that those ``k`` floats are freed before the solve (an argument would
    stay alive on the caller's stack until the call returns).
    """
    xp, c = lin.xp, lin.c
    cnorm = xp.linalg.vector_norm(c)
    if normalize_gamma:
        tiny = xp.asarray(xp.finfo(lin.dtype).tiny, dtype=lin.dtype)
        g = gamma / xp.maximum(cnorm, tiny)
    else:
        g = xp.asarray(gamma, dtype=lin.dtype)
    rhs = (lin.matvec(lin.h) if jh is None else jh()) - (sign * g) * c
    J = LinearOperator((c.shape[0], lin.n), lin.matvec, lin.rmatvec, dtype=lin.dtype,
                       rmatvec_pieces=lin.rmatvec_pieces)
    x, info = lsmr(J, rhs, damp=damp, atol=atol, btol=btol, maxiter=maxiter)
    # normr^2 = ||rhs - J x||^2 + damp^2 ||x||^2, and rhs - J x = sign*g*c - J d.
    residual = info.normr
    if damp > 0:
        residual = xp.sqrt(xp.clip(xp.asarray(info.normr**2 - damp**2 * info.normx**2), min=0.0))
    diag = ProjectionInfo(constraint_norm=lin.host(cnorm), itn=info.itn, istop=info.istop,
                          converged=info.converged, gamma=lin.host(g),
                          residual_norm=lin.host(residual))
    return x, diag


def check_knobs(*, gamma: Any, damp: Any, maxiter: Any, atol: Any, btol: Any,
                normalize_gamma: Any = False, placement: str | None = None,
                warmup: Any = 0) -> None:
    """Reject knob values that make no sense, naming the argument."""
    for name, value in (("gamma", gamma), ("damp", damp), ("atol", atol), ("btol", btol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not value >= 0 or value == float("inf"):  # also catches NaN
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    for name, value, low in (("maxiter", maxiter, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if not isinstance(normalize_gamma, bool):
        raise TypeError(f"normalize_gamma must be True or False, got {normalize_gamma!r}")
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
