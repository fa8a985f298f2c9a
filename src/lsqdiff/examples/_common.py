"""Shared pieces of the examples: command line, table and plot output."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

from ._compare import LABELS, methods_of, run_seeds, seed_table

METHODS = ("unconstrained", "penalty", "constrained")


def check_size(size: str) -> None:
    """Raise ``ValueError`` unless ``size`` is ``"full"`` or ``"small"``."""
    if size not in ("full", "small"):
        raise ValueError(f"size must be 'full' or 'small', got {size!r}")


def format_table(result: dict, columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table with one row per method.

    Parameters
    ----------
    result : dict
        ``result[method][key]`` for each method run (`METHODS` or the
        example's own list).
    columns : sequence of (key, header, format)
        Which figures to show, e.g. ``("test_rmse", "test RMSE", ".4f")``.
    """
    head = "| method | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    rows = [f"| {LABELS.get(m, m)} | "
            + " | ".join(format(result[m][k], f) for k, _, f in columns) + " |"
            for m in methods_of(result)]
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
    for m in methods_of(result):
        steps, res = zip(*result[m]["trace"])
        ax.semilogy(steps, [max(r, floor) for r in res], label=LABELS.get(m, m))
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


SMOKE_TEST = ("--small: a smoke test of the code path (tiny model, few steps); its figures "
              "and plot are not results. Run without --small for those.")


def main(name: str, run: Callable[..., dict], describe: Callable[[dict], str],
         argv: Sequence[str] | None = None,
         columns: Sequence[tuple[str, str, str]] | None = None) -> list[dict]:
    """Command line of an example: run it over seeds, print its tables, save its plot.

    Parameters
    ----------
    name : str
        The example's name; the plot is ``nullspace_<name>.png`` in ``--out``
        (default: the current directory).
    run : callable
        The example's ``run(size, seed, plot)``.
    describe : callable
        Turns one seed's result into the text to print (the settings and that
        seed's table).
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    columns : sequence of (key, header, format), optional
        The figures of the mean ± std table over the seeds (`seed_table`).
    """
    ap = argparse.ArgumentParser(prog=f"python -m lsqdiff.examples.{name}")
    ap.add_argument("--small", action="store_true",
                    help="a quick smoke test (the version the test suite runs): not results")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    ap.add_argument("--seed", type=int, default=None, help="run this one seed only")
    ap.add_argument("--out", default=".",
                    help=f"folder for the plot nullspace_{name}.png (default: the current one)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch CPU threads (default 1: on these tiny models more threads "
                         "only add synchronisation, which is very costly on a busy machine)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.small:
        print(SMOKE_TEST + "\n")
    plot = None if args.no_plot else os.path.join(args.out, f"nullspace_{name}.png")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no plot (pip install matplotlib, or --no-plot)\n")
        plot = None
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    extra = {"progress": True} if "progress" in inspect.signature(run).parameters else {}
    results = run_seeds(run, seeds, size="small" if args.small else "full", plot=plot, **extra)
    print(describe(results[0]))
    if columns is not None and len(results) > 1:
        print(f"\nmean ± std over seeds {seeds}:\n")
        print(seed_table(results, columns))
    if plot is not None:
        print(f"\nplot (seed {seeds[0]}) written to {plot}")
    if args.small:
        print("\n" + SMOKE_TEST)
    return results
