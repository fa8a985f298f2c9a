"""Sparsity: a small CNN on scikit-learn's digits with 90% of a layer held at zero (PyTorch).

The constraint is ``c(θ) = W[mask]``: a fixed random 90% of the entries of the
first fully connected layer (512 x 64) must be zero, 29,491 constraints. It is
linear, so J J^T = I and LSMR needs one or two iterations; with ``gamma = 1``
the first projected step removes the whole residual and later steps keep the
masked entries at zero up to rounding. The digits (1,797 8x8 images, bundled
with scikit-learn) are split 2:1 into training and test sets.

    python -m lsqdiff.examples.sparsity [--small] [--seed N] [--plot PATH | --no-plot]
"""

from __future__ import annotations

import time

from ._common import (METHODS, check_size, format_table, main, new_figure, plot_traces,
                      save_figure)

SETTINGS = {
    "full": dict(epochs=30, batch=64, lr=2e-3, maxiter=10),
    "small": dict(epochs=4, batch=64, lr=3e-3, maxiter=5),
}
FRACTION = 0.9  # share of fc1's weights held at zero
GAMMA = 1.0  # the constraint is linear: remove the whole residual at once
MU = 1.0  # penalty weight: loss + MU * ||W[mask]||^2


def _cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _digits(seed: int):
    """The digits as (N, 1, 8, 8) float32 tensors in [0, 1], split 2:1."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=1 / 3, random_state=seed,
                                              stratify=y)

    def images(a):
        return torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)

    return images(x_tr), torch.tensor(y_tr), images(x_te), torch.tensor(y_te)


def _train(method: str, cfg: dict, data: tuple, mask, seed: int) -> dict:
    import torch

    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)  # the same initial network and batches for every method
    model = _cnn()
    fc1 = model[6].weight
    adam = torch.optim.Adam(model.parameters(), lr=cfg["lr"])

    def constraint(params: dict):
        return params["6.weight"][mask]

    opt = adam
    if method == "constrained":
        opt = ConstrainedOptimizer(adam, constraint, model, gamma=GAMMA, maxiter=cfg["maxiter"])
    trace = []
    step = 0
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        for idx in torch.randperm(len(y_tr)).split(cfg["batch"]):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            if method == "penalty":
                loss = loss + MU * torch.sum(fc1[mask] ** 2)
            loss.backward()
            opt.step()
            trace.append((step, float(torch.linalg.norm(fc1.detach()[mask]))))
            step += 1
    seconds = time.perf_counter() - start
    with torch.no_grad():
        masked = fc1[mask]
        return {
            "residual": float(torch.linalg.norm(masked)),
            "max_abs_masked": float(masked.abs().max()),
            "exact_zeros": float((masked == 0).float().mean()),
            "free_rms": float(torch.sqrt(torch.mean(fc1[~mask] ** 2))),
            "test_accuracy": float((model(x_te).argmax(1) == y_te).float().mean()),
            "train_accuracy": float((model(x_tr).argmax(1) == y_tr).float().mean()),
            "seconds": seconds,
            "masked_weights": masked.tolist(),
            "trace": trace,
        }


def run(size: str = "full", seed: int = 0, plot: str | None = None) -> dict:
    """Train the three ways and return their figures.

    Parameters
    ----------
    size : {"full", "small"}
        ``"small"`` is the few-second version used by the tests.
    seed : int
        Seeds the split, the mask, the (shared) initial network and the batches.
    plot : str, optional
        Path of a PNG to write (needs matplotlib).

    Returns
    -------
    dict
        ``result[method]`` for method in ``"unconstrained"``, ``"penalty"``,
        ``"constrained"``: ``residual`` (2-norm of the masked weights),
        ``max_abs_masked``, ``exact_zeros`` (share of masked weights that are
        exactly 0.0), ``free_rms`` (RMS of the other weights of the layer),
        ``test_accuracy``, ``train_accuracy``, ``seconds``,
        ``masked_weights`` and ``trace``; and ``settings``.
    """
    import torch

    check_size(size)
    cfg = SETTINGS[size]
    data = _digits(seed)
    g = torch.Generator().manual_seed(seed)
    shape = _cnn()[6].weight.shape
    mask = torch.rand(shape, generator=g) < FRACTION
    result = {m: _train(m, cfg, data, mask, seed) for m in METHODS}
    result["settings"] = dict(cfg, size=size, seed=seed, gamma=GAMMA, mu=MU, fraction=FRACTION,
                              constraints=int(mask.sum()), train=len(data[1]), test=len(data[3]),
                              parameters=sum(p.numel() for p in _cnn().parameters()))
    if plot is not None:
        _plot(result, plot)
    return result


def _plot(result: dict, path: str) -> None:
    import numpy as np

    fig, (ax, ax2) = new_figure(2)
    for m in METHODS:
        w = np.abs(np.asarray(result[m]["masked_weights"]))
        ax.hist(np.log10(np.maximum(w, 1e-12)), bins=60, histtype="step", lw=1.3,
                label=f"{m} (test acc. {result[m]['test_accuracy']:.3f})")
    ax.set_xlabel("log10 |w| of the masked weights (|w| <= 1e-12, exact zeros included, at -12)")
    ax.set_title("masked weights of fc1 after training", fontsize=10)
    ax.legend(fontsize=8)
    plot_traces(ax2, result, "||W[mask]||", floor=1e-12)
    save_figure(fig, path)


def describe(result: dict) -> str:
    """The table printed by ``python -m lsqdiff.examples.sparsity``."""
    s = result["settings"]
    return (f"sparsity ({s['size']}): CNN on the digits ({s['train']} train / {s['test']} test), "
            f"{s['parameters']} parameters, {s['constraints']} constraints ({s['fraction']:.0%} of "
            f"fc1 at zero), {s['epochs']} epochs of Adam (lr {s['lr']}, batch {s['batch']}); "
            f"null-space gamma={s['gamma']}, LSMR maxiter={s['maxiter']}; penalty mu={s['mu']}\n\n"
            + format_table(result, [
                ("residual", "||W[mask]||", ".2e"),
                ("max_abs_masked", "max |W[mask]|", ".2e"),
                ("exact_zeros", "share exactly 0", ".3f"),
                ("train_accuracy", "train acc.", ".3f"),
                ("test_accuracy", "test acc.", ".3f"),
                ("seconds", "train time (s)", ".1f"),
            ]))


if __name__ == "__main__":
    main("sparsity", run, describe)
