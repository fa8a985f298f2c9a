"""GP hyperparameters by predictive fit against the marginal likelihood, on real data.

Same splits (`lsqdiff.examples.gp_data`), same starting hyperparameters, several
seeds. Methods:

* ``start``: the RFF GP at its starting hyperparameters, untuned.
* ``rff-predictive``: the RFF GP tuned by the validation NLPD of its posterior
  mean, differentiated through the damped LSMR solve (`lsqdiff.examples.gp`).
* ``rff-marginal``: the same model tuned by its exact marginal likelihood on the
  training split (``D x D`` Cholesky).
* ``gpytorch-ml`` / ``gpytorch-loo``: GPyTorch ``ExactGP``, ARD RBF kernel
  (``ScaleKernel(RBFKernel(ard_num_dims=d))``, Gaussian likelihood), trained by
  the exact marginal likelihood or by ``LeaveOneOutPseudoLikelihood`` on a
  random subset of the training split (its size is printed).
* ``sklearn``: scikit-learn ``GaussianProcessRegressor`` with
  ``ConstantKernel * RBF(ARD) + WhiteKernel`` (L-BFGS-B, no restarts) on a
  smaller subset.

All tune on the training split (the predictive method also reads the
validation split); the RFF posteriors condition on the whole training split.
Test RMSE and NLPD are in standardised target units. NLPD uses each method's
predictive variance: the plug-in ``sigma^2`` for the RFF models (see
`lsqdiff.examples.gp`), the exact GP posterior variance plus noise for
GPyTorch and scikit-learn.

    python -m lsqdiff.examples.gp_compare --dataset diamonds [--seeds 0 1 2]
        [--small] [--out DIR] [--methods ...] [--steps N] [--features D] [--rows N]
        [--gp-subset N]
    python -m lsqdiff.examples.gp_compare --merge run0/gp_diamonds.json run1/... --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from ._common import new_figure, save_figure
from .gp_data import DATASETS, load

METHODS = ("start", "rff-predictive", "rff-marginal", "gpytorch-ml", "gpytorch-loo", "sklearn")

#: Per data set: RFF features, Adam steps and learning rate, LSMR tolerance while
#: tuning, GPyTorch subset and steps, scikit-learn subset, steps between traced points.
SETTINGS = {
    "diamonds": dict(features=256, steps=20, lr=0.1, tol=1e-4, gp_subset=1000, gp_steps=60,
                     sk_subset=1000, every=4),
    # a reduced budget (about 7 min per RFF method and seed on one thread); GPyTorch on the
    # largest subset that trains in a few minutes here
    "flights": dict(features=1024, steps=10, lr=0.1, tol=1e-4, gp_subset=3000, gp_steps=60,
                    sk_subset=1000, every=2),
    # 265 training rows: fixed frequencies (32 x 10 trained ones overfit 88 validation rows)
    "diabetes": dict(features=64, steps=100, lr=0.05, tol=1e-6, gp_subset=None, gp_steps=100,
                     sk_subset=None, every=10, train_frequencies=False),
}
SMALL = dict(limit=3000, features=64, steps=15, gp_subset=300, gp_steps=15, sk_subset=200,
             every=5)
START = dict(lengthscale=1.0, amplitude=1.0, noise=0.3)
TRACE_ROWS = 1000  # rows of each split scored for the GPyTorch curves


def _tensors(data: dict) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in data.items() if k[:2] in ("X_", "y_")}


def _scores(y: Any, mean: Any, var: Any) -> dict:
    from .gp import gaussian_nlpd

    return {"rmse": float(((mean - y) ** 2).mean().sqrt()), "nlpd": float(gaussian_nlpd(y, mean,
                                                                                         var))}


def _rff(name: str, T: dict, cfg: dict, seed: int, progress: bool) -> dict:
    """Tune the RFF GP (``rff-predictive``, ``rff-marginal``) or only score its start."""
    import torch

    from .gp import RFFGP, fit

    gp = RFFGP(T["X_train"].shape[1], cfg["features"], seed=seed,
               train_frequencies=cfg.get("train_frequencies", True), **START)
    before = gp.lengthscale.detach().tolist()
    trace: list = []

    def score() -> dict:
        with torch.no_grad():
            w, info = gp.posterior_weights(T["X_train"], T["y_train"], atol=cfg["tol"],
                                           btol=cfg["tol"])
            val = _scores(T["y_val"], *gp.predict(T["X_val"], w))
            test = _scores(T["y_test"], *gp.predict(T["X_test"], w))
        return {"val_nlpd": val["nlpd"], "test_rmse": test["rmse"], "test_nlpd": test["nlpd"],
                "itn": int(info.itn)}

    first = score()
    trace.append((0.0, first["val_nlpd"], first["test_rmse"]))
    if name == "start":
        return {**first, "seconds": 0.0, "itn_per_solve": first["itn"], "trace": trace,
                "lengthscale_before": before, "lengthscale_after": before}

    def record(r: dict) -> None:
        if (r["step"] + 1) % cfg["every"] == 0 or r["step"] + 1 == cfg["steps"]:
            s = score()
            trace.append((r["seconds"], s["val_nlpd"], s["test_rmse"]))

    objective = "predictive" if name == "rff-predictive" else "marginal"
    hist = fit(gp, T["X_train"], T["y_train"], T["X_val"], T["y_val"], objective=objective,
               loss="nlpd", steps=cfg["steps"], lr=cfg["lr"], atol=cfg["tol"], btol=cfg["tol"],
               progress=progress, callback=record)
    last = score()
    itn = [h["itn"] for h in hist] if objective == "predictive" else []
    return {**last, "seconds": hist[-1]["seconds"] if hist else 0.0,
            "itn_per_solve": statistics.mean(itn) if itn else float("nan"), "trace": trace,
            "lengthscale_before": before, "lengthscale_after": gp.lengthscale.detach().tolist(),
            "noise": float(gp.noise)}


def _subset(n: int, size: int | None, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(1000 + seed)
    return np.arange(n) if size is None or size >= n else np.sort(rng.choice(n, size, False))


def _gpytorch(name: str, T: dict, cfg: dict, seed: int, progress: bool) -> dict:
    import gpytorch
    import torch

    idx = torch.from_numpy(_subset(T["X_train"].shape[0], cfg["gp_subset"], seed))
    X, y = T["X_train"][idx], T["y_train"][idx]
    d = X.shape[1]

    class Exact(gpytorch.models.ExactGP):
        def __init__(self, likelihood: Any):
            super().__init__(X, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(ard_num_dims=d))

        def forward(self, x: Any) -> Any:
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                             self.covar_module(x))

    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = Exact(likelihood).double()
    # The same start as the RFF models.
    model.covar_module.base_kernel.lengthscale = torch.full((1, d), START["lengthscale"])
    model.covar_module.outputscale = START["amplitude"] ** 2
    likelihood.noise = START["noise"] ** 2
    before = model.covar_module.base_kernel.lengthscale.detach().reshape(-1).tolist()
    # Cholesky, not GPyTorch's default CG/Lanczos above 800 rows: exact and, at
    # these sizes, faster.
    exact = gpytorch.settings.max_cholesky_size(len(idx) + 1)
    mll = (gpytorch.mlls.ExactMarginalLogLikelihood if name == "gpytorch-ml"
           else gpytorch.mlls.LeaveOneOutPseudoLikelihood)(likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    def score(rows: int | None = None) -> dict:
        model.eval()
        likelihood.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False), exact:
            out = {}
            for split in ("val", "test"):
                # in chunks: the predictive of a whole split would form its n x n covariance
                X_s = T[f"X_{split}"][:rows]
                parts = [likelihood(model(X_s[i:i + 2048])) for i in range(0, len(X_s), 2048)]
                out[split] = _scores(T[f"y_{split}"][:rows], torch.cat([p.mean for p in parts]),
                                     torch.cat([p.variance for p in parts]))
        model.train()
        likelihood.train()
        return {"val_nlpd": out["val"]["nlpd"], "test_rmse": out["test"]["rmse"],
                "test_nlpd": out["test"]["nlpd"]}

    # The curves score the first TRACE_ROWS rows of each split (the exact predictive
    # variance costs O(m^2) per point); the final figures score the whole splits.
    s = score(TRACE_ROWS)
    trace = [(0.0, s["val_nlpd"], s["test_rmse"])]
    steps = cfg["gp_steps"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=name, leave=False)
    elapsed = 0.0
    model.train()
    likelihood.train()
    for step in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        with exact:
            loss = -mll(model(X), y)
            loss.backward()
        opt.step()
        elapsed += time.perf_counter() - start
        if bar is not None:
            bar.set_postfix(objective=f"{float(loss.detach()):.4f}")
            bar.update()
        if (step + 1) % max(1, steps // 6) == 0 and step + 1 < steps:
            s = score(TRACE_ROWS)
            trace.append((elapsed, s["val_nlpd"], s["test_rmse"]))
    if bar is not None:
        bar.close()
    s = score()
    trace.append((elapsed, s["val_nlpd"], s["test_rmse"]))
    return {**s, "seconds": elapsed, "itn_per_solve": float("nan"), "trace": trace,
            "lengthscale_before": before,
            "lengthscale_after": model.covar_module.base_kernel.lengthscale.detach()
            .reshape(-1).tolist(), "subset": len(idx)}


def _sklearn(T: dict, cfg: dict, seed: int) -> dict:
    import numpy as np
    import torch
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    idx = _subset(T["X_train"].shape[0], cfg["sk_subset"], seed)
    X, y = T["X_train"].numpy()[idx], T["y_train"].numpy()[idx]
    d = X.shape[1]
    kernel = (ConstantKernel(START["amplitude"] ** 2)
              * RBF(np.full(d, START["lengthscale"]), length_scale_bounds=(1e-3, 1e4))
              + WhiteKernel(START["noise"] ** 2, noise_level_bounds=(1e-6, 1e1)))
    gpr = GaussianProcessRegressor(kernel, random_state=seed)
    start = time.perf_counter()
    gpr.fit(X, y)
    seconds = time.perf_counter() - start
    out = {}
    for split in ("val", "test"):
        mean, std = gpr.predict(T[f"X_{split}"].numpy(), return_std=True)
        out[split] = _scores(T[f"y_{split}"], torch.from_numpy(mean), torch.from_numpy(std ** 2))
    return {"val_nlpd": out["val"]["nlpd"], "test_rmse": out["test"]["rmse"],
            "test_nlpd": out["test"]["nlpd"], "seconds": seconds, "itn_per_solve": float("nan"),
            "trace": [(seconds, out["val"]["nlpd"], out["test"]["rmse"])],
            "lengthscale_before": [START["lengthscale"]] * d,
            "lengthscale_after": gpr.kernel_.k1.k2.length_scale.tolist(), "subset": len(idx)}


def run(dataset: str = "diamonds", seeds: Sequence[int] = (0, 1, 2), *, small: bool = False,
        methods: Sequence[str] = METHODS, steps: int | None = None,
        features: int | None = None, rows: int | None = None, gp_subset: int | None = None,
        progress: bool = False, out: str | None = None) -> dict:
    """Run the comparison and return ``result[method]`` with per-seed figures.

    Parameters
    ----------
    dataset : {"diamonds", "flights", "diabetes"}
    seeds : sequence of int
        One split and one set of initial frequencies per seed.
    small : bool
        A quick smoke test: 3,000 rows, 64 features, 15 steps (its figures are
        not results).
    methods : sequence of str
        A subset of `METHODS`.
    steps, features : int, optional
        Override the data set's RFF steps and feature count.
    rows : int, optional
        Keep this many rows of the data set (at random, before splitting).
    gp_subset : int, optional
        Override the data set's GPyTorch training subset size.
    progress : bool
        tqdm bars while tuning.
    out : str, optional
        Folder for ``gp_<dataset>.json`` and ``gp_<dataset>.png``.

    Returns
    -------
    dict
        ``result[method]["seeds"]``: one dict per seed (``test_rmse``,
        ``test_nlpd``, ``val_nlpd``, ``seconds``, ``itn_per_solve``, ``trace``
        of (seconds, val NLPD, test RMSE), lengthscales before and after);
        ``result["settings"]``.

    Examples
    --------
    >>> from lsqdiff.examples.gp_compare import run
    >>> r = run("diabetes", seeds=[0], small=True, methods=["start", "rff-predictive"])
    >>> r["rff-predictive"]["seeds"][0]["test_rmse"] < r["start"]["seeds"][0]["test_rmse"]
    True
    """
    import torch

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {bad}; choose from {METHODS}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    cfg = dict(SETTINGS[dataset])
    if small:
        cfg.update(SMALL)
        if dataset == "diabetes":
            cfg.update(gp_subset=None, sk_subset=None)
    if gp_subset is not None and (not isinstance(gp_subset, int) or gp_subset < 1):
        raise ValueError(f"gp_subset must be a positive integer, got {gp_subset!r}")
    cfg.update({k: v for k, v in (("steps", steps), ("features", features), ("limit", rows),
                                  ("gp_subset", gp_subset)) if v is not None})
    result: dict = {m: {"seeds": []} for m in methods}
    for seed in seeds:
        data = load(dataset, seed, limit=cfg.get("limit"))
        T = _tensors(data)
        cfg["rows"] = data["rows"]
        cfg["train"], cfg["dims"] = T["X_train"].shape
        torch.manual_seed(seed)
        for m in methods:
            if m.startswith("rff") or m == "start":
                r = _rff(m, T, cfg, seed, progress)
            elif m.startswith("gpytorch"):
                r = _gpytorch(m, T, cfg, seed, progress)
            else:
                r = _sklearn(T, cfg, seed)
            result[m]["seeds"].append(r)
            if progress:
                print(f"  seed {seed} {m}: test RMSE {r['test_rmse']:.4f}, NLPD "
                      f"{r['test_nlpd']:.4f}, {r['seconds']:.1f} s", flush=True)
    result["settings"] = dict(cfg, dataset=dataset, seeds=list(seeds), small=small,
                              columns=data["columns"], start=START)
    if out is not None:
        _write(result, out)
    return result


def _write(result: dict, out: str) -> None:
    name = f"gp_{result['settings']['dataset']}"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(out, f"{name}.png"))


def merge(results: Sequence[dict]) -> dict:
    """One result from runs of the same data set and settings, each on some
    seeds and methods (e.g. one process per seed): every method must have run
    once on each seed.

    Examples
    --------
    >>> from lsqdiff.examples.gp_compare import merge
    >>> a = {"start": {"seeds": [{"test_rmse": 1.0}]}, "settings": {"seeds": [0], "steps": 5}}
    >>> b = {"start": {"seeds": [{"test_rmse": 2.0}]}, "settings": {"seeds": [1], "steps": 5}}
    >>> m = merge([a, b])
    >>> m["settings"]["seeds"], [r["test_rmse"] for r in m["start"]["seeds"]]
    ([0, 1], [1.0, 2.0])
    """
    if not results:
        raise ValueError("results: nothing to merge")
    keep = {k: v for k, v in results[0]["settings"].items() if k != "seeds"}
    same = ("dataset", "rows", "train", "small", "features", "steps", "lr", "tol")
    for r in results[1:]:
        if any(r["settings"].get(k) != keep.get(k) for k in same):
            raise ValueError("results: runs of different data sets or RFF settings")
        for k, v in r["settings"].items():  # the baselines' settings, from their own runs
            if k.startswith(("gp_", "sk_")) and any(m.startswith(k[:2]) for m in r):
                keep[k] = v
    seeds = sorted({s for r in results for s in r["settings"]["seeds"]})
    out: dict = {}
    for m in METHODS:
        runs = [(r["settings"]["seeds"], r[m]["seeds"]) for r in results if m in r]
        if runs:  # each method's figures in seed order
            pairs = sorted(((seed, fig) for ss, figs in runs for seed, fig in zip(ss, figs)),
                           key=lambda p: p[0])
            if [seed for seed, _ in pairs] != seeds:
                raise ValueError(f"results: {m} was not run once on each seed {seeds}")
            out[m] = {"seeds": [fig for _, fig in pairs]}
    out["settings"] = dict(keep, seeds=seeds)
    return out


def _mean_std(values: list[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def seconds_to_reach(result: dict) -> list[float]:
    """Per seed: the tuning time at which ``rff-predictive`` first reached the
    final test RMSE of ``rff-marginal`` (NaN if it never did), at the traced
    points."""
    out = []
    for pred, marg in zip(result["rff-predictive"]["seeds"], result["rff-marginal"]["seeds"]):
        hits = [t for t, _, rmse in pred["trace"] if rmse <= marg["test_rmse"]]
        out.append(hits[0] if hits else float("nan"))
    return out


def describe(result: dict) -> str:
    """The Markdown table of a `run` (mean ± std over seeds)."""
    s = result["settings"]
    methods = [m for m in METHODS if m in result]
    lines = [f"{s['dataset']}{' (--small: a smoke test, not results)' if s['small'] else ''}: "
             f"{s['rows']} rows, {s['train']} train x {s['dims']} inputs; RFF D={s['features']}, "
             f"{s['steps']} Adam steps (lr {s['lr']}), LSMR atol=btol={s['tol']}; GPyTorch "
             f"{s['gp_steps']} steps; seeds {s['seeds']}", "",
             "| method | train rows used | test RMSE | test NLPD | tuning time (s) | "
             "LSMR itn / solve |", "|---|---:|---:|---:|---:|---:|"]
    for m in methods:
        rs = result[m]["seeds"]
        rows = rs[0].get("subset", s["train"])
        lines.append(f"| {m} | {rows} | {_mean_std([r['test_rmse'] for r in rs], '.4f')} | "
                     f"{_mean_std([r['test_nlpd'] for r in rs], '.3f')} | "
                     f"{_mean_std([r['seconds'] for r in rs], '.1f')} | "
                     f"{_mean_std([r['itn_per_solve'] for r in rs], '.0f')} |")
    if "rff-predictive" in result and "rff-marginal" in result:
        reach = seconds_to_reach(result)
        hits = sum(map(math.isfinite, reach))
        marginal = _mean_std([r["seconds"] for r in result["rff-marginal"]["seeds"]], ".1f")
        lines += ["", (f"rff-predictive reached rff-marginal's final test RMSE after "
                       f"{_mean_std(reach, '.1f')} s of tuning in {hits} of {len(reach)} seeds"
                       if hits else "rff-predictive did not reach rff-marginal's final test "
                       "RMSE in any seed") + f" (rff-marginal tuned for {marginal} s)"]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Validation NLPD and test RMSE against tuning time (seed 0), and the
    lengthscales before and after tuning (seed 0)."""
    import numpy as np

    s = result["settings"]
    fig, (a1, a2, a3) = new_figure(3, width=15.0)
    methods = [m for m in METHODS if m in result and m != "start"]
    for m in methods:
        t, val, rmse = (np.array(c) for c in zip(*result[m]["seeds"][0]["trace"]))
        style = "o" if len(t) == 1 else ".-"
        a1.plot(np.maximum(t, 1e-2), val, style, label=m)
        a2.plot(np.maximum(t, 1e-2), rmse, style, label=m)
    if "start" in result:
        for ax, key in ((a1, "val_nlpd"), (a2, "test_rmse")):
            ax.axhline(result["start"]["seeds"][0][key], color="0.6", ls=":", label="start")
    for ax, title in ((a1, "validation NLPD"), (a2, "test RMSE")):
        ax.set_xscale("log")
        ax.set_xlabel("tuning wall time (s), seed 0")
        ax.set_title(f"{s['dataset']}: {title}", fontsize=10)
        ax.legend(fontsize=7)
    width = 0.8 / (len(methods) + 1)
    dims = np.arange(s["dims"])
    a3.bar(dims, result[methods[0]]["seeds"][0]["lengthscale_before"], width, color="0.6",
           label="start")
    for i, m in enumerate(methods):
        a3.bar(dims + (i + 1) * width, result[m]["seeds"][0]["lengthscale_after"], width,
               label=m)
    a3.set_yscale("log")
    a3.set_xticks(dims + 0.4 - width / 2)
    a3.set_xticklabels(s["columns"], rotation=90, fontsize=6)
    a3.set_title("ARD lengthscales (seed 0)", fontsize=10)
    a3.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m lsqdiff.examples.gp_compare")
    ap.add_argument("--dataset", choices=DATASETS, default="diamonds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--small", action="store_true",
                    help="a quick smoke test on 3,000 rows (its figures are not results)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, help="RFF Adam steps (default: per data set)")
    ap.add_argument("--features", type=int, help="RFF features D (default: per data set)")
    ap.add_argument("--rows", type=int, help="keep this many rows (default: all)")
    ap.add_argument("--gp-subset", type=int,
                    help="GPyTorch training rows (default: per data set)")
    ap.add_argument("--out", default=".", help="folder for the JSON and PNG (default: .)")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only merge the JSON results of earlier runs (one per seed) into "
                         "one table, JSON and plot in --out")
    args = ap.parse_args(argv)
    if args.merge:
        parts = []
        for path in args.merge:
            with open(path) as f:
                parts.append(json.load(f))
        result = merge(parts)
        _write(result, args.out)
        print(describe(result))
        return result
    import torch

    torch.set_num_threads(args.threads)
    result = run(args.dataset, args.seeds, small=args.small, methods=args.methods,
                 steps=args.steps, features=args.features, rows=args.rows,
                 gp_subset=args.gp_subset, progress=True, out=args.out)
    print(describe(result))
    if args.small:
        print("\n--small: the figures above are a smoke test, not results")
    print(f"\nwritten: {os.path.join(args.out, f'gp_{args.dataset}.json')} and .png")
    return result


if __name__ == "__main__":
    main()
