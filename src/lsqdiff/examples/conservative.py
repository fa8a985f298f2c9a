"""A conservative vector field: s: R^2 -> R^2 with a symmetric Jacobian (PyTorch).

Noisy samples of the gradient field of phi(x) = sin(x1) cos(x2) + 0.2 x1 x2 are
fitted by an MLP s(x). A gradient field has a symmetric Jacobian, so the
constraint is ``u_j^T (ds/dx)(x_j) w_j - w_j^T (ds/dx)(x_j) u_j = 0`` at sample
points x_j for random unit vectors u_j, w_j (in 2-D each is a multiple of the
curl). The constraint holds first derivatives of s in x, so its Jacobian in
the parameters needs second derivatives: (ds/dx) w is a ``torch.func.jvp``
inside the constraint, differentiated again by the projection's JVP/VJP.
Scored: RMSE against the true gradient field on a grid, and the RMS curl there.

    python -m lsqdiff.examples.conservative [--small] [--seeds N | --seed N] [--out DIR | --no-plot]
"""

from __future__ import annotations


from collections.abc import Sequence

from ._common import check_size, format_table, main, new_figure, plot_traces, save_figure
from ._compare import LABELS, TORCH_METHODS, methods_of, train_torch

SETTINGS = {
    "full": dict(width=64, steps=1000, n_train=100, n_col=64, lr=3e-3),
    "small": dict(width=32, steps=120, n_train=60, n_col=16, lr=1e-2),
}
#: ConstrainedOptimizer's settings (gamma: fraction of the residual removed per step).
NULLSPACE = {"full": dict(gamma=0.2, maxiter=40), "small": dict(gamma=0.2, maxiter=20)}
NOISE = 0.3
BOX = 2.0
MU = 1.0  # penalty weight: loss + MU * ||c||^2; Cooper's penalty coefficient is 2 MU


def grad_phi(x):
    """∇phi for phi(x) = sin(x1) cos(x2) + 0.2 x1 x2, at points (n, 2)."""
    import torch

    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([torch.cos(x1) * torch.cos(x2) + 0.2 * x2,
                        -torch.sin(x1) * torch.sin(x2) + 0.2 * x1], -1)


def _mlp(width: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(),
                               torch.nn.Linear(width, width), torch.nn.Tanh(),
                               torch.nn.Linear(width, 2))


def asymmetry(model, params: dict, x, u, w):
    """c_j = u_j^T S_j w_j - w_j^T S_j u_j with S_j = (ds/dx)(x_j), for rows of
    ``x``, ``u``, ``w`` (each (k, 2)); s acts row by row, so one batched JVP
    gives every S_j w_j."""
    import torch

    def s(z):
        return torch.func.functional_call(model, params, (z,))

    sw = torch.func.jvp(s, (x,), (w,))[1]
    su = torch.func.jvp(s, (x,), (u,))[1]
    return torch.sum(u * sw, -1) - torch.sum(w * su, -1)


def curl(model, x):
    """ds2/dx1 - ds1/dx2 at points ``x`` (n, 2)."""
    import torch

    e1 = torch.zeros_like(x)
    e1[:, 0] = 1
    return asymmetry(model, dict(model.named_parameters()), x, 1 - e1, e1)


def _train(method: str, cfg: dict, data: dict, seed: int, nullspace: dict,
           show_progress: bool) -> dict:
    import torch

    torch.manual_seed(seed)  # the same initial network for every method
    model = _mlp(cfg["width"])

    def constraint(params: dict):
        return asymmetry(model, params, data["x_col"], data["u"], data["w"])

    def data_loss():
        return torch.mean(torch.sum((model(data["x"]) - data["y"]) ** 2, -1))

    trace, seconds, stats = train_torch(
        method, model, constraint, data_loss, steps=cfg["steps"], lr=cfg["lr"], mu=MU,
        nullspace=nullspace, show_progress=show_progress)
    with torch.no_grad():
        err = model(data["x_test"]) - data["y_test"]
        return {
            "residual": float(torch.linalg.norm(constraint(dict(model.named_parameters())))),
            "curl_rms": float(torch.sqrt(torch.mean(curl(model, data["x_test"]) ** 2))),
            "test_rmse": float(torch.sqrt(torch.mean(torch.sum(err ** 2, -1)))),
            "train_rmse": float(torch.sqrt(torch.mean(torch.sum(
                (model(data["x"]) - data["y"]) ** 2, -1)))),
            "seconds": seconds,
            "ms_per_step": 1e3 * seconds / cfg["steps"],
            "cpu_ms_per_step": 1e3 * stats["cpu_seconds"] / cfg["steps"],
            **stats,
            "field": model(data["x_grid"]).tolist(),
            "trace": trace,
        }


def run(size: str = "full", seed: int = 0, plot: str | None = None,
        methods: Sequence[str] = TORCH_METHODS, nullspace: dict | None = None,
        progress: bool = False) -> dict:
    """Train each way and return the figures.

    Parameters
    ----------
    size : {"full", "small"}
        ``"small"`` is the few-second version used by the tests.
    seed : int
        Seeds the data and the (shared) initial network.
    plot : str, optional
        Path of a PNG to write (needs matplotlib).
    methods : sequence of str, optional
        Which of ``"unconstrained"``, ``"penalty"``, ``"cooper"``,
        ``"constrained"`` (null-space) to run (default: all).
    nullspace : dict, optional
        Overrides of the null-space settings `NULLSPACE` (keyword arguments of
        `lsqdiff.nullspace.torch.ConstrainedOptimizer`).
    progress : bool, optional
        Show a progress bar per method.

    Returns
    -------
    dict
        ``result[method]`` for each method run: ``residual`` (2-norm of c at
        the constrained points), ``curl_rms`` (RMS curl on a 40 x 40 grid),
        ``test_rmse`` (against ∇phi on that grid), ``train_rmse``,
        ``seconds``, ``ms_per_step`` (wall clock), ``cpu_ms_per_step`` (CPU
        time), ``lsmr_iterations`` and ``converged`` (null-space only, else
        NaN), ``field`` and ``trace``; and ``settings``.

    Examples
    --------
    >>> from lsqdiff.examples import conservative
    >>> r = conservative.run(size="small", methods=["constrained"])  # doctest: +SKIP
    >>> r["constrained"]["residual"] < 0.5  # doctest: +SKIP
    True
    """
    import torch

    check_size(size)
    cfg = SETTINGS[size]
    g = torch.Generator().manual_seed(seed)

    def box(n):
        return (torch.rand(n, 2, generator=g) * 2 - 1) * BOX

    def unit(n):
        v = torch.randn(n, 2, generator=g)
        return v / torch.linalg.norm(v, dim=-1, keepdim=True)

    x = box(cfg["n_train"])
    grid = torch.linspace(-BOX, BOX, 40)
    x_test = torch.cartesian_prod(grid, grid)
    coarse = torch.linspace(-BOX, BOX, 15)
    data = {"x": x, "y": grad_phi(x) + NOISE * torch.randn(x.shape, generator=g),
            "x_col": box(cfg["n_col"]), "u": unit(cfg["n_col"]), "w": unit(cfg["n_col"]),
            "x_test": x_test, "y_test": grad_phi(x_test),
            "x_grid": torch.cartesian_prod(coarse, coarse)}
    knobs = dict(NULLSPACE[size], **(nullspace or {}))
    result = {m: _train(m, cfg, data, seed, knobs, progress) for m in methods}
    result["settings"] = dict(cfg, size=size, seed=seed, nullspace=knobs, mu=MU, noise=NOISE,
                              constraints=cfg["n_col"],
                              parameters=sum(p.numel() for p in _mlp(cfg["width"]).parameters()))
    if plot is not None:
        _plot(result, data, plot)
    return result


def _plot(result: dict, data: dict, path: str) -> None:
    import numpy as np

    methods = methods_of(result)
    fig, axes = new_figure(len(methods) + 1, width=3.75 * (len(methods) + 1), height=3.8)
    xg = data["x_grid"].numpy()
    for ax, m in zip(axes, methods):
        f = np.asarray(result[m]["field"])
        ax.quiver(xg[:, 0], xg[:, 1], f[:, 0], f[:, 1], color="tab:blue", scale=30)
        ax.set_aspect("equal")
        ax.set_title(f"{LABELS[m]}: RMSE {result[m]['test_rmse']:.3f}, RMS curl "
                     f"{result[m]['curl_rms']:.1e}", fontsize=9)
    plot_traces(axes[-1], result, "||c|| at the constrained points", fontsize=9)
    save_figure(fig, path)


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.conservative``."""
    s = result["settings"]
    return (f"conservative ({s['size']}): MLP 2-{s['width']}-{s['width']}-2, {s['parameters']} "
            f"parameters, {s['constraints']} constraints, {s['n_train']} samples (noise "
            f"{s['noise']}), {s['steps']} Adam steps (lr {s['lr']}); null-space "
            f"{s['nullspace']}; penalty mu={s['mu']}, Cooper rho={2 * s['mu']}; seed {s['seed']}"
            "\n\n" + format_table(result, COLUMNS))


#: The figures of the tables.
COLUMNS = [
    ("residual", "‖c‖ (constrained points)", ".2e"),
    ("curl_rms", "RMS curl (40x40 grid)", ".2e"),
    ("train_rmse", "train RMSE", ".3f"),
    ("test_rmse", "RMSE vs grad phi (grid)", ".3f"),
    ("cpu_ms_per_step", "CPU ms / step", ".2f"),
]

if __name__ == "__main__":
    main("conservative", run, describe, columns=COLUMNS)
