"""Periodic regression: an MLP f: R -> R under f(x + P) - f(x) = 0 (PyTorch).

Noisy samples of a 2π-periodic function cover only [0, 1.25 P]. The constraint
``f(x_j + P) - f(x_j) = 0`` at collocation points x_j spread over [-P, 2P]
carries what is learnt on the training interval to the whole of [-P, 3P], where
the fit is scored (RMSE against the noise-free function). The residual is
reported at the collocation points (what is constrained) and at fresh points
(what the constraint buys between them).

    python -m lsqdiff.examples.periodic [--small] [--seeds N | --seed N] [--out DIR | --no-plot]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._common import check_size, format_table, main, new_figure, plot_traces, save_figure
from ._compare import LABELS, TORCH_METHODS, methods_of, train_torch

PERIOD = 2 * math.pi
SETTINGS = {
    "full": dict(width=64, steps=2000, n_train=40, n_col=64, lr=3e-3),
    "small": dict(width=64, steps=300, n_train=30, n_col=32, lr=3e-3),
}
#: ConstrainedOptimizer's settings (gamma: fraction of the residual removed per step).
NULLSPACE = {"full": dict(gamma=0.2, maxiter=50), "small": dict(gamma=0.2, maxiter=15)}
NOISE = 0.1
MU = 0.1  # penalty weight: loss + MU * ||c||^2; Cooper's penalty coefficient is 2 MU


def truth(x):
    """The target function, 2π-periodic."""
    import torch

    return torch.sin(x) + 0.5 * torch.sin(2 * x + 1.0)


def _mlp(width: int):
    import torch

    class Sin(torch.nn.Module):
        def forward(self, x):
            return torch.sin(x)

    # A sine first layer gives the network oscillating features (of arbitrary,
    # non-commensurate frequencies: it is not periodic by construction). With tanh
    # alone it collapsed to a near-constant fit under either constraint method.
    return torch.nn.Sequential(torch.nn.Linear(1, width), Sin(),
                               torch.nn.Linear(width, width), torch.nn.Tanh(),
                               torch.nn.Linear(width, 1))


def _periodicity(model, params: dict, x):
    """c(θ) = f(x + P) - f(x) at the points ``x`` (shape (k, 1)), flattened."""
    import torch

    def f(z):
        return torch.func.functional_call(model, params, (z,))

    return (f(x + PERIOD) - f(x)).reshape(-1)


def _train(method: str, cfg: dict, data: dict, seed: int, nullspace: dict,
           show_progress: bool) -> dict:
    import torch

    torch.manual_seed(seed)  # the same initial network for every method
    model = _mlp(cfg["width"])
    x_col = data["x_col"]

    def constraint(params: dict):
        return _periodicity(model, params, x_col)

    trace, seconds, stats = train_torch(
        method, model, constraint, lambda: torch.mean((model(data["x"]) - data["y"]) ** 2),
        steps=cfg["steps"], lr=cfg["lr"], mu=MU, nullspace=nullspace, show_progress=show_progress)
    params = dict(model.named_parameters())
    with torch.no_grad():
        pred = model(data["x_test"])
        return {
            "residual": float(torch.linalg.norm(constraint(params))),
            "residual_fresh_rms": float(torch.sqrt(torch.mean(
                _periodicity(model, params, data["x_fresh"]) ** 2))),
            "test_rmse": float(torch.sqrt(torch.mean((pred - data["y_test"]) ** 2))),
            "train_rmse": float(torch.sqrt(torch.mean((model(data["x"]) - data["y"]) ** 2))),
            "seconds": seconds,
            "ms_per_step": 1e3 * seconds / cfg["steps"],
            "cpu_ms_per_step": 1e3 * stats["cpu_seconds"] / cfg["steps"],
            **stats,
            "curve": pred.reshape(-1).tolist(),
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
        the collocation points), ``residual_fresh_rms`` (RMS of f(x + P) - f(x)
        at 500 fresh points),
        ``test_rmse`` (on [-P, 3P] against the noise-free function),
        ``train_rmse``, ``seconds``, ``ms_per_step`` (wall clock),
        ``cpu_ms_per_step`` (CPU time), ``lsmr_iterations`` and
        ``converged`` (null-space only, else NaN), ``curve`` and ``trace``
        (step, residual); and ``settings``.

    Examples
    --------
    >>> from lsqdiff.examples import periodic
    >>> r = periodic.run(size="small", methods=["constrained"])  # doctest: +SKIP
    >>> r["constrained"]["residual"] < 0.1  # doctest: +SKIP
    True
    """
    import torch

    check_size(size)
    cfg = SETTINGS[size]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(cfg["n_train"], 1, generator=g) * 1.25 * PERIOD
    data = {
        "x": x,
        "y": truth(x) + NOISE * torch.randn(x.shape, generator=g),
        "x_col": torch.linspace(-PERIOD, 2 * PERIOD, cfg["n_col"]).reshape(-1, 1),
        "x_fresh": (torch.rand(500, 1, generator=g) * 3 - 1) * PERIOD,
        "x_test": torch.linspace(-PERIOD, 3 * PERIOD, 800).reshape(-1, 1),
    }
    data["y_test"] = truth(data["x_test"])
    knobs = dict(NULLSPACE[size], **(nullspace or {}))
    result = {m: _train(m, cfg, data, seed, knobs, progress) for m in methods}
    result["settings"] = dict(cfg, size=size, seed=seed, nullspace=knobs, mu=MU, noise=NOISE,
                              constraints=cfg["n_col"],
                              parameters=sum(p.numel() for p in _mlp(cfg["width"]).parameters()))
    if plot is not None:
        _plot(result, data, plot)
    return result


def _plot(result: dict, data: dict, path: str) -> None:
    fig, (ax, ax2) = new_figure(2)
    xt = data["x_test"].reshape(-1).numpy()
    ax.plot(xt, data["y_test"].reshape(-1).numpy(), "k--", lw=1, label="truth")
    for m in methods_of(result):
        ax.plot(xt, result[m]["curve"], lw=1.3, label=LABELS[m])
    ax.plot(data["x"].numpy(), data["y"].numpy(), "k.", ms=4, label="training data")
    ax.axvspan(0, 1.25 * PERIOD, color="0.92", zorder=0)
    ax.set_xlabel("x")
    ax.set_title("fits (grey band: where the training data lie)", fontsize=10)
    ax.legend(fontsize=8)
    plot_traces(ax2, result, "constraint residual at the collocation points")
    ax2.set_ylabel("||f(x_j + P) - f(x_j)||")
    save_figure(fig, path)


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.periodic``."""
    s = result["settings"]
    return (f"periodic ({s['size']}): MLP 1-{s['width']}-{s['width']}-1 (sin, tanh), {s['parameters']} "
            f"parameters, {s['constraints']} constraints, {s['steps']} Adam steps (lr {s['lr']}); "
            f"null-space {s['nullspace']}; penalty mu={s['mu']}, Cooper rho={2 * s['mu']}; "
            f"seed {s['seed']}\n\n" + format_table(result, COLUMNS))


#: The figures of the tables.
COLUMNS = [
    ("residual", "‖c‖ (collocation)", ".2e"),
    ("residual_fresh_rms", "RMS f(x+P)-f(x) (fresh x)", ".2e"),
    ("train_rmse", "train RMSE", ".3f"),
    ("test_rmse", "test RMSE on [-P, 3P]", ".3f"),
    ("cpu_ms_per_step", "CPU ms / step", ".2f"),
]

if __name__ == "__main__":
    main("periodic", run, describe, columns=COLUMNS)
