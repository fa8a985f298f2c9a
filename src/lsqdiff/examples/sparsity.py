"""Sparsity as a constraint: gradual magnitude pruning and a per-layer ℓ1 budget (PyTorch).

Two constraints on the weights of every Linear and Conv layer of a small CNN on
scikit-learn's digits (1,797 8x8 images, split 2:1 into training and test):

* **gradual magnitude pruning** (Zhu & Gupta 2017): at scheduled steps the
  smallest-magnitude free weights, over all layers at once, join the
  held-at-zero set, up to 90% of them; ``c(theta) = W[held]`` (linear, with
  a growing number of rows: ``J J^T = I``);
* **ℓ1 budget** (nonlinear): ``||W_l||_1 = tau_l`` for each layer ``l``, the
  budgets shrinking on the same schedule to a fraction of their initial
  values; the network is then pruned to 90% by global magnitude in one shot.

Each is trained with the null-space method (`lsqdiff.nullspace.torch.ConstrainedOptimizer`),
with an ℓ1 penalty and with Cooper's augmented Lagrangian; pruning also with
``torch.nn.utils.prune`` (global magnitude pruning on the same schedule, the
steps after the last cut fine-tune). All are scored at equal sparsity: the
held weights set to exactly 0, test accuracy. Several seeds, mean ± std.

``--vit`` runs the pruning constraint on a 49.6M-parameter vision transformer
(ViT-B width, 7 blocks, patch 2 on the 8x8 digits) for a fixed number of
steps: per-step time, peak memory and the constraint against unconstrained
training and Cooper.

    python -m lsqdiff.examples.sparsity [--small] [--seeds N] [--out DIR | --no-plot]
    python -m lsqdiff.examples.sparsity --vit [--steps N] [--batch B] [--out DIR]

Plots go to ``--out`` (default: a new temporary folder, printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ._common import check_size, new_figure, save_figure

SETTINGS = {
    "full": dict(epochs=30, batch=64, lr=2e-3, every=10, seeds=5),
    "small": dict(epochs=3, batch=64, lr=3e-3, every=5, seeds=1),
}
FINAL = 0.9  # share of the Linear/Conv weights held at zero at the end
GAMMA = 1.0  # pruning: the constraint is linear, remove the whole residual in one step
GAMMA_L1 = 1.0  # ℓ1 budget: nonlinear, but zero crossings make it drift: full correction
MAXITER = 10  # LSMR cap per step
MU = 1e-2  # ℓ1 penalty on the held weights
MU_L1 = 0.05  # ℓ1 penalty on all the weights, each layer relative to its initial ℓ1 norm
L1_RATIO = 0.5  # final ℓ1 budget / initial ℓ1 norm, per layer
RHO = 0.1  # Cooper: augmented-Lagrangian penalty coefficient and dual step

#: method -> (constraint family, how it is trained).
METHODS = {
    "dense": ("none", "Adam, no sparsity; pruned to 90% in one shot at the end"),
    "prune": ("pruning", "torch.nn.utils.prune global magnitude, same schedule"),
    "nullspace": ("pruning", f"null-space method, c = W[held], gamma {GAMMA}"),
    "penalty": ("pruning", f"Adam on loss + {MU} ||W[held]||_1"),
    "cooper": ("pruning", f"Cooper augmented Lagrangian on W[held], rho {RHO}"),
    "nullspace-l1": ("l1 budget", f"null-space method, ||W_l||_1 = tau_l, gamma {GAMMA_L1}"),
    "penalty-l1": ("l1 budget", f"Adam on loss + {MU_L1} sum_l ||W_l||_1 / ||W_l(0)||_1"),
    "cooper-l1": ("l1 budget", f"Cooper augmented Lagrangian on ||W_l||_1 = tau_l, rho {RHO}"),
}


def _cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _digits(seed: int, dtype: Any = None):
    """The digits as (N, 1, 8, 8) tensors in [0, 1], split 2:1."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=1 / 3, random_state=seed,
                                              stratify=y)

    def images(a):
        return torch.tensor(a, dtype=dtype or torch.float32).reshape(-1, 1, 8, 8)

    return images(x_tr), torch.tensor(y_tr), images(x_te), torch.tensor(y_te)


class Trainer:
    """One model trained one way (a `METHODS` key) under the sparsity schedule.

    ``step(x, y)`` takes one training step, first growing the held set (or
    shrinking the ℓ1 budgets) when the schedule says so; ``finish()`` sets
    the final held set to exactly 0 (one-shot global magnitude pruning for
    ``dense`` and the ℓ1 family).

    Parameters
    ----------
    method : str
        A key of `METHODS`.
    model : nn.Module
        Trained in place.
    plan : dict
        `lsqdiff.examples._pruning.schedule`: step -> target sparsity.
    lr : float
        Adam's learning rate.
    maxiter : int, optional
        LSMR cap of the null-space methods.

    Examples
    --------
    Hold half of a small network's weights at zero from step 2 on:

    >>> import torch
    >>> from lsqdiff.examples.sparsity import Trainer
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> trainer = Trainer("nullspace", model, {2: 0.5}, lr=1e-2)
    >>> x, y = torch.rand(32, 1, 8, 8), torch.randint(10, (32,))
    >>> for _ in range(4):
    ...     _ = trainer.step(x, y)
    >>> trainer.mask.sparsity(), trainer.residual() < 1e-8
    (0.5, True)
    >>> trainer.finish(); trainer.residual()
    0.0
    """

    def __init__(self, method: str, model: Any, plan: dict, lr: float, maxiter: int = MAXITER):
        import torch

        from lsqdiff.nullspace.torch import ConstrainedOptimizer

        from ._pruning import GradualMask, L1Budget, cooper_optimizer

        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.method, self.model, self.plan = method, model, plan
        self.family = METHODS[method][0]
        self.mask = GradualMask(model)
        self.budget = L1Budget(model, final_ratio=L1_RATIO)
        self.adam = torch.optim.Adam(model.parameters(), lr=lr)
        self.params = dict(model.named_parameters())
        self.step_count = 0
        self.infos: list = []
        dtype = next(model.parameters()).dtype
        self.nullspace = None
        if method == "nullspace":
            self.nullspace = ConstrainedOptimizer(self.adam, self.mask.constraint, model,
                                                  gamma=GAMMA, maxiter=maxiter)
        elif method == "nullspace-l1":
            self.nullspace = ConstrainedOptimizer(self.adam, self.budget.constraint, model,
                                                  gamma=GAMMA_L1, maxiter=maxiter)
        self.cooper = None
        if method == "cooper":
            self.cooper = cooper_optimizer(self.adam, lambda: self.mask.violation(self.params),
                                           self.mask.total, rho=RHO, dtype=dtype)
        elif method == "cooper-l1":
            self.cooper = cooper_optimizer(self.adam, lambda: self.budget.constraint(self.params),
                                           len(self.budget.names), rho=RHO, dtype=dtype)

    def weights(self) -> dict:
        """The pruned weights by name, as the forward pass uses them (for
        ``prune``: ``weight_orig * weight_mask``)."""
        modules = dict(self.model.named_modules())
        return {n: getattr(modules[n.rsplit(".", 1)[0]], "weight") for n in self.mask.names}

    def _prune_to(self, sparsity: float) -> None:
        if self.method != "prune":
            self.mask.grow(self.weights(), sparsity)
            return
        from torch.nn.utils import prune

        # torch's own global magnitude pruning makes the cut (among the weights
        # not yet pruned); our mask follows its masks, for the figures.
        modules = dict(self.model.named_modules())
        targets = [(modules[n.rsplit(".", 1)[0]], "weight") for n in self.mask.names]
        amount = round(sparsity * self.mask.total) - self.mask.count()
        if amount > 0:
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
            for n, (module, _) in zip(self.mask.names, targets):
                self.mask.masks[n] = module.weight_mask == 0

    def step(self, x: Any, y: Any) -> float:
        """One training step on the batch ``(x, y)``; returns its loss."""
        import torch

        if self.step_count in self.plan:
            target = self.plan[self.step_count]
            if self.family == "pruning":
                self._prune_to(target)
            elif self.family == "l1 budget":
                self.budget.set_progress(target / FINAL)
        self.step_count += 1

        def data_loss():
            return torch.nn.functional.cross_entropy(self.model(x), y)

        if self.cooper is not None:
            return float(self.cooper(data_loss).loss.detach())
        self.adam.zero_grad()
        loss = data_loss()
        if self.method == "penalty" and self.mask.count():
            loss = loss + MU * self.mask.constraint(self.params).abs().sum()
        elif self.method == "penalty-l1":
            loss = loss + MU_L1 * self.budget.penalty(self.params)
        loss.backward()
        if self.nullspace is not None and (self.method == "nullspace-l1" or self.mask.count()):
            self.nullspace.step()
            self.infos.append(self.nullspace.last_info)
        else:
            self.adam.step()
        return float(loss.detach())

    def residual(self) -> float:
        """The constraint's size now: max ``|w|`` over the held weights (pruning)
        or max ``|c_l|`` (ℓ1 budget)."""
        import torch

        if self.family == "l1 budget":
            with torch.no_grad():
                return float(self.budget.constraint(self.params).abs().max())
        return self.mask.max_abs(self.weights())

    def finish(self) -> None:
        """Hold the final sparsity exactly: grow the held set to `FINAL` (one shot
        where training did not) and set the held weights to 0."""
        from torch.nn.utils import prune

        if self.method == "prune" and self.mask.count():
            for n in self.mask.names:
                prune.remove(dict(self.model.named_modules())[n.rsplit(".", 1)[0]], "weight")
        self.mask.grow(self.weights(), FINAL)
        self.mask.zero_(self.weights())


def _accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _train(method: str, cfg: dict, data: tuple, seed: int) -> dict:
    """Train the digits CNN one way; return its figures (see `run`)."""
    import torch

    from ._pruning import schedule

    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)  # the same initial network and batches for every method
    model = _cnn().to(x_tr.dtype)
    per_epoch = math.ceil(len(y_tr) / cfg["batch"])
    plan = schedule(cfg["epochs"] * per_epoch, final=FINAL, every=cfg["every"])
    trainer = Trainer(method, model, plan, cfg["lr"])
    trace = []
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        for idx in torch.randperm(len(y_tr)).split(cfg["batch"]):
            loss = trainer.step(x_tr[idx], y_tr[idx])
            trace.append((trainer.step_count, loss, trainer.residual(), trainer.mask.sparsity()))
    seconds = time.perf_counter() - start
    residual = trainer.residual()
    accuracy_trained = _accuracy(model, x_te, y_te)
    trainer.finish()
    itn = [info.itn for info in trainer.infos]
    return {"test_accuracy": _accuracy(model, x_te, y_te), "trained_accuracy": accuracy_trained,
            "train_accuracy": _accuracy(model, x_tr, y_tr), "residual": residual,
            "sparsity": trainer.mask.sparsity(), "ms_per_step": 1e3 * seconds / len(trace),
            "lsmr_iterations": statistics.mean(itn) if itn else 0.0, "trace": trace}


def run(size: str = "full", seeds: int | None = None, methods: Sequence[str] | None = None,
        out: str | None = None) -> dict:
    """Train the digits CNN every way over several seeds.

    Parameters
    ----------
    size : {"full", "small"}
        ``"small"`` is the few-second version used by the tests (a smoke test).
    seeds : int, optional
        Seeds 0, 1, ... (each: split, initial network, batches); default 5
        (full) or 1 (small).
    methods : sequence of str, optional
        Keys of `METHODS` (default: all).
    out : str, optional
        Folder to write ``sparsity_digits.png`` to (needs matplotlib).

    Returns
    -------
    dict
        ``result["runs"][method]``: one dict per seed with ``test_accuracy``
        (at 90% sparsity, the held weights exactly 0), ``trained_accuracy``
        (before they were zeroed), ``train_accuracy``, ``residual`` (before
        zeroing: max ``|w|`` held, or max ``|c_l|`` of the ℓ1 budget),
        ``sparsity``, ``ms_per_step``, ``lsmr_iterations`` (mean per step) and
        ``trace`` (step, loss, residual, sparsity); ``result["summary"]``
        the mean and std of each figure; ``result["settings"]``.

    Examples
    --------
    >>> from lsqdiff.examples import sparsity
    >>> r = sparsity.run(size="small", methods=["prune"])
    >>> round(r["runs"]["prune"][0]["sparsity"], 3), r["runs"]["prune"][0]["residual"]
    (0.9, 0.0)
    >>> print(sparsity.describe(r).splitlines()[0])
    --small: a smoke test, not results
    """
    check_size(size)
    cfg = dict(SETTINGS[size])
    seeds = cfg.pop("seeds") if seeds is None else int(seeds)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds!r}")
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: {unknown} are not among {list(METHODS)}")
    runs: dict = {m: [] for m in methods}
    for seed in range(seeds):
        data = _digits(seed)
        for m in methods:
            runs[m].append(_train(m, cfg, data, seed))
    keys = ("test_accuracy", "trained_accuracy", "train_accuracy", "residual", "sparsity",
            "ms_per_step", "lsmr_iterations")
    summary = {m: {k: (statistics.mean(r[k] for r in rs),
                       statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0)
                   for k in keys} for m, rs in runs.items()}
    result = {"runs": runs, "summary": summary,
              "settings": dict(cfg, size=size, seeds=seeds, final=FINAL, gamma=GAMMA,
                               gamma_l1=GAMMA_L1, maxiter=MAXITER, mu=MU, mu_l1=MU_L1,
                               l1_ratio=L1_RATIO, rho=RHO,
                               parameters=sum(p.numel() for p in _cnn().parameters()))}
    if out is not None:
        result["plot"] = _plot(result, os.path.join(out, "sparsity_digits.png"))
    return result


def _plot(result: dict, path: str) -> str:
    fig, (ax, ax2) = new_figure(2, width=12.0)
    summary = result["summary"]
    names = list(summary)
    means = [summary[m]["test_accuracy"][0] for m in names]
    stds = [summary[m]["test_accuracy"][1] for m in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=3,
           color=["C0" if METHODS[m][0] == "pruning" else "C1" if METHODS[m][0] == "l1 budget"
                  else "C7" for m in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0.0, min(means) - 0.1), 1.0)
    ax.set_ylabel(f"test accuracy at {FINAL:.0%} sparsity")
    ax.set_title(f"digits CNN, mean ± std over {result['settings']['seeds']} seeds", fontsize=10)
    for m in names:
        if METHODS[m][0] == "pruning":
            steps, _, res, _ = zip(*result["runs"][m][0]["trace"])
            ax2.semilogy(steps, [max(r, 1e-12) for r in res], label=m, lw=1)
    ax2.set_xlabel("step")
    ax2.set_title("max |w| over the held weights (seed 0; 1e-12 = exact zeros)", fontsize=10)
    ax2.legend(fontsize=8)
    if result["settings"]["size"] == "small":
        fig.suptitle("--small: a smoke test, not results", color="C3")
    save_figure(fig, path)
    return path


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.sparsity`` (example: `run`)."""
    s = result["settings"]
    head = (f"sparsity ({s['size']}): CNN ({s['parameters']} parameters) on the digits, "
            f"{s['epochs']} epochs of Adam (lr {s['lr']}, batch {s['batch']}), pruning schedule "
            f"every {s['every']} steps to {s['final']:.0%} of the Linear/Conv weights; "
            f"{s['seeds']} seed(s), mean ± std\n\n")
    rows = ["| method | constraint | test acc. at 90% sparsity | acc. before zeroing | "
            "residual before zeroing | ms / step | LSMR its / step |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for m, f in result["summary"].items():
        def pm(key: str, fmt: str) -> str:
            return f"{format(f[key][0], fmt)} ± {format(f[key][1], fmt)}"
        rows.append(f"| {m} | {METHODS[m][0]} | {pm('test_accuracy', '.3f')} | "
                    f"{pm('trained_accuracy', '.3f')} | {f['residual'][0]:.1e} | "
                    f"{pm('ms_per_step', '.1f')} | {f['lsmr_iterations'][0]:.1f} |")
    text = head + "\n".join(rows)
    if s["size"] == "small":
        text = "--small: a smoke test, not results\n\n" + text
    return text


# ----------------------------------------------------------------------------
# At scale: the pruning constraint on a 49.6M-parameter vision transformer.

VIT_METHODS = ("unconstrained", "nullspace", "cooper")


def _vit_child(method: str, steps: int, batch: int, seed: int, lr: float) -> dict:
    """Train the ViT one way for ``steps`` steps in this process; per-step figures."""
    import torch
    from tqdm import tqdm

    from ._pruning import schedule
    from ._vit import VIT_50M, vit

    x_tr, y_tr, _, _ = _digits(seed)
    torch.manual_seed(seed)
    model = vit(**VIT_50M)
    # The held set grows over the first half of the run, every tenth of it.
    plan = schedule(steps, final=FINAL, start=0.0, end=0.5, every=max(steps // 10, 1))
    trainer = Trainer("dense" if method == "unconstrained" else method, model, plan, lr)
    if method == "unconstrained":
        trainer.plan = {}
    _reset_peak()
    rows = []
    bar = tqdm(range(steps), desc=f"ViT {method}", file=sys.stderr)
    for _ in bar:
        idx = torch.randint(len(y_tr), (batch,))
        t0 = time.perf_counter()
        loss = trainer.step(x_tr[idx], y_tr[idx])
        seconds = time.perf_counter() - t0
        info = trainer.infos[-1] if trainer.infos and trainer.mask.count() else None
        rows.append({"loss": loss, "seconds": seconds, "sparsity": trainer.mask.sparsity(),
                     "max_abs_held": trainer.mask.max_abs(trainer.weights()),
                     "lsmr_iterations": info.itn if info is not None else 0})
        bar.set_postfix(loss=f"{loss:.3f}", held=f"{rows[-1]['sparsity']:.2f}",
                        max_w=f"{rows[-1]['max_abs_held']:.1e}",
                        lsmr=rows[-1]["lsmr_iterations"])
    return {"rows": rows, "peak_rss": _peak_rss(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "pruned": trainer.mask.total}


def _reset_peak() -> None:
    """Linux: start the peak-RSS count (``VmHWM``) afresh."""
    if os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak_rss() -> int | None:
    """Linux: the process's peak resident memory since `_reset_peak` (bytes)."""
    if not os.path.exists("/proc/self/status"):
        return None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def run_vit(steps: int = 20, batch: int = 32, seed: int = 0, lr: float = 1e-4,
            methods: Sequence[str] = VIT_METHODS, out: str | None = None) -> dict:
    """Train the 49.6M-parameter ViT each way, each in a fresh process.

    Parameters
    ----------
    steps : int
        Training steps per method; the held set grows to 90% of the Linear and
        Conv weights over the first half of them.
    batch : int
        Batch of 8x8 digits per step.
    seed : int
        Seeds the initial network, the batches and the split.
    lr : float
        Adam's learning rate.
    methods : sequence of str
        Among ``"unconstrained"``, ``"nullspace"``, ``"cooper"``.
    out : str, optional
        Folder to write ``sparsity_vit.png`` to.

    Returns
    -------
    dict
        ``result[method]``: ``rows`` (per step: ``loss``, ``seconds``,
        ``sparsity``, ``max_abs_held``, ``lsmr_iterations``), ``peak_rss``
        (bytes, Linux; None elsewhere), ``parameters``, ``pruned``;
        ``result["settings"]``.

    Examples
    --------
    Minutes per step on a CPU (49.6M parameters), so not run by the tests:

    >>> from lsqdiff.examples import sparsity
    >>> r = sparsity.run_vit(steps=4, batch=8)  # doctest: +SKIP
    >>> print(sparsity.describe_vit(r))  # doctest: +SKIP
    """
    bad = [m for m in methods if m not in VIT_METHODS]
    if bad:
        raise ValueError(f"methods: {bad} are not among {VIT_METHODS}")
    # Freed tensors go back to the OS, so the peak RSS is the step's own.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result: dict = {}
    for m in methods:
        code = ("import json, sys; from lsqdiff.examples.sparsity import _vit_child; "
                "print(json.dumps(_vit_child(sys.argv[1], *map(int, sys.argv[2:5]), "
                "float(sys.argv[5]))))")
        proc = subprocess.run([sys.executable, "-c", code, m, str(steps), str(batch), str(seed),
                               str(lr)], env=env, stdout=subprocess.PIPE, text=True, check=True)
        result[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["settings"] = dict(steps=steps, batch=batch, seed=seed, lr=lr,
                              threads=_threads())
    if out is not None:
        result["plot"] = _plot_vit(result, os.path.join(out, "sparsity_vit.png"))
    return result


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _plot_vit(result: dict, path: str) -> str:
    fig, (ax, ax2) = new_figure(2)
    for m in VIT_METHODS:
        if m in result:
            rows = result[m]["rows"]
            ax.plot([r["loss"] for r in rows], label=m)
            if m != "unconstrained":
                ax2.semilogy([max(r["max_abs_held"], 1e-12) for r in rows], label=m)
    ax.set_xlabel("step")
    ax.set_title("training loss (ViT, 49.6M parameters)", fontsize=10)
    ax.legend(fontsize=8)
    ax2.set_xlabel("step")
    ax2.set_title("max |w| over the held weights (1e-12 = exact zeros)", fontsize=10)
    ax2.legend(fontsize=8)
    save_figure(fig, path)
    return path


def describe_vit(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.sparsity --vit`` (example: `run_vit`)."""
    s = result["settings"]
    methods = [m for m in VIT_METHODS if m in result]
    first = result[methods[0]]
    head = (f"ViT ({first['parameters'] / 1e6:.1f}M parameters, {first['pruned'] / 1e6:.1f}M in "
            f"Linear/Conv weights) on the 8x8 digits, {s['steps']} steps of Adam (lr {s['lr']}, "
            f"batch {s['batch']}), {s['threads']} threads; held set grown to {FINAL:.0%} over the "
            f"first half\n\n")
    rows = ["| method | s / step (median) | / unconstrained | peak RSS (MiB) | / unconstrained "
            "| final loss | final max abs held w | LSMR its / step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = result.get("unconstrained")

    def median_s(r: dict) -> float:
        return statistics.median(row["seconds"] for row in r["rows"][1:] or r["rows"])

    for m in methods:
        r = result[m]
        t = median_s(r)
        its = [row["lsmr_iterations"] for row in r["rows"] if row["lsmr_iterations"]]
        peak = r["peak_rss"]
        rel_t = f"{t / median_s(base):.2f}" if base else "-"
        rel_m = f"{peak / base['peak_rss']:.2f}" if base and peak and base["peak_rss"] else "-"
        rows.append(f"| {m} | {t:.2f} | {rel_t} | "
                    f"{peak / 2**20:.0f} | {rel_m} | {r['rows'][-1]['loss']:.3f} | "
                    f"{r['rows'][-1]['max_abs_held']:.1e} | "
                    f"{statistics.mean(its) if its else 0:.1f} |" if peak else
                    f"| {m} | {t:.2f} | {rel_t} | - | - | {r['rows'][-1]['loss']:.3f} | "
                    f"{r['rows'][-1]['max_abs_held']:.1e} | - |")
    return head + "\n".join(rows)


def _can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: ``python -m lsqdiff.examples.sparsity --help``."""
    ap = argparse.ArgumentParser(prog="python -m lsqdiff.examples.sparsity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a smoke test (what the tests run)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 1 small)")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(METHODS) + list(VIT_METHODS))
    ap.add_argument("--vit", action="store_true", help="the 49.6M-parameter ViT instead")
    ap.add_argument("--steps", type=int, default=20, help="ViT: training steps per method")
    ap.add_argument("--batch", type=int, default=32, help="ViT: batch size")
    ap.add_argument("--out", default=None,
                    help="folder for the plots (default: a new temporary folder)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--threads", type=int, default=None,
                    help="PyTorch CPU threads (default: 1 for the CNN, torch's default for "
                         "the ViT)")
    args = ap.parse_args(argv)
    import torch

    threads = args.threads or (None if args.vit else 1)
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the ViT's child processes
    out = None
    if not args.no_plot and not _can_plot():
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    elif not args.no_plot:
        out = args.out or tempfile.mkdtemp(prefix="lsqdiff-sparsity-")
        os.makedirs(out, exist_ok=True)
    if args.vit:
        result = run_vit(steps=args.steps, batch=args.batch, out=out,
                         methods=args.methods or VIT_METHODS)
        print(describe_vit(result))
    else:
        result = run(size="small" if args.small else "full", seeds=args.seeds,
                     methods=args.methods, out=out)
        print(describe(result))
    if out is not None:
        print(f"\nplot written to {result['plot']}"
              + (" (--small: a smoke test, not results)" if args.small else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
