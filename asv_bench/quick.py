#!/usr/bin/env python
"""Quick side-by-side performance ratios for lsqdiff (no asv needed).

    python asv_bench/quick.py           # full run, a few minutes
    python asv_bench/quick.py --quick   # smoke run, ~30 s

Prints two tables, each measured in one process with the runs interleaved
(round-robin, so slow drift of a shared machine hits both sides alike):

1. lsqdiff on NumPy / SciPy ``scipy.sparse.linalg`` at equal iteration counts
   (atol = btol = conlim = 0, maxiter = N), for ``lsmr`` and ``lsqr`` on every
   problem. Target: <= 1.10.
2. Per-iteration cost of lsqdiff under JAX (jit) and PyTorch (CPU), divided by
   one matvec + one rmatvec (``A^T (A v)``) in the same framework. Target at
   4000x2000: <= 1.3.

Times come from ``time.perf_counter``; each ratio is the median over rounds of
the ratio within a round (absolute times shown are medians). JAX is compiled
before timing and synchronised with ``block_until_ready``. ``--threads 1``
pins OpenBLAS, PyTorch and XLA to one thread each, which makes the ratios far
less sensitive to other work on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

common = None  # benchmarks.common, imported in main() once the thread settings are made


def warn_if_loaded() -> None:
    """Say so when other work loads the machine (a 1-min load average above 0.5)."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-min load average is {load:.2f} on {os.cpu_count()} CPUs; other work "
              "skews these timings (the interleaving only partly cancels it)\n")


def limit_threads(n: int) -> None:
    """Run every framework's kernels on ``n`` threads (before any of them is imported)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false")


def interleaved_samples(fns: dict, repeats: int, warmup: int = 1,
                        clock=time.perf_counter) -> dict:
    """Times of each callable (wall times by default; ``time.process_time``: the
    CPU time of this process, which other processes on a shared machine inflate
    far less), timed round-robin (the order alternating from round to round), so
    that each round's samples saw the same machine state."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t0 = clock()
            fns[k]()
            times[k].append(clock() - t0)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def paired_ratio(num: list, den: list) -> float:
    """Median over rounds of num/den from the same round: robust to load drifting
    between rounds, which a ratio of two medians is not."""
    return statistics.median(a / b for a, b in zip(num, den))


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def mark(ratio: float, target: float) -> str:
    return f"{ratio:.3f} {'ok' if ratio <= target else 'MISS'}"


def numpy_vs_scipy(problems, iters, repeats):
    rows = []
    for name in problems:
        n_it = iters[name]
        row = [name, str(n_it)]
        A, b = common.numpy_problem(name)
        for method in ("lsmr", "lsqr"):
            fns = {be: common.solver(be, method, A, b, n_it) for be in ("scipy", "numpy")}
            for be, f in fns.items():
                common.check_iterations(be, method, f(), n_it)
            t = interleaved_samples(fns, repeats)
            row += [f"{median(t['scipy']) * 1e3:.1f}", mark(paired_ratio(t["numpy"], t["scipy"]), 1.10)]
        rows.append(row)
        print(f"  done {name}", file=sys.stderr)
    header = ["problem", "iters", "SciPy lsmr ms", "lsmr NumPy/SciPy",
              "SciPy lsqr ms", "lsqr NumPy/SciPy"]
    return table(header, rows)


def per_iteration(problems, iters, repeats, backends=("jax", "torch", "numpy")):
    rows = []
    for name in problems:
        n_it = iters[name]
        for be in backends:
            A, b = common.problem_for(be, name)
            # n_it matvec+rmatvec pairs against solves of n_it iterations.
            fns = {"pair": common.matvec_pairs(be, A, b, n_it)}
            for method in ("lsmr", "lsqr"):
                fns[method] = common.solver(be, method, A, b, n_it)
                common.check_iterations(be, method, fns[method](), n_it)  # also compiles JAX
            t = interleaved_samples(fns, repeats)
            row = [name, be, f"{median(t['pair']) / n_it * 1e3:.3f}"]
            for method in ("lsmr", "lsqr"):
                ratio = paired_ratio(t[method], t["pair"])
                row += [f"{median(t[method]) / n_it * 1e3:.3f}",
                        mark(ratio, 1.3) if be != "numpy" else f"{ratio:.3f}"]
            rows.append(row)
            print(f"  done {name} {be}", file=sys.stderr)
    header = ["problem", "framework", "A^T(Av) ms", "lsmr ms/iter", "lsmr ratio",
              "lsqr ms/iter", "lsqr ratio"]
    return table(header, rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (~30 s): fewer iterations and repeats")
    ap.add_argument("--repeats", type=int, default=None, help="samples per median (default 7, --quick 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for NumPy/SciPy (OpenBLAS), PyTorch and XLA (default: theirs)")
    args = ap.parse_args(argv)
    global common
    if args.threads:
        limit_threads(args.threads)
    from benchmarks import common
    repeats = args.repeats or (3 if args.quick else 7)
    iters = dict(common.ITERS)
    if args.quick:
        iters = {k: max(5, v // 5) for k, v in iters.items()}

    common.enable_jax_x64()
    import jax
    import numpy as np
    import scipy
    import torch

    import lsqdiff

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"lsqdiff {lsqdiff.__version__} | numpy {np.__version__} | scipy {scipy.__version__} | "
          f"jax {jax.__version__} | torch {torch.__version__} (threads {torch.get_num_threads()}) | "
          f"{os.cpu_count()} CPUs | threads {args.threads or 'default'} | float64 | median of {repeats}\n")
    warn_if_loaded()
    t0 = time.perf_counter()
    print("1. lsqdiff (NumPy backend) time / SciPy time, same problem, same iteration count "
          "(target <= 1.10)\n")
    print(numpy_vs_scipy(list(common.PROBLEMS), iters, repeats))
    print("\n2. per-iteration time / one matvec + one rmatvec, A^T (A v), in the same framework "
          "(target <= 1.3 for JAX and PyTorch at 4000x2000; NumPy shown for reference)\n")
    print(per_iteration(list(common.PROBLEMS), iters, repeats))
    print(f"\n({time.perf_counter() - t0:.0f} s; 1-min load average at the end "
          f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
