"""PyTorch: any ``torch.optim`` optimizer under hard equality constraints.

`ConstrainedOptimizer` wraps a base optimizer and projects either the
gradients it receives (``placement="gradient"``) or the update it makes
(``placement="update"``) with `lsqdiff.nullspace.project`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._core import Linearization, ProjectionInfo, check_knobs, correction, solve
from ._linear import LinearConstraint
from ._torch import buffers, linear_residual, linearize

__all__ = ["ConstrainedOptimizer"]


class ConstrainedOptimizer:
    """Wrap a ``torch.optim.Optimizer`` so that its steps keep ``c(theta) = 0``.

    Each step solves one minimum-norm least-squares problem with the
    constraint Jacobian ``J = dc/dtheta`` (LSMR; ``J`` is applied by
    autograd on the constraint's graph and never formed, see
    `lsqdiff.nullspace.project`).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The base optimizer (SGD, Adam, ...). It keeps its own state and
        hyperparameters; pass it (not the wrapper) to LR schedulers.
    constraint : callable or lsqdiff.nullspace.LinearConstraint
        ``params -> c``, a 1-D tensor of length ``k``, computed from its
        argument: a dict ``name -> tensor`` when ``params`` is an ``nn.Module``
        (ready for ``torch.func.functional_call(module, params, inputs)``), a
        tuple of tensors otherwise. A `LinearConstraint` (``c = A theta - b``)
        brings ``A``'s own products (no autograd graph), and the ``"update"``
        placement then keeps ``c(theta_old)`` instead of ``theta_old`` and the
        update (two vectors of the parameters' size).
    params : nn.Module or sequence of tensors, optional
        The parameters ``theta`` the constraint depends on and the projection
        moves: a module's parameters with ``requires_grad`` (by name), or the
        given tensors. Default: every parameter of ``optimizer``, in the order
        of its ``param_groups``. All of them must be updated by ``optimizer``.
    placement : {"update", "gradient"}, optional
        ``"update"`` (default): the base optimizer steps, its update
        ``u = theta_new - theta_old`` is measured and replaced by
        ``u' = u - J^+ (J u + gamma c(theta_old))``, so that
        ``J u' = -gamma c`` to solver tolerance: the applied step lies in the
        null space of ``J`` plus the correction, whatever the optimizer.
        ``gamma`` is the fraction of the (linearised) residual removed per step.
        ``"gradient"``: the gradients ``h = p.grad`` are replaced by
        ``d = h - J^+ (J h - gamma c)`` before the base step. With SGD at
        learning rate ``eta`` the step is ``-eta d``: residual factor
        ``1 - eta * gamma`` per step (``gamma`` is scaled by the learning rate).
        With momentum, weight decay or Adam's per-coordinate rescaling the
        applied step is no longer in the null space; the constraint then drifts
        and is only pulled back by the correction.
    gamma : float, optional
        Correction gain ``>= 0``.
    normalize_gamma : bool, optional
        Use ``gamma / max(||c||, tiny)``: the correction moves ``c`` by
        ``gamma`` (``"update"``) or ``eta * gamma`` (``"gradient"``, SGD) per
        step in 2-norm, down to a band of that width around ``c = 0``.
    warmup : int, optional
        Number of initial steps taken by the base optimizer alone.
    damp, maxiter, atol, btol : optional
        LSMR settings per projection (see `lsqdiff.nullspace.project`).

    Attributes
    ----------
    last_info : ProjectionInfo or None
        Diagnostics of the last step (None during warm-up).
    history : list of ProjectionInfo or None
        ``last_info`` of every step so far.

    Notes
    -----
    ``"gradient"`` with a ``closure``: the closure is evaluated once (to get
    the gradients), then the base optimizer steps without it, so optimizers
    that re-evaluate the closure (L-BFGS) need ``"update"``. Parameters whose
    gradient is None take a zero direction and still receive a gradient
    (the projection may move them to keep the constraint). The constraint is
    evaluated once per step (once per LSMR iteration where the products fall
    back to forward mode), so it must be deterministic and free of side
    effects (no dropout; BatchNorm in eval mode). The step counter used by
    ``warmup`` is saved by ``state_dict`` under ``"nullspace_step"``.

    Examples
    --------
    Fit ``w`` to data while keeping ``sum(w) = 1`` exactly:

    >>> import torch
    >>> from lsqdiff.nullspace.torch import ConstrainedOptimizer
    >>> _ = torch.manual_seed(0)
    >>> X, y = torch.randn(50, 5), torch.randn(50)
    >>> w = torch.full((5,), 0.2, requires_grad=True)
    >>> opt = ConstrainedOptimizer(torch.optim.Adam([w], lr=0.05),
    ...                            lambda p: (p[0].sum() - 1.0).reshape(1))
    >>> for _ in range(100):
    ...     opt.zero_grad()
    ...     ((X @ w - y) ** 2).mean().backward()
    ...     _ = opt.step()
    >>> abs(float(w.detach().sum()) - 1.0) < 1e-5, opt.last_info.converged
    (True, True)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, constraint: Callable[[Any], Any],
                 params: Any = None, *, placement: str = "update", gamma: float = 1e-2,
                 normalize_gamma: bool = False, warmup: int = 0, damp: float = 0.0,
                 maxiter: int = 50, atol: float = 1e-6, btol: float = 1e-6):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not callable(constraint):
            raise TypeError(f"constraint must be callable, got {type(constraint).__name__}")
        check_knobs(gamma=gamma, damp=damp, maxiter=maxiter, atol=atol, btol=btol,
                    normalize_gamma=normalize_gamma, placement=placement, warmup=warmup)
        self.optimizer = optimizer
        self.constraint = constraint
        self._names, self._tensors = _parameters(params, optimizer)
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not all(id(p) in stepped for p in self._tensors):
            raise ValueError("params: every constrained tensor must be among the optimizer's "
                             "parameters")
        self.placement = placement
        self.warmup = int(warmup)
        self._settings = dict(gamma=float(gamma), normalize_gamma=normalize_gamma,
                              damp=float(damp), maxiter=int(maxiter), atol=float(atol),
                              btol=float(btol))
        self._step = 0
        self.last_info: ProjectionInfo | None = None
        self.history: list[ProjectionInfo | None] = []

    # The base optimizer's interface.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {**self.optimizer.state_dict(), "nullspace_step": self._step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._step = int(state_dict.pop("nullspace_step", 0))
        self.optimizer.load_state_dict(state_dict)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One base-optimizer step with the projection; returns what the base step returns."""
        if self._step < self.warmup:
            result, info = self.optimizer.step(closure), None
        elif self.placement == "gradient":
            result, info = self._gradient_step(closure)
        else:
            result, info = self._update_step(closure)
        self._step += 1
        self.last_info = info
        self.history.append(info)
        return result

    def _gradient_step(self, closure: Callable[[], Any] | None) -> tuple[Any, ProjectionInfo]:
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        h = tuple(torch.zeros_like(p) if p.grad is None else p.grad for p in self._tensors)
        d, info = solve(self._linearize(h, self._tensors), sign=1.0, **self._settings)
        for p, g in zip(self._tensors, d.values() if isinstance(d, dict) else d):
            p.grad = g  # a new tensor: the caller's gradient is not modified
        self.optimizer.step()
        return result, info

    def _update_step(self, closure: Callable[[], Any] | None) -> tuple[Any, ProjectionInfo]:
        if isinstance(self.constraint, LinearConstraint):
            return self._linear_update_step(closure)
        # theta_old and u = theta_new - theta_old, each in one flat buffer where the
        # tensors share a dtype, which the projection then uses without copying.
        tensors = self._tensors
        old, u = buffers(tensors), buffers(tensors)
        with torch.no_grad():
            for p, p0 in zip(tensors, old):
                p0.copy_(p)
        result = self.optimizer.step(closure)
        with torch.no_grad():
            for p, p0, du in zip(tensors, old, u):
                torch.sub(p, p0, out=du)
        # J is taken at theta_old, where the step started; the sign is that of an
        # additive update (theta + u), opposite to the descent direction of project().
        lin = self._linearize(u, old)
        x, info = correction(lin, sign=-1.0, **self._settings)
        self._subtract(x)  # theta_old + (u - x) = theta_new - x
        return result, info

    def _linear_update_step(self, closure: Callable[[], Any] | None
                            ) -> tuple[Any, ProjectionInfo]:
        # J = A whatever theta: J u = c(theta_new) - c(theta_old), so neither
        # theta_old nor u (two vectors of N) is kept; c(theta_old) is k floats.
        lin = self._linearize(None, self._tensors)
        result = self.optimizer.step(closure)
        x, info = correction(lin, sign=-1.0, jh=lambda: self._residual(lin.dtype) - lin.c,
                             **self._settings)
        self._subtract(x)
        return result, info

    def _residual(self, dtype: Any) -> Any:
        """``c(theta)`` of a linear constraint at the parameters now, in ``dtype``."""
        return linear_residual(self.constraint, self._tree(self._tensors)).to(dtype)

    def _subtract(self, x: Any) -> None:
        """``theta -= x``, in place, ``x`` flat."""
        with torch.no_grad():
            for p, dx in zip(self._tensors, torch.split(x, [p.numel() for p in self._tensors])):
                p.sub_(dx.view(p.shape).to(p.dtype))

    def _tree(self, tensors: Sequence[Any]) -> Any:
        """What the constraint takes: a dict by name for a module, else a tuple."""
        return tuple(tensors) if self._names is None else dict(zip(self._names, tensors))

    def _linearize(self, direction: Sequence[Any] | None, at: Sequence[Any]) -> Linearization:
        # direction None: a linear constraint, whose caller gives J h itself.
        return linearize(self.constraint, self._tree(at),
                         None if direction is None else self._tree(direction))

    def __repr__(self) -> str:
        return (f"ConstrainedOptimizer({self.optimizer.__class__.__name__}, "
                f"placement={self.placement!r}, {len(self._tensors)} tensors)")


def _parameters(params: Any, optimizer: torch.optim.Optimizer
                ) -> tuple[list[str] | None, tuple[Any, ...]]:
    """Names (for a module) and tensors of the constrained parameters."""
    if params is None:
        return None, tuple(p for group in optimizer.param_groups for p in group["params"])
    if isinstance(params, torch.nn.Module):
        named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("params: the module has no parameters that require grad")
        return [n for n, _ in named], tuple(p for _, p in named)
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module or a sequence of tensors; wrap a single "
                        "tensor in a list")
    tensors = tuple(params)
    if not tensors or not all(isinstance(p, torch.Tensor) for p in tensors):
        raise TypeError("params must be an nn.Module or a non-empty sequence of tensors")
    return None, tensors


