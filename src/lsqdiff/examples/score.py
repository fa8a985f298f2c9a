"""A score-based generative model whose score is held conservative (PyTorch).

A noise-conditional score network ``s(x, sigma)`` is trained by denoising
score matching over a geometric ladder of noise levels (NCSN), four ways on
the same data, batches, steps and seeds:

* ``unconstrained``: an MLP for ``sigma * s``;
* ``penalty``: the same plus ``mu * ||J - J^T||_F^2`` estimated with one
  Gaussian probe per point (QCSBM, Chao et al. 2023), ``J = d(sigma s)/dx``;
* ``nullspace``: the same MLP under ``c_j = u_j^T J w_j - w_j^T J u_j = 0`` at
  ``points`` noisy points of each batch with ``pairs`` random unit probe
  pairs each, through `lsqdiff.nullspace.torch.ConstrainedOptimizer`
  (fresh points and probes every step);
* ``energy``: ``sigma * s = -grad_x E(x, sigma)``, conservative by
  construction (one more backward per step).

Samples come from annealed Langevin dynamics with the same budget for every
method and are scored against held-out data by the sliced Wasserstein
distance (POT) and a Gaussian-kernel MMD^2; the score's relative asymmetry
``||J - J^T||_F / ||J||_F`` is measured with Hutchinson probes on held-out
points. Data: two moons and a swiss roll (scikit-learn's generators), a
mixture of 8 Gaussians, and scikit-learn's 8x8 digits (64-D).

    python -m lsqdiff.examples.score [--data moons,swissroll,8gaussians,digits]
        [--seeds 3] [--small] [--out DIR] [--no-plot] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

DATASETS = ("moons", "swissroll", "8gaussians", "digits")
METHODS = ("unconstrained", "penalty", "nullspace", "energy")

#: Model, training and sampling settings; ``"small"`` is the smoke test.
SETTINGS = {
    "full": dict(width=128, depth=3, steps=1000, batch=256, lr=2e-3, levels=10,
                 langevin_steps=50, n_train=5000, n_test=2000, trace_every=20, maxiter=10),
    "small": dict(width=32, depth=2, steps=30, batch=64, lr=1e-2, levels=5,
                  langevin_steps=3, n_train=500, n_test=150, trace_every=5, maxiter=10),
}
#: Per data set: noise ladder and the null-space constraint's size
#: (``points * pairs`` constraints per step).
DATA_SETTINGS = {
    "2d": dict(sigma_max=3.0, sigma_min=0.03, points=32, pairs=1),
    "digits": dict(sigma_max=8.0, sigma_min=0.05, points=16, pairs=4),
}
RATIO = 0.5  # Langevin step / sigma_i^2 (0.1 left the Gaussian test 11% off in covariance)
GAMMA = 0.5  # null-space: fraction of the (linearised) residual removed per step
MU = 1.0  # penalty weight


def load_data(name: str, n_train: int, n_test: int, seed: int):
    """Training and held-out samples (float32 tensors) of data set ``name``.

    2-D sets are standardised with the training statistics; the digits are
    mapped from 0..16 to [-1, 1]. The digits have 1,797 images: 497 are held
    out and the rest train, whatever ``n_train`` and ``n_test``.

    Examples
    --------
    >>> from lsqdiff.examples.score import load_data
    >>> train, test = load_data("moons", 100, 50, seed=0)
    >>> tuple(train.shape), tuple(test.shape)
    ((100, 2), (50, 2))
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().data[rng.permutation(1797)] / 8.0 - 1.0
        return (torch.tensor(x[497:], dtype=torch.float32),
                torch.tensor(x[:497], dtype=torch.float32))
    n = n_train + n_test
    if name == "moons":
        from sklearn.datasets import make_moons

        x = make_moons(n, noise=0.05, random_state=seed)[0]
    elif name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        x = make_swiss_roll(n, noise=0.3, random_state=seed)[0][:, [0, 2]]
    elif name == "8gaussians":
        angles = rng.integers(0, 8, n) * (np.pi / 4)
        x = 4 * np.stack([np.cos(angles), np.sin(angles)], -1) + 0.3 * rng.normal(size=(n, 2))
    else:
        raise ValueError(f"data must be one of {DATASETS}, got {name!r}")
    x = x[rng.permutation(n)]
    train, test = x[:n_train], x[n_train:]
    mean, std = train.mean(0), train.std(0)
    return (torch.tensor((train - mean) / std, dtype=torch.float32),
            torch.tensor((test - mean) / std, dtype=torch.float32))


def _train_one(method: str, cfg: dict, train, sigmas, seed: int, progress: bool) -> dict:
    import torch
    from tqdm import tqdm

    from ._score_model import EnergyNet, ScoreNet, asymmetry_at, constraint_points, make_step

    torch.manual_seed(seed)
    dim = train.shape[1]
    model = (EnergyNet if method == "energy" else ScoreNet)(dim, cfg["width"], cfg["depth"])
    step, opt = make_step(method, model, lr=cfg["lr"], mu=MU, gamma=GAMMA,
                         maxiter=cfg["maxiter"])
    # Separate streams for batches and probes: every method sees the same batches
    # and the same constraint points.
    g_data = torch.Generator().manual_seed(seed)
    g_probe = torch.Generator().manual_seed(seed + 10_000)
    trace, seconds = [], 0.0
    bar = tqdm(range(cfg["steps"]), desc=f"{method} seed {seed}", disable=not progress,
               leave=False)
    for i in bar:
        idx = torch.randint(0, train.shape[0], (cfg["batch"],), generator=g_data)
        level = torch.randint(0, sigmas.shape[0], (cfg["batch"],), generator=g_data)
        sigma = sigmas[level][:, None]
        eps = torch.randn(cfg["batch"], dim, generator=g_data)
        v = torch.randn(cfg["batch"], dim, generator=g_data)
        x = train[idx]
        pts = constraint_points(x + sigma * eps, sigma, cfg["points"], cfg["pairs"], g_probe)
        if i % cfg["trace_every"] == 0 or i == cfg["steps"] - 1:
            c = asymmetry_at(model, pts)
            trace.append((i, float(torch.sqrt(torch.mean(c ** 2)))))
        start = time.perf_counter()
        loss = step(x, sigma, eps, v, pts)
        seconds += time.perf_counter() - start
        if progress and i % cfg["trace_every"] == 0:
            post = {"loss": f"{loss:.3f}", "rms c": f"{trace[-1][1]:.2e}"}
            if method == "nullspace":
                post["lsmr itn"] = opt.last_info.itn
            bar.set_postfix(post)
    bar.close()
    return {"model": model, "trace": trace, "ms_per_step": 1e3 * seconds / cfg["steps"]}


def _heldout_loss(model, test, sigmas, seed: int) -> float:
    import torch

    from ._score_model import dsm_loss

    g = torch.Generator().manual_seed(seed + 20_000)
    total = 0.0
    for s in sigmas.tolist():
        eps = torch.randn(test.shape, generator=g)
        with torch.no_grad():
            total += float(dsm_loss(model, test, torch.full((1, 1), s), eps))
    return total / sigmas.shape[0]


def _evaluate(model, cfg: dict, train, test, sigmas, seed: int) -> dict:
    import torch

    from ._score_model import relative_asymmetry
    from ._score_sampling import annealed_langevin, mmd2, sliced_wasserstein

    g = torch.Generator().manual_seed(seed + 30_000)
    n = test.shape[0]
    x0 = float(sigmas[0]) * torch.randn(n, test.shape[1], generator=g)
    start = time.perf_counter()
    samples = annealed_langevin(lambda x, s: model(x, s) / s, sigmas, x0,
                                steps=cfg["langevin_steps"], ratio=RATIO, generator=g)
    sample_seconds = time.perf_counter() - start
    a, b = samples.numpy().astype("float64"), test.numpy().astype("float64")
    n_eval = min(n, 500)
    return {
        "swd": sliced_wasserstein(a, b, seed=seed),
        "mmd2": mmd2(a, b, b),
        "asymmetry": relative_asymmetry(model, test[:n_eval], sigmas, g),
        "heldout_dsm": _heldout_loss(model, test, sigmas, seed),
        "sample_seconds": sample_seconds,
        "samples": samples,
    }


def run(data: str = "moons", size: str = "full", seeds: Sequence[int] = (0, 1, 2),
        methods: Sequence[str] = METHODS, progress: bool = False) -> dict:
    """Train every method on one data set for each seed, sample, and score.

    Parameters
    ----------
    data : {"moons", "swissroll", "8gaussians", "digits"}
    size : {"full", "small"}
        ``"small"`` is the few-second smoke test the suite runs.
    seeds : sequence of int
        Each seed fixes the data split, the initial networks, the batches,
        the constraint points and the sampler's noise (shared by the methods).
    methods : sequence of str
        A subset of `METHODS`.
    progress : bool
        Show a tqdm bar per training run.

    Returns
    -------
    dict
        ``runs[method]``: a list (one per seed) of dicts with ``swd``,
        ``mmd2``, ``asymmetry``, ``heldout_dsm``, ``ms_per_step``,
        ``final_rms_c`` (RMS of c over the last tenth of the trace),
        ``trace`` ((step, RMS c) at that step's constraint points),
        ``sample_seconds``; seed 0's models, samples and data under
        ``first``; ``floor``: the SWD and MMD^2 between training and held-out
        data; ``settings``.

    Examples
    --------
    >>> from lsqdiff.examples.score import run
    >>> r = run("moons", size="small", seeds=[0], methods=["unconstrained"])
    >>> sorted(r["runs"]["unconstrained"][0])[:3]
    ['asymmetry', 'final_rms_c', 'heldout_dsm']
    """
    import torch

    from ._score_model import noise_levels
    from ._score_sampling import mmd2, sliced_wasserstein

    if size not in SETTINGS:
        raise ValueError(f"size must be 'full' or 'small', got {size!r}")
    if data not in DATASETS:
        raise ValueError(f"data must be one of {DATASETS}, got {data!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    cfg = dict(SETTINGS[size], **DATA_SETTINGS["digits" if data == "digits" else "2d"])
    if size == "small":
        cfg.update(points=min(cfg["points"], 8))
    sigmas = noise_levels(cfg["sigma_max"], cfg["sigma_min"], cfg["levels"])
    runs: dict[str, list] = {m: [] for m in methods}
    first: dict[str, Any] = {}
    floor = []
    for seed in seeds:
        train, test = load_data(data, cfg["n_train"], cfg["n_test"], seed)
        sub = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
                    [: test.shape[0]]].numpy().astype("float64")
        ref = test.numpy().astype("float64")
        floor.append({"swd": sliced_wasserstein(sub, ref, seed=seed), "mmd2": mmd2(sub, ref, ref)})
        for m in methods:
            fit = _train_one(m, cfg, train, sigmas, seed, progress)
            scores = _evaluate(fit["model"], cfg, train, test, sigmas, seed)
            tail = [r for _, r in fit["trace"][-max(1, len(fit["trace"]) // 10):]]
            if seed == seeds[0]:
                first[m] = {"model": fit["model"], "samples": scores["samples"]}
                first["train"], first["test"] = train, test
            runs[m].append({k: v for k, v in scores.items() if k != "samples"}
                           | {"ms_per_step": fit["ms_per_step"], "trace": fit["trace"],
                              "final_rms_c": sum(tail) / len(tail)})
    n_params = {m: sum(p.numel() for p in first[m]["model"].parameters()) for m in methods}
    settings = dict(cfg, data=data, size=size, seeds=list(seeds), gamma=GAMMA, mu=MU,
                    ratio=RATIO, dim=int(first["train"].shape[1]),
                    constraints=cfg["points"] * cfg["pairs"], parameters=n_params,
                    sigmas=sigmas.tolist())
    return {"runs": runs, "first": first, "floor": floor, "sigmas": sigmas,
            "settings": settings}


COLUMNS = (("swd", "sliced W2", ".3f"), ("mmd2", "MMD²", ".4f"),
           ("asymmetry", "‖J−Jᵀ‖/‖J‖", ".2e"), ("final_rms_c", "RMS c (train pts)", ".2e"),
           ("heldout_dsm", "held-out DSM loss", ".4f"), ("ms_per_step", "ms / step", ".1f"))


def summary(result: dict) -> dict:
    """``summary[method][key] = (mean, std)`` over the seeds (std with ddof=1,
    0 for one seed), for the keys of `COLUMNS`; ``summary["data"]`` holds the
    training-vs-held-out floor of ``swd`` and ``mmd2``.

    Examples
    --------
    >>> from lsqdiff.examples.score import run, summary
    >>> r = run("8gaussians", size="small", seeds=[0, 1], methods=["energy"])
    >>> mean, std = summary(r)["energy"]["asymmetry"]
    >>> mean < 1e-5
    True
    """
    import numpy as np

    def stats(values: list) -> tuple[float, float]:
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    out = {m: {k: stats([r[k] for r in rs]) for k, _, _ in COLUMNS}
           for m, rs in result["runs"].items()}
    out["data"] = {k: stats([f[k] for f in result["floor"]]) for k in ("swd", "mmd2")}
    return out


def describe(result: dict) -> str:
    """The Markdown table printed for one data set, with its settings.

    Examples
    --------
    >>> from lsqdiff.examples.score import describe, run
    >>> text = describe(run("moons", size="small", seeds=[0], methods=["unconstrained"]))
    >>> text.splitlines()[2]
    '| method | sliced W2 | MMD² | ‖J−Jᵀ‖/‖J‖ | RMS c (train pts) | held-out DSM loss | ms / step |'
    """
    s, table = result["settings"], summary(result)
    head = "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for m in [*result["runs"], "data"]:
        cells = []
        for k, _, f in COLUMNS:
            if k in table[m]:
                mean, std = table[m][k]
                cells.append(f"{mean:{f}} ± {std:{f}}")
            else:
                cells.append("")
        label = "data (train vs held-out)" if m == "data" else m
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    params = ", ".join(f"{m} {n:,}" for m, n in s["parameters"].items())
    return (f"score ({s['data']}, {s['size']}): dim {s['dim']}, MLP width {s['width']} x "
            f"{s['depth']} (SiLU; parameters: {params}); {s['levels']} noise levels "
            f"{s['sigma_max']}..{s['sigma_min']}; {s['steps']} Adam steps (lr {s['lr']}, batch "
            f"{s['batch']}); null-space {s['constraints']} constraints per step "
            f"({s['points']} points x {s['pairs']} probe pairs), gamma={s['gamma']}, LSMR "
            f"maxiter={s['maxiter']}; penalty mu={s['mu']}; annealed Langevin "
            f"{s['levels']} x {s['langevin_steps']} steps (step {s['ratio']} sigma_i^2) + "
            f"denoising; seeds {s['seeds']} (mean ± std)\n\n" + "\n".join(rows))


def plot(result: dict, out: str) -> list[str]:
    """Write the figures of one data set to folder ``out``; return their paths.

    ``score_<data>.png``: the held-out data, seed 0's samples per method and
    the RMS constraint residual over training (mean over seeds); for 2-D
    data also ``score_<data>_field.png``: each method's scaled score
    ``sigma s`` at a small noise level over its curl.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    import numpy as np

    data, methods = result["settings"]["data"], list(result["runs"])
    os.makedirs(out, exist_ok=True)
    first = result["first"]
    fig, axes = plt.subplots(1, len(methods) + 2, figsize=(3.2 * (len(methods) + 2), 3.4))
    panels = [("held-out data", first["test"])] + [(m, first[m]["samples"]) for m in methods]
    for ax, (title, x) in zip(axes, panels):
        x = x.numpy()
        if x.shape[1] == 2:
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal")
        else:
            grid = np.clip(x[:36], -1, 1).reshape(6, 6, 8, 8).transpose(0, 2, 1, 3)
            ax.imshow(grid.reshape(48, 48), cmap="gray_r")
            ax.axis("off")
        ax.set_title(title, fontsize=9)
    ax = axes[-1]
    for m in methods:
        traces = result["runs"][m]
        steps = [i for i, _ in traces[0]["trace"]]
        mean = np.mean([[r for _, r in t["trace"]] for t in traces], 0)
        ax.semilogy(steps, np.maximum(mean, 1e-9), label=m)
    ax.set_xlabel("step"), ax.set_title("RMS c at each step's points", fontsize=9)
    ax.legend(fontsize=7)
    paths = [os.path.join(out, f"score_{data}.png")]
    _save(fig, paths[0])
    if first["train"].shape[1] == 2:
        paths.append(os.path.join(out, f"score_{data}_field.png"))
        _plot_field(result, methods, paths[1])
    return paths


def _plot_field(result: dict, methods: list, path: str) -> None:
    import matplotlib.pyplot as plt
    import torch

    from ._score_model import asymmetry_at

    sigma = float(result["sigmas"][-3])
    fine = torch.linspace(-2.5, 2.5, 60)
    xf = torch.cartesian_prod(fine, fine)
    coarse = torch.linspace(-2.5, 2.5, 17)
    xc = torch.cartesian_prod(coarse, coarse)
    e1, e2 = torch.zeros_like(xf), torch.zeros_like(xf)
    e1[:, 0], e2[:, 1] = 1, 1
    pts = {"x": xf, "sigma": torch.full((1, 1), sigma), "u": e2, "w": e1}
    curls = {m: asymmetry_at(result["first"][m]["model"], pts).reshape(60, 60) for m in methods}
    vmax = max(float(c.abs().max()) for c in curls.values()) or 1.0
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.5))
    for ax, m in zip(axes, methods):
        im = ax.imshow(curls[m].T.numpy(), origin="lower", extent=(-2.5, 2.5, -2.5, 2.5),
                       cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        with torch.no_grad():
            f = result["first"][m]["model"](xc, torch.full((1, 1), sigma)).numpy()
        ax.quiver(xc[:, 0], xc[:, 1], f[:, 0], f[:, 1], scale=40, width=0.004)
        ax.set_title(f"{m}: sigma s and its curl", fontsize=9)
        ax.set_aspect("equal")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=f"curl at sigma = {sigma:.3f}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _json_ready(result: dict) -> dict:
    return {"settings": result["settings"], "runs": result["runs"], "floor": result["floor"],
            "summary": summary(result)}


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line: run the chosen data sets, print their tables, write
    ``score_results.json`` and the plots to ``--out``."""
    ap = argparse.ArgumentParser(prog="python -m lsqdiff.examples.score")
    ap.add_argument("--data", default=",".join(DATASETS),
                    help=f"comma-separated subset of {','.join(DATASETS)}")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--small", action="store_true",
                    help="a smoke test (seconds): its figures are not results")
    ap.add_argument("--out", default=".", help="folder for the plots and the JSON results")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    names = [d for d in args.data.split(",") if d]
    results = {}
    for name in names:
        result = run(name, size="small" if args.small else "full",
                     seeds=range(args.seeds), methods=[m for m in args.methods.split(",") if m],
                     progress=True)
        results[name] = result
        print(describe(result) + "\n", flush=True)
        if not args.no_plot:
            for path in plot(result, args.out):
                print(f"plot written to {path}")
        # After every data set, so that a long run keeps what it has finished.
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "score_results.json")
        with open(path, "w") as f:
            json.dump({n: _json_ready(r) for n, r in results.items()}, f, indent=1)
        print(f"results written to {path}", flush=True)
    if args.small:
        print("--small: a smoke test; these figures are not results.")
    return results


if __name__ == "__main__":
    main()
