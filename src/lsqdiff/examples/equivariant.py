"""Rotation equivariance: an MLP f: R^2 -> R^2 under f(R x) - R f(x) = 0 (JAX + optax).

The target map f*(x) = (1 - |x|^2 / 2) x + cos(|x|^2) J x (J: rotation by 90°)
commutes with every rotation. Its noisy samples lie in one quadrant of the disc
|x| <= 2 only; the fit is scored on the whole disc. The constraint
``f(R_j x_j) - R_j f(x_j) = 0`` at points x_j spread over the disc and angles
drawn at random (two outputs per pair) ties the other three quadrants to the
one seen. The residual is reported on those pairs and on fresh ones.

The constrained run is ``optax.chain(optax.adam(lr), nullspace(c))``, the
projection acting on Adam's update; the whole step is one ``jax.jit``. It works
in float32 whether or not ``jax_enable_x64`` is on.

    python -m lsqdiff.examples.equivariant [--small] [--seeds N | --seed N] [--out DIR | --no-plot]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ._common import check_size, format_table, main, new_figure, plot_traces, save_figure
from ._compare import LABELS, methods_of, progress as progress_bar

#: The methods, in table order. No JAX library offers an augmented Lagrangian
#: for optax, so ``"auglag"`` is written here (see `_train`).
JAX_METHODS = ("unconstrained", "penalty", "auglag", "constrained")

SETTINGS = {
    "full": dict(width=64, steps=3000, n_train=64, n_col=48, lr=3e-3),
    "small": dict(width=32, steps=300, n_train=48, n_col=16, lr=1e-2),
}
#: `lsqdiff.nullspace.optax.nullspace`'s settings (gamma: fraction of the residual
#: removed per step).
NULLSPACE = {"full": dict(gamma=0.1, maxiter=200), "small": dict(gamma=0.1, maxiter=32)}
NOISE = 0.05
RADIUS = 2.0
MU = 1.0  # penalty weight: loss + MU * ||c||^2; the augmented Lagrangian's rho is 2 MU


def truth(x):
    """The target map: radial scaling plus a radius-dependent swirl, equivariant."""
    import jax.numpy as jnp

    r2 = jnp.sum(x * x, axis=-1, keepdims=True)
    jx = jnp.stack([-x[..., 1], x[..., 0]], axis=-1)
    return (1 - r2 / 2) * x + jnp.cos(r2) * jx


def _init(key, width: int) -> list:
    import jax
    import jax.numpy as jnp

    sizes = (2, width, width, 2)
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        w = jax.random.normal(k, (n_in, n_out), dtype=jnp.float32) / jnp.sqrt(jnp.float32(n_in))
        params.append({"w": w, "b": jnp.zeros(n_out, jnp.float32)})
    return params


def apply(params: list, x):
    """The MLP (tanh hidden layers) on points ``x`` of shape (n, 2)."""
    import jax.numpy as jnp

    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def _rotations(angles):
    import jax.numpy as jnp

    c, s = jnp.cos(angles), jnp.sin(angles)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (k, 2, 2)


def equivariance(params: list, x, rot):
    """c(θ) = f(R_j x_j) - R_j f(x_j) for points ``x`` (k, 2) and rotations
    ``rot`` (k, 2, 2), flattened to 2k values."""
    import jax.numpy as jnp

    rx = jnp.einsum("kij,kj->ki", rot, x)
    return (apply(params, rx) - jnp.einsum("kij,kj->ki", rot, apply(params, x))).reshape(-1)


def _disc(key, n: int, max_angle: float):
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(key)
    r = RADIUS * jnp.sqrt(jax.random.uniform(k1, (n,), jnp.float32))
    a = max_angle * jax.random.uniform(k2, (n,), jnp.float32)
    return jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], -1)


def _train(method: str, cfg: dict, data: dict, seed: int, knobs: dict,
           show_progress: bool) -> dict:
    """One method. ``"auglag"``: the augmented Lagrangian
    ``loss + lam^T c + (rho / 2) ||c||^2`` (``rho = 2 MU``, the penalty's
    quadratic term) minimised by Adam, with ``lam += lr c`` after each step
    (the multiplier step at the primal learning rate, as for Cooper in the
    PyTorch examples)."""
    import jax
    import jax.numpy as jnp
    import optax

    from lsqdiff.nullspace.optax import nullspace

    def constraint(p):
        return equivariance(p, data["x_col"], data["rot_col"])

    def loss(p, lam):
        out = jnp.mean(jnp.sum((apply(p, data["x"]) - data["y"]) ** 2, -1))
        if method == "penalty":
            out = out + MU * jnp.sum(constraint(p) ** 2)
        if method == "auglag":
            c = constraint(p)
            out = out + jnp.dot(lam, c) + MU * jnp.sum(c ** 2)
        return out

    tx = optax.adam(cfg["lr"])
    if method == "constrained":
        tx = optax.chain(tx, nullspace(constraint, **knobs))

    @jax.jit
    def step(p, state, lam):
        g = jax.grad(loss)(p, lam)
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        c = constraint(p)
        if method == "auglag":
            lam = lam + cfg["lr"] * c
        itn = state[1].info.itn if method == "constrained" else jnp.zeros((), jnp.int32)
        converged = state[1].info.converged if method == "constrained" else jnp.zeros((), bool)
        return p, state, lam, jnp.linalg.norm(c), itn, converged

    params = _init(jax.random.PRNGKey(seed), cfg["width"])  # the same start for every method
    state = tx.init(params)
    lam = jnp.zeros(2 * cfg["n_col"], jnp.float32)
    jax.block_until_ready(step(params, state, lam))  # compile outside the timing
    trace, itn, converged = [], [], []
    bar = progress_bar(cfg["steps"], method, show_progress)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in bar:
        params, state, lam, res, it, ok = step(params, state, lam)
        if method == "constrained":
            itn.append(it)
            converged.append(ok)
        if i % 10 == 0 or i == cfg["steps"] - 1:
            trace.append((i, float(res)))
            if show_progress and hasattr(bar, "set_postfix"):
                bar.set_postfix({"||c||": f"{trace[-1][1]:.2e}"}, refresh=False)
    jax.block_until_ready(params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    itn_mean = float(jnp.mean(jnp.stack(itn))) if itn else float("nan")
    conv_share = float(jnp.mean(jnp.stack(converged))) if converged else float("nan")
    err = apply(params, data["x_test"]) - data["y_test"]
    fit = apply(params, data["x"]) - data["y"]
    return {
        "residual": float(jnp.linalg.norm(constraint(params))),
        "residual_fresh_rms": float(jnp.sqrt(jnp.mean(
            equivariance(params, data["x_fresh"], data["rot_fresh"]) ** 2))),
        "test_rmse": float(jnp.sqrt(jnp.mean(jnp.sum(err ** 2, -1)))),
        "train_rmse": float(jnp.sqrt(jnp.mean(jnp.sum(fit ** 2, -1)))),
        "seconds": seconds,
        "ms_per_step": 1e3 * seconds / cfg["steps"],
        "cpu_ms_per_step": 1e3 * cpu / cfg["steps"],
        "lsmr_iterations": itn_mean,
        "converged": conv_share,
        "test_error": jnp.linalg.norm(err, axis=-1).tolist(),
        "trace": trace,
    }


def run(size: str = "full", seed: int = 0, plot: str | None = None,
        methods: Sequence[str] = JAX_METHODS, nullspace: dict | None = None,
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
        Which of ``"unconstrained"``, ``"penalty"``, ``"auglag"``,
        ``"constrained"`` (null-space) to run (default: all).
    nullspace : dict, optional
        Overrides of the null-space settings `NULLSPACE` (keyword arguments of
        `lsqdiff.nullspace.optax.nullspace`).
    progress : bool, optional
        Show a progress bar per method.

    Returns
    -------
    dict
        ``result[method]`` for each method run: ``residual`` (2-norm of c on the constrained pairs),
        ``residual_fresh_rms`` (RMS of f(R x) - R f(x) on 500 fresh pairs),
        ``test_rmse`` (on the whole disc, against the noise-free map),
        ``train_rmse``, ``seconds`` (training, compilation excluded),
        ``ms_per_step`` (wall clock), ``cpu_ms_per_step`` (CPU time, all
        threads), ``lsmr_iterations`` and ``converged`` (null-space
        only, else NaN), ``test_error`` and ``trace``; and ``settings``.

    Examples
    --------
    >>> from lsqdiff.examples import equivariant
    >>> r = equivariant.run(size="small", methods=["constrained"])  # doctest: +SKIP
    >>> r["constrained"]["residual"] < 0.1  # doctest: +SKIP
    True
    """
    import math

    import jax
    import jax.numpy as jnp

    check_size(size)
    cfg = SETTINGS[size]
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), 7)
    x = _disc(keys[0], cfg["n_train"], math.pi / 2)
    data = {
        "x": x,
        "y": truth(x) + NOISE * jax.random.normal(keys[1], x.shape, jnp.float32),
        "x_col": _disc(keys[2], cfg["n_col"], 2 * math.pi),
        "rot_col": _rotations(2 * math.pi * jax.random.uniform(keys[3], (cfg["n_col"],), jnp.float32)),
        "x_fresh": _disc(keys[4], 500, 2 * math.pi),
        "rot_fresh": _rotations(2 * math.pi * jax.random.uniform(keys[5], (500,), jnp.float32)),
        "x_test": _disc(keys[6], 2000, 2 * math.pi),
    }
    data["y_test"] = truth(data["x_test"])
    knobs = dict(NULLSPACE[size], **(nullspace or {}))
    result = {m: _train(m, cfg, data, seed, knobs, progress) for m in methods}
    result["settings"] = dict(cfg, size=size, seed=seed, nullspace=knobs, mu=MU, noise=NOISE,
                              constraints=2 * cfg["n_col"],
                              parameters=sum(p.size for p in jax.tree_util.tree_leaves(
                                  _init(keys[0], cfg["width"]))))
    if plot is not None:
        _plot(result, data, plot)
    return result


def _plot(result: dict, data: dict, path: str) -> None:
    import numpy as np

    methods = methods_of(result)
    fig, axes = new_figure(len(methods) + 1, width=3.75 * (len(methods) + 1), height=3.8)
    xt = np.asarray(data["x_test"])
    xs = np.asarray(data["x"])
    vmax = max(max(result[m]["test_error"]) for m in methods)
    for ax, m in zip(axes, methods):
        sc = ax.scatter(xt[:, 0], xt[:, 1], c=result[m]["test_error"], s=5, cmap="viridis",
                        vmin=0, vmax=vmax)
        ax.plot(xs[:, 0], xs[:, 1], "r.", ms=3)
        ax.set_aspect("equal")
        ax.set_title(f"{LABELS[m]}: |f - f*| (test RMSE {result[m]['test_rmse']:.3f})", fontsize=9)
    fig.colorbar(sc, ax=axes[-2], fraction=0.046)
    plot_traces(axes[-1], result, "||f(R x) - R f(x)|| on the constrained pairs", fontsize=9)
    save_figure(fig, path)


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.equivariant``."""
    s = result["settings"]
    return (f"equivariant ({s['size']}): MLP 2-{s['width']}-{s['width']}-2, {s['parameters']} "
            f"parameters, {s['constraints']} constraints, {s['steps']} Adam steps (lr {s['lr']}); "
            f"null-space {s['nullspace']}; penalty mu={s['mu']}, aug. Lagrangian rho="
            f"{2 * s['mu']}; training data in one quadrant (red dots); seed {s['seed']}\n\n"
            + format_table(result, COLUMNS))


#: The figures of the tables.
COLUMNS = [
    ("residual", "‖c‖ (constrained pairs)", ".2e"),
    ("residual_fresh_rms", "RMS f(Rx)-Rf(x) (fresh pairs)", ".2e"),
    ("train_rmse", "train RMSE", ".3f"),
    ("test_rmse", "test RMSE (whole disc)", ".3f"),
    ("cpu_ms_per_step", "CPU ms / step", ".2f"),
]

if __name__ == "__main__":
    main("equivariant", run, describe, columns=COLUMNS)
