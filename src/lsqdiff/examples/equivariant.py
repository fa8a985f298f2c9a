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

    python -m lsqdiff.examples.equivariant [--small] [--seed N] [--plot PATH | --no-plot]
"""

from __future__ import annotations

import time

from ._common import (METHODS, check_size, format_table, main, new_figure, plot_traces,
                      save_figure)

SETTINGS = {
    "full": dict(width=64, steps=3000, n_train=64, n_col=48, lr=3e-3, maxiter=200),
    "small": dict(width=32, steps=300, n_train=48, n_col=16, lr=1e-2, maxiter=32),
}
NOISE = 0.05
RADIUS = 2.0
GAMMA = 0.1  # fraction of the constraint residual removed per step
MU = 1.0  # penalty weight: loss + MU * ||c||^2


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


def _train(method: str, cfg: dict, data: dict, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from lsqdiff.nullspace.optax import nullspace

    def constraint(p):
        return equivariance(p, data["x_col"], data["rot_col"])

    def loss(p):
        out = jnp.mean(jnp.sum((apply(p, data["x"]) - data["y"]) ** 2, -1))
        if method == "penalty":
            out = out + MU * jnp.sum(constraint(p) ** 2)
        return out

    tx = optax.adam(cfg["lr"])
    if method == "constrained":
        tx = optax.chain(tx, nullspace(constraint, gamma=GAMMA, maxiter=cfg["maxiter"]))

    @jax.jit
    def step(p, state):
        g = jax.grad(loss)(p)
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return p, state, jnp.linalg.norm(constraint(p))

    params = _init(jax.random.PRNGKey(seed), cfg["width"])  # the same start for every method
    state = tx.init(params)
    jax.block_until_ready(step(params, state))  # compile outside the timing
    trace = []
    start = time.perf_counter()
    for i in range(cfg["steps"]):
        params, state, res = step(params, state)
        if i % 10 == 0 or i == cfg["steps"] - 1:
            trace.append((i, float(res)))
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    err = apply(params, data["x_test"]) - data["y_test"]
    fit = apply(params, data["x"]) - data["y"]
    return {
        "residual": float(jnp.linalg.norm(constraint(params))),
        "residual_fresh_rms": float(jnp.sqrt(jnp.mean(
            equivariance(params, data["x_fresh"], data["rot_fresh"]) ** 2))),
        "test_rmse": float(jnp.sqrt(jnp.mean(jnp.sum(err ** 2, -1)))),
        "train_rmse": float(jnp.sqrt(jnp.mean(jnp.sum(fit ** 2, -1)))),
        "seconds": seconds,
        "test_error": jnp.linalg.norm(err, axis=-1).tolist(),
        "trace": trace,
    }


def run(size: str = "full", seed: int = 0, plot: str | None = None) -> dict:
    """Train the three ways and return their figures.

    Parameters
    ----------
    size : {"full", "small"}
        ``"small"`` is the few-second version used by the tests.
    seed : int
        Seeds the data and the (shared) initial network.
    plot : str, optional
        Path of a PNG to write (needs matplotlib).

    Returns
    -------
    dict
        ``result[method]`` for method in ``"unconstrained"``, ``"penalty"``,
        ``"constrained"``: ``residual`` (2-norm of c on the constrained pairs),
        ``residual_fresh_rms`` (RMS of f(R x) - R f(x) on 500 fresh pairs),
        ``test_rmse`` (on the whole disc, against the noise-free map),
        ``train_rmse``, ``seconds`` (training, compilation excluded),
        ``test_error`` and ``trace``; and ``settings``.
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
    result = {m: _train(m, cfg, data, seed) for m in METHODS}
    result["settings"] = dict(cfg, size=size, seed=seed, gamma=GAMMA, mu=MU, noise=NOISE,
                              constraints=2 * cfg["n_col"],
                              parameters=sum(p.size for p in jax.tree_util.tree_leaves(
                                  _init(keys[0], cfg["width"]))))
    if plot is not None:
        _plot(result, data, plot)
    return result


def _plot(result: dict, data: dict, path: str) -> None:
    import numpy as np

    fig, axes = new_figure(4, width=15, height=3.8)
    xt = np.asarray(data["x_test"])
    xs = np.asarray(data["x"])
    vmax = max(max(result[m]["test_error"]) for m in METHODS)
    for ax, m in zip(axes, METHODS):
        sc = ax.scatter(xt[:, 0], xt[:, 1], c=result[m]["test_error"], s=5, cmap="viridis",
                        vmin=0, vmax=vmax)
        ax.plot(xs[:, 0], xs[:, 1], "r.", ms=3)
        ax.set_aspect("equal")
        ax.set_title(f"{m}: |f - f*| (test RMSE {result[m]['test_rmse']:.3f})", fontsize=9)
    fig.colorbar(sc, ax=axes[2], fraction=0.046)
    plot_traces(axes[3], result, "||f(R x) - R f(x)|| on the constrained pairs", fontsize=9)
    save_figure(fig, path)


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.equivariant``."""
    s = result["settings"]
    return (f"equivariant ({s['size']}): MLP 2-{s['width']}-{s['width']}-2, {s['parameters']} "
            f"parameters, {s['constraints']} constraints, {s['steps']} Adam steps (lr {s['lr']}); "
            f"null-space gamma={s['gamma']}, LSMR maxiter={s['maxiter']}; penalty mu={s['mu']}; "
            "training data in one quadrant (red dots)\n\n"
            + format_table(result, [
                ("residual", "||c|| (constrained pairs)", ".2e"),
                ("residual_fresh_rms", "RMS f(Rx)-Rf(x) (fresh pairs)", ".2e"),
                ("train_rmse", "train RMSE", ".3f"),
                ("test_rmse", "test RMSE (whole disc)", ".3f"),
                ("seconds", "train time (s)", ".1f"),
            ]))


if __name__ == "__main__":
    main("equivariant", run, describe)
