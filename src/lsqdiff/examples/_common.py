"""Shared pieces of the examples: command line, table and plot output."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

METHODS = ("unconstrained", "penalty", "constrained")


def check_size(size: str) -> None:
    """Raise ``ValueError`` unless ``size`` is ``"full"`` or ``"small"``."""
    if size not in ("full", "small"):
        raise ValueError(f"size must be 'full' or 'small', got {size!r}")


def train_full_batch(method: str, model: Any, constraint: Callable[[dict], Any],
                     data_loss: Callable[[], Any], *, steps: int, lr: float, maxiter: int,
                     gamma: float, mu: float) -> tuple[list, float]:
    """Train a PyTorch ``model`` with Adam on the full batch one of three ways:
    ``"unconstrained"``, ``"penalty"`` (``data_loss() + mu ||c||^2``) or
    ``"constrained"`` (the null-space method, update placement).

    ``constraint(params)`` maps the model's named parameters to ``c``. Returns
    the trace of ``(step, ||c||)`` every 10 steps and at the last, and the
    training time in seconds.
    """
    import time

    import torch

    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if method == "constrained":
        opt = ConstrainedOptimizer(opt, constraint, model, gamma=gamma, maxiter=maxiter)
    trace = []
    start = time.perf_counter()
    for step in range(steps):
        opt.zero_grad()
        loss = data_loss()
        if method == "penalty":
            loss = loss + mu * torch.sum(constraint(dict(model.named_parameters())) ** 2)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            with torch.no_grad():
                c = constraint(dict(model.named_parameters()))
                trace.append((step, float(torch.linalg.norm(c))))
    return trace, time.perf_counter() - start


def format_table(result: dict, columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table with one row per method.

    Parameters
    ----------
    result : dict
        ``result[method][key]`` for each method of `METHODS`.
    columns : sequence of (key, header, format)
        Which figures to show, e.g. ``("test_rmse", "test RMSE", ".4f")``.
    """
    head = "| method | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    rows = [f"| {m} | " + " | ".join(format(result[m][k], f) for k, _, f in columns) + " |"
            for m in METHODS]
    return "\n".join([head, sep, *rows])


def new_figure(ncols: int, width: float = 11.0, height: float = 4.2):
    """A matplotlib figure with ``ncols`` panels, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # plots are written to files, never shown
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))


def plot_traces(ax: Any, result: dict, title: str, fontsize: int = 10,
                floor: float = 0.0) -> None:
    """Each method's constraint residual over the training steps, on a log
    scale; residuals below ``floor`` (exact zeros) are drawn at ``floor``."""
    for m in METHODS:
        steps, res = zip(*result[m]["trace"])
        ax.semilogy(steps, [max(r, floor) for r in res], label=m)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=fontsize)
    ax.legend(fontsize=8)


def save_figure(fig: Any, path: str) -> None:
    """Write ``fig`` to ``path`` (creating its folder) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(name: str, run: Callable[..., dict], describe: Callable[[dict], str],
         argv: Sequence[str] | None = None) -> dict:
    """Command line of an example: run it, print its table, save its plot.

    Parameters
    ----------
    name : str
        The example's name; the default plot is ``docs/img/nullspace_<name>.png``
        (relative to the working directory).
    run : callable
        The example's ``run(size, seed, plot)``.
    describe : callable
        Turns ``run``'s result into the text to print.
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(prog=f"python -m lsqdiff.examples.{name}")
    ap.add_argument("--small", action="store_true", help="the quick version used by the tests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=os.path.join("docs", "img", f"nullspace_{name}.png"),
                    help="where to write the PNG plot")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch CPU threads (default 1: on these tiny models more threads "
                         "only add synchronisation, which is very costly on a busy machine)")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(args.threads)
    plot = None if args.no_plot else args.plot
    result = run(size="small" if args.small else "full", seed=args.seed, plot=plot)
    print(describe(result))
    if plot is not None:
        print(f"\nplot written to {plot}")
    return result
