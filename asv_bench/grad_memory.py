#!/usr/bin/env python
"""Peak memory of a gradient: lsqdiff's implicit backward pass against autodiff
through the iterations (no asv needed).

    python asv_bench/grad_memory.py                 # table + docs/img/grad_memory.png
    python asv_bench/grad_memory.py --quick         # two iteration counts, no plot
    python asv_bench/grad_memory.py --plot PATH     # plot elsewhere

Problem: ``tall_2000x500`` of ``benchmarks/grad_common.py`` (float64; A is
8.0 MB), every stopping test off (atol = btol = conlim = 0) so that the forward
runs exactly N iterations, N in 25..500. Loss ``sum(x**2)``, gradients with
respect to A and b (and, where marked, b alone).

* PyTorch: the increase of the process's peak resident set size during one call
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus
  ``VmRSS`` before), each configuration in a fresh process that has loaded A
  and b and warmed up on a tiny problem; glibc's mmap threshold is fixed at
  64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors go back to the OS
  and the peak is the peak of live memory. It includes the gradients returned
  (``A.grad`` is as large as A) but not the inputs.
* JAX: ``jax.jit(f).lower(A, b).compile().memory_analysis()``: XLA's temporary
  buffers plus the outputs (again the gradient of A), without the arguments.

The unrolled baselines differentiate through a plain LSQR loop (no stopping
tests): a Python loop under PyTorch autograd, ``lax.fori_loop`` with a fixed
trip count under ``jax.grad``. Their memory grows with N; lsqdiff's must not.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmarks import grad_common as gc  # noqa: E402

PROBLEM = "tall_2000x500"
ITERS = (25, 50, 100, 200, 500)
MB = 1e6


def plot(path: str, iters, torch_rows: dict, jax_rows: dict, a_bytes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {
        "lsqdiff_forward": dict(color="tab:gray", marker="s", ls="-"),
        "lsqdiff_grad": dict(color="tab:blue", marker="o", ls="-"),
        "lsqdiff_grad_b": dict(color="tab:blue", marker="o", ls="--", mfc="white"),
        "unrolled_grad": dict(color="tab:red", marker="^", ls="-"),
        "unrolled_grad_b": dict(color="tab:red", marker="^", ls="--", mfc="white"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    panels = [(axes[0], torch_rows, "PyTorch (CPU): peak RSS increase during the call"),
              (axes[1], jax_rows, "JAX (jit, CPU): XLA temporaries + outputs")]
    for ax, rows, title in panels:
        for config, label in gc.MEMORY_CONFIGS.items():
            ax.plot(iters, [rows[config][n] / MB for n in iters], label=label, **style[config])
        ax.axhline(a_bytes / MB, color="k", lw=0.8, ls=":")
        ax.annotate("size of A (= size of dL/dA)", (iters[-1], a_bytes / MB), fontsize=8,
                    xytext=(0, 4), textcoords="offset points", ha="right")
        ax.set_xticks(iters)
        ax.set_xlim(0, iters[-1] * 1.04)
        ax.set_ylim(bottom=-1)
        ax.set_xlabel("iterations of the forward solve (atol = btol = 0)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("peak memory above the inputs (MB)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle("Gradient memory, 2000x500 float64, loss sum(x**2): lsqdiff's implicit "
                 "backward pass vs autodiff through the iterations", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 50 and 500 only, no plot")
    ap.add_argument("--plot", default=os.path.join(HERE, "..", "docs", "img", "grad_memory.png"))
    args = ap.parse_args(argv)
    jax = gc.enable_jax_x64()

    iters = (50, 500) if args.quick else ITERS
    A, b, _ = gc.grad_problem(PROBLEM)
    torch_rows: dict = {c: {} for c in gc.MEMORY_CONFIGS}
    jax_rows: dict = {c: {} for c in gc.MEMORY_CONFIGS}
    jax_detail: dict = {c: {} for c in gc.MEMORY_CONFIGS}
    for n in iters:
        for config in gc.MEMORY_CONFIGS:
            torch_rows[config][n] = gc.torch_memory(config, PROBLEM, n)
        print(f"  done PyTorch N = {n}", file=sys.stderr)
    for n in iters:
        for config in gc.MEMORY_CONFIGS:
            m = gc.jax_memory(config, PROBLEM, n)
            jax_detail[config][n] = m
            jax_rows[config][n] = m["temp"] + m["output"]
        print(f"  done JAX N = {n}", file=sys.stderr)

    print(f"jax {jax.__version__} | A: {PROBLEM}, {A.nbytes / MB:.1f} MB | memory in MB above "
          "the inputs (the gradient dL/dA returned is itself the size of A)\n")
    header = "| configuration | " + " | ".join(f"N={n}" for n in iters) + " |"
    sep = "|---|" + "---:|" * len(iters)
    print("PyTorch: peak RSS increase during one call\n")
    print(header + "\n" + sep)
    for c, label in gc.MEMORY_CONFIGS.items():
        print(f"| {label} | " + " | ".join(f"{torch_rows[c][n] / MB:.2f}" for n in iters) + " |")
    print("\nJAX: XLA temporaries + outputs (temporaries alone in brackets)\n")
    print(header + "\n" + sep)
    for c, label in gc.MEMORY_CONFIGS.items():
        print(f"| {label} | " + " | ".join(
            f"{jax_rows[c][n] / MB:.2f} ({jax_detail[c][n]['temp'] / MB:.2f})" for n in iters) + " |")
    lo, hi = iters[0], iters[-1]
    print(f"\nGrowth from N={lo} to N={hi} (MB): " + "; ".join(
        f"{fw} {c}: {rows[c][hi] / MB - rows[c][lo] / MB:+.2f}"
        for fw, rows in (("PyTorch", torch_rows), ("JAX", jax_rows))
        for c in ("lsqdiff_grad", "unrolled_grad")))
    a = A.nbytes + b.nbytes
    print("Total with the inputs, value+grad (A, b) / forward: " + "; ".join(
        f"{fw} N={n}: {(a + rows['lsqdiff_grad'][n]) / (a + rows['lsqdiff_forward'][n]):.2f}x"
        f" (b only: {(a + rows['lsqdiff_grad_b'][n]) / (a + rows['lsqdiff_forward'][n]):.2f}x)"
        for fw, rows in (("PyTorch", torch_rows), ("JAX", jax_rows)) for n in (lo, hi)))
    if not args.quick:
        plot(args.plot, iters, torch_rows, jax_rows, A.nbytes)


if __name__ == "__main__":
    main()
