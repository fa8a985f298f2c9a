"""A linear constraint given by its own products, ``c(theta) = A theta - b``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LinearConstraint"]


class LinearConstraint:
    """The constraint ``c(theta) = A theta - b`` given by ``A``'s own products.

    Pass it wherever a constraint is expected (`lsqdiff.nullspace.project`,
    ``ConstrainedOptimizer``, ``lsqdiff.nullspace.optax.nullspace``). The
    projection then applies ``J = A`` with ``matvec`` and ``rmatvec`` instead
    of differentiating the constraint: no autograd graph is built or kept
    (under PyTorch, ``J v`` by reverse over reverse costs 1.5-2.7 backward
    passes where a gather may cost one pass over the parameters). And since
    ``J`` is the same at every ``theta``, ``ConstrainedOptimizer``'s
    ``"update"`` placement needs neither the old parameters nor the update:
    ``J u = c(theta_new) - c(theta_old)``, so two vectors of the parameters'
    size are never allocated.

    The products must really be a linear map and its adjoint: nothing checks
    ``<A v, u> = <v, A^T u>`` (a wrong adjoint makes LSMR converge to the
    wrong answer, or not at all).

    Parameters
    ----------
    matvec : callable
        ``v -> A v``: takes a container shaped as the parameters (a tensor, a
        list/tuple or dict of tensors, or a JAX pytree) and returns a 1-D
        array of length ``k`` in the parameters' dtype (the widest, when the
        leaves differ).
    rmatvec : callable
        ``u -> A^T u``: takes a 1-D array of length ``k`` (in that dtype) and
        returns a container shaped as the parameters, each leaf in its
        parameter's shape and dtype. PyTorch: a dict may leave out, and a
        list/tuple may hold None for, parameters ``A`` does not touch (their
        part is zero).
    offset : array, optional
        ``b``, a 1-D array of length ``k`` (default: zero).

    Notes
    -----
    Outputs are checked at every product (type, shape, dtype: no pass over
    the data) and a mismatch raises, naming ``matvec`` or ``rmatvec``.
    Calling the constraint, ``c(params)``, is ``matvec(params) - offset``:
    it has derivatives where ``matvec`` has them (the penalty and Lagrangian
    baselines need those).

    Examples
    --------
    Keep ``x + y + z = 3`` while following the direction ``(1, 0, 0)``, with
    ``A = [1, 1, 1]`` given by its products:

    >>> import torch
    >>> from lsqdiff.nullspace import LinearConstraint, project
    >>> total = LinearConstraint(lambda p: p.sum().reshape(1),
    ...                          lambda u: u.expand(3).clone(),
    ...                          offset=torch.tensor([3.0]))
    >>> d, info = project(torch.tensor([1.0, 0.0, 0.0]), total, torch.ones(3))
    >>> torch.round(d, decimals=4), info.converged
    (tensor([ 0.6667, -0.3333, -0.3333]), True)
    """

    def __init__(self, matvec: Callable[[Any], Any], rmatvec: Callable[[Any], Any],
                 offset: Any = None):
        for name, fn in (("matvec", matvec), ("rmatvec", rmatvec)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if offset is not None and getattr(offset, "ndim", None) != 1:
            raise ValueError(f"offset must be a 1-D array, got "
                             f"{type(offset).__name__} of shape {getattr(offset, 'shape', None)}")
        self.matvec, self.rmatvec, self.offset = matvec, rmatvec, offset

    def __call__(self, params: Any) -> Any:
        """``c(params) = A params - b``."""
        a_theta = self.matvec(params)
        return a_theta if self.offset is None else a_theta - self.offset

    def __repr__(self) -> str:
        return (f"LinearConstraint(matvec={getattr(self.matvec, '__name__', self.matvec)!s}, "
                f"rmatvec={getattr(self.rmatvec, '__name__', self.rmatvec)!s}, "
                f"offset={'None' if self.offset is None else 'given'})")
