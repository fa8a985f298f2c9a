"""Noise-conditional score networks for `lsqdiff.examples.score`, and the
asymmetry of their input Jacobian: the null-space constraint, the penalty and
the measure.

Every network here returns the *scaled* score ``sigma * s(x, sigma)`` (the
target of denoising score matching is then ``-eps``, of size one at every
noise level); ``J`` below is its Jacobian in ``x``, taken row by row. A true
score is a gradient field, so ``J`` is symmetric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: The four ways `lsqdiff.examples.score` trains a score model.
METHODS = ("unconstrained", "penalty", "nullspace", "energy")


def noise_levels(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, geometric.

    Examples
    --------
    >>> from lsqdiff.examples._score_model import noise_levels
    >>> noise_levels(1.0, 0.01, 3)
    tensor([1.0000, 0.1000, 0.0100])
    """
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max!r}, {sigma_min!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n!r}")
    return torch.logspace(torch.log10(torch.tensor(sigma_max)),
                          torch.log10(torch.tensor(sigma_min)), n)


def _mlp(d_in: int, width: int, depth: int, d_out: int) -> torch.nn.Sequential:
    # SiLU, not ReLU: the constraint and the energy model differentiate twice in x.
    layers: list[torch.nn.Module] = []
    for i in range(depth):
        layers += [torch.nn.Linear(d_in if i == 0 else width, width), torch.nn.SiLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, d_out))


def _features(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.log(sigma).expand(x.shape[0], 1)], -1)


class ScoreNet(torch.nn.Module):
    """A noise-conditional score ``sigma * s(x, sigma) = f(x, log sigma)``, an MLP.

    Parameters
    ----------
    dim : int
        Data dimension.
    width, depth : int
        Hidden width and number of hidden layers (SiLU).

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import ScoreNet
    >>> net = ScoreNet(2, width=16)
    >>> net(torch.zeros(5, 2), torch.full((5, 1), 0.5)).shape
    torch.Size([5, 2])
    """

    energy = False

    def __init__(self, dim: int, width: int = 128, depth: int = 3):
        super().__init__()
        self.f = _mlp(dim + 1, width, depth, dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``sigma * s(x, sigma)`` for rows ``x`` (n, d) and ``sigma`` (n, 1) or (1, 1)."""
        return self.f(_features(x, sigma))


class EnergyNet(torch.nn.Module):
    """A conservative score by construction: ``sigma * s(x, sigma) = -grad_x E(x, sigma)``.

    ``E`` is an MLP with a scalar output; the score costs one backward pass,
    and training differentiates through it (a double backward per step).
    Under ``torch.no_grad`` the score is returned without a graph.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import EnergyNet
    >>> net = EnergyNet(2, width=16)
    >>> with torch.no_grad():
    ...     out = net(torch.zeros(5, 2), torch.full((5, 1), 0.5))
    >>> out.shape, out.requires_grad
    (torch.Size([5, 2]), False)
    """

    energy = True

    def __init__(self, dim: int, width: int = 128, depth: int = 3):
        super().__init__()
        self.f = _mlp(dim + 1, width, depth, 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``-grad_x E(x, sigma)`` for rows ``x`` (n, d) and ``sigma`` (n, 1) or (1, 1)."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = x if x.requires_grad else x.detach().requires_grad_()
            e = self.f(_features(z, sigma)).sum()
            (g,) = torch.autograd.grad(e, z, create_graph=keep_graph)
        return -g


def dsm_loss(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor,
             eps: torch.Tensor) -> torch.Tensor:
    """Denoising score matching, weighted by ``sigma^2`` per level:
    ``mean_j ||sigma_j s(x_j + sigma_j eps_j, sigma_j) + eps_j||^2 / 2``.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import ScoreNet, dsm_loss
    >>> _ = torch.manual_seed(0)
    >>> x, eps = torch.randn(8, 2), torch.randn(8, 2)
    >>> float(dsm_loss(ScoreNet(2, 16), x, torch.full((8, 1), 0.3), eps).detach()) > 0
    True
    """
    return 0.5 * torch.mean(torch.sum((model(x + sigma * eps, sigma) + eps) ** 2, -1))


def jacobian_products(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                      v: torch.Tensor, create_graph: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J v, J^T v)`` row by row at points ``x``, by autograd alone (so also
    for `EnergyNet`): ``J^T v`` is one backward pass, ``J v`` the backward of
    that (linear in its cotangent) once more.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import EnergyNet, jacobian_products
    >>> _ = torch.manual_seed(0)
    >>> x, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    >>> net = EnergyNet(3, 16).double()
    >>> jv, jtv = jacobian_products(net, x, torch.ones(1, 1, dtype=torch.float64), v)
    >>> bool(torch.allclose(jv, jtv))  # the Hessian of E is symmetric
    True
    """
    with torch.enable_grad():
        z = x.detach().requires_grad_()
        y = model(z, sigma)
        u0 = torch.zeros_like(y, requires_grad=True)
        (g0,) = torch.autograd.grad(y, z, u0, create_graph=True)
        (jtv,) = torch.autograd.grad(y, z, v, create_graph=create_graph, retain_graph=True)
        (jv,) = torch.autograd.grad(g0, u0, v, create_graph=create_graph)
    return jv, jtv


def asymmetry_constraint(model: torch.nn.Module, params: dict[str, torch.Tensor],
                         x: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor,
                         w: torch.Tensor) -> torch.Tensor:
    """``c_j = u_j^T J_j w_j - w_j^T J_j u_j`` with ``J_j`` the Jacobian in ``x``
    of ``sigma_j s(x_j, sigma_j)``, for rows of ``x``, ``sigma``, ``u``, ``w``.

    ``params`` are the network's (named) parameters, so that the null-space
    method can linearise ``c`` in them. ``J w`` and ``J u`` come from one
    batched forward-mode product (the network acts row by row).

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import ScoreNet, asymmetry_constraint
    >>> _ = torch.manual_seed(0)
    >>> net = ScoreNet(2, 16)
    >>> x, u, w = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    >>> c = asymmetry_constraint(net, dict(net.named_parameters()), x,
    ...                          torch.full((3, 1), 0.5), u, w)
    >>> c.shape
    torch.Size([3])
    """
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (z, torch.cat([sigma, sigma])))

    jt = torch.func.jvp(f, (torch.cat([x, x]),), (torch.cat([w, u]),))[1]
    jw, ju = jt[: x.shape[0]], jt[x.shape[0]:]
    return torch.sum(u * jw, -1) - torch.sum(w * ju, -1)


def asymmetry_penalty(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor:
    """Hutchinson estimate of ``mean_j ||J_j - J_j^T||_F^2``:
    ``mean_j ||J_j v_j - J_j^T v_j||^2`` for standard normal probes ``v``
    (``E ||A v||^2 = ||A||_F^2``), differentiable in the parameters; the
    regulariser of QCSBM (Chao et al., ICML 2023).

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import ScoreNet, asymmetry_penalty
    >>> _ = torch.manual_seed(0)
    >>> net = ScoreNet(2, 16)
    >>> p = asymmetry_penalty(net, torch.randn(4, 2), torch.ones(4, 1), torch.randn(4, 2))
    >>> p.requires_grad, float(p.detach()) >= 0
    (True, True)
    """
    z = x.detach().requires_grad_()
    y, jv = torch.func.jvp(lambda t: model(t, sigma), (z,), (v,))
    (jtv,) = torch.autograd.grad(y, z, v, create_graph=True)
    return torch.mean(torch.sum((jv - jtv) ** 2, -1))


def relative_asymmetry(model: torch.nn.Module, x: torch.Tensor, sigmas: torch.Tensor,
                       generator: torch.Generator, probes: int = 4) -> float:
    """``||J - J^T||_F / ||J||_F`` on noisy copies of held-out points ``x``,
    by Hutchinson probes, averaged over the noise levels.

    At each level ``sigma_i`` the points are ``x + sigma_i eps``; both norms
    are estimated from ``probes`` standard normal probes per point and summed
    over the points before the ratio is taken. Returns the mean over levels.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import EnergyNet, relative_asymmetry
    >>> _ = torch.manual_seed(0)
    >>> g = torch.Generator().manual_seed(0)
    >>> r = relative_asymmetry(EnergyNet(2, 16), torch.randn(50, 2), torch.tensor([1.0, 0.1]), g)
    >>> r < 1e-5  # conservative by construction: rounding only
    True
    """
    ratios = []
    for s in sigmas.tolist():
        xs = (x + s * torch.randn(x.shape, generator=generator)).repeat(probes, 1)
        v = torch.randn(xs.shape, generator=generator)
        sig = torch.full((1, 1), s)
        jv, jtv = jacobian_products(model, xs, sig, v)
        ratios.append(float(torch.linalg.norm(jv - jtv) / torch.linalg.norm(jv)))
    return sum(ratios) / len(ratios)


def unit_vectors(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random unit vectors in ``R^dim`` (rows), uniform on the sphere.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import unit_vectors
    >>> v = unit_vectors(4, 3, torch.Generator().manual_seed(0))
    >>> torch.allclose(torch.linalg.norm(v, dim=1), torch.ones(4))
    True
    """
    v = torch.randn(n, dim, generator=generator)
    return v / torch.linalg.norm(v, dim=-1, keepdim=True)


def constraint_points(x: torch.Tensor, sigma: torch.Tensor, points: int, pairs: int,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The first ``points`` rows of a noisy batch, each with ``pairs`` random
    unit probe pairs ``(u, w)``: ``points * pairs`` constraints.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import constraint_points
    >>> g = torch.Generator().manual_seed(0)
    >>> pts = constraint_points(torch.randn(10, 64), torch.ones(10, 1), 4, 2, g)
    >>> {k: tuple(v.shape) for k, v in pts.items()}
    {'x': (8, 64), 'sigma': (8, 1), 'u': (8, 64), 'w': (8, 64)}
    """
    xs, ss = x[:points].detach().repeat(pairs, 1), sigma[:points].repeat(pairs, 1)
    return {"x": xs, "sigma": ss, "u": unit_vectors(xs.shape[0], x.shape[1], generator),
            "w": unit_vectors(xs.shape[0], x.shape[1], generator)}


def asymmetry_at(model: torch.nn.Module, pts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The constraint values ``u^T J w - w^T J u`` at ``pts`` (from
    `constraint_points`) for any model, `EnergyNet` included, without a graph.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import EnergyNet, asymmetry_at, constraint_points
    >>> g = torch.Generator().manual_seed(0)
    >>> pts = constraint_points(torch.randn(6, 2), torch.ones(6, 1), 6, 1, g)
    >>> bool(asymmetry_at(EnergyNet(2, 16), pts).abs().max() < 1e-6)
    True
    """
    jw, _ = jacobian_products(model, pts["x"], pts["sigma"], pts["w"])
    ju, _ = jacobian_products(model, pts["x"], pts["sigma"], pts["u"])
    return (torch.sum(pts["u"] * jw, -1) - torch.sum(pts["w"] * ju, -1)).detach()


def make_step(method: str, model: torch.nn.Module, *, lr: float, mu: float, gamma: float,
              maxiter: int) -> tuple[Callable[..., Any], Any]:
    """One training step of ``method`` (see `METHODS`) on ``model``.

    Returns ``(step, optimizer)``; ``step(x, sigma, eps, v, pts)`` takes a batch
    of data ``x``, its levels ``sigma`` (n, 1) and noise ``eps``, penalty
    probes ``v`` and constraint points ``pts`` (from `constraint_points`),
    and returns the DSM loss. ``"nullspace"`` wraps Adam in
    `lsqdiff.nullspace.torch.ConstrainedOptimizer` (update placement) with
    the constraint `asymmetry_constraint` at ``pts``.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples._score_model import (ScoreNet, asymmetry_at,
    ...                                            constraint_points, make_step)
    >>> _ = torch.manual_seed(0)
    >>> g = torch.Generator().manual_seed(0)
    >>> net = ScoreNet(2, 16).double()
    >>> step, opt = make_step("nullspace", net, lr=1e-3, mu=0.0, gamma=0.5, maxiter=20)
    >>> x, eps = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    >>> sigma = torch.full((32, 1), 0.5, dtype=torch.float64)
    >>> pts = constraint_points(x + sigma * eps, sigma, 8, 1, g)
    >>> pts = {k: v.double() for k, v in pts.items()}
    >>> before = torch.linalg.norm(asymmetry_at(net, pts))
    >>> loss = step(x, sigma, eps, eps, pts)  # removes half of the residual at pts
    >>> round(float(torch.linalg.norm(asymmetry_at(net, pts)) / before), 1)
    0.5
    """
    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    opt: Any = torch.optim.Adam(model.parameters(), lr=lr)
    current: dict[str, torch.Tensor] = {}
    if method == "nullspace":
        def constraint(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return asymmetry_constraint(model, params, current["x"], current["sigma"],
                                        current["u"], current["w"])

        opt = ConstrainedOptimizer(opt, constraint, model, gamma=gamma, maxiter=maxiter)

    def step(x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, v: torch.Tensor,
             pts: dict[str, torch.Tensor]) -> float:
        opt.zero_grad()
        loss = dsm_loss(model, x, sigma, eps)
        total = loss
        if method == "penalty":
            total = loss + mu * asymmetry_penalty(model, x + sigma * eps, sigma, v)
        total.backward()
        current.update(pts)
        opt.step()
        return float(loss.detach())

    return step, opt
