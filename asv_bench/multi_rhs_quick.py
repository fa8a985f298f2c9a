#!/usr/bin/env python
"""Several right-hand sides: one solve with a 2-D ``b`` of k columns against k
separate 1-D solves (no asv needed).

    python asv_bench/multi_rhs_quick.py --threads 1           # full run, a few minutes
    python asv_bench/multi_rhs_quick.py --threads 1 --small   # smoke run, seconds
    python asv_bench/multi_rhs_quick.py --threads 1 --products  # also the products alone

For NumPy and PyTorch (CPU), k in {2, 4, 8, 16}, dense tall problems 2000x500
and 20000x2000 (``--small``: 400x100 and 2000x500), it prints the ratio
(time of ``lsmr(A, B)``) / (time of ``[lsmr(A, B[:, j]) for j in range(k)]``),
and each framework's 2-D solve against SciPy's ``lsmr`` looped over the
columns (the anchor). Target for PyTorch on the CPU: a ratio <= 1.3 at every k.

Every solve runs the same fixed number of iterations (``atol = btol =
conlim = 0``), so both sides do the same work; the script checks the counts.
The columns of ``A`` are scaled by ``logspace(0, -3)`` (cond ~ 1e3, as in
``benchmarks/common.py``). All callables of one problem and k are timed
round-robin (``quick.interleaved_samples``); each ratio is the median over
rounds of the ratio within a round, absolute times are medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quick import (  # noqa: E402
    interleaved_samples, limit_threads, median, paired_ratio, table, warn_if_loaded)

#: (m, n, iterations per solve): enough iterations that per-solve overhead is small.
FULL = ((2000, 500, 50), (20000, 2000, 10))
SMALL = ((400, 100, 30), (2000, 500, 10))
KS = (2, 4, 8, 16)


def problem(m: int, n: int, k: int):
    import numpy as np

    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, n)) * np.logspace(0, -3, n)
    return A, rng.standard_normal((m, k))


def solves(A, B, iters: int) -> dict:
    """The timed callables for one problem: SciPy looped, and lsqdiff 2-D and
    looped on NumPy and PyTorch (the tensors share the NumPy arrays' memory)."""
    import numpy as np
    import scipy.sparse.linalg as sla
    import torch

    import lsqdiff

    kw = dict(atol=0.0, btol=0.0, conlim=0.0, maxiter=iters)
    cols = [np.ascontiguousarray(B[:, j]) for j in range(B.shape[1])]
    At, Bt, cols_t = torch.from_numpy(A), torch.from_numpy(B), [torch.from_numpy(c) for c in cols]

    def check(label: str, itn) -> None:
        if not np.all(np.asarray(itn) == iters):
            raise RuntimeError(f"{label} ran {itn} iterations, expected {iters}")

    check("scipy", [sla.lsmr(A, c, **kw)[2] for c in cols[:1]])
    check("numpy 2-D", lsqdiff.lsmr(A, B, **kw)[1].itn)
    check("torch 2-D", lsqdiff.lsmr(At, Bt, **kw)[1].itn)
    return {
        "scipy loop": lambda: [sla.lsmr(A, c, **kw) for c in cols],
        "numpy 2-D": lambda: lsqdiff.lsmr(A, B, **kw),
        "numpy loop": lambda: [lsqdiff.lsmr(A, c, **kw) for c in cols],
        "torch 2-D": lambda: lsqdiff.lsmr(At, Bt, **kw),
        "torch loop": lambda: [lsqdiff.lsmr(At, c, **kw) for c in cols_t],
    }


def products(A, k: int) -> dict:
    """Products with k columns, each written column by column (k GEMVs) and as
    one GEMM; for PyTorch also as one GEMM in the (k, n) orientation."""
    import numpy as np
    import torch

    rng = np.random.default_rng(1)
    V, U = rng.standard_normal((A.shape[1], k)), rng.standard_normal((A.shape[0], k))
    At, Vt, Ut = torch.from_numpy(A), torch.from_numpy(V), torch.from_numpy(U)
    AT, ATt = A.T, At.mT
    return {
        "numpy AV gemv": lambda: [A @ V[:, j] for j in range(k)],
        "numpy AV": lambda: A @ V,
        "numpy ATU gemv": lambda: [AT @ U[:, j] for j in range(k)],
        "numpy ATU": lambda: AT @ U,
        "torch AV gemv": lambda: [At @ Vt[:, j] for j in range(k)],
        "torch AV": lambda: At @ Vt,
        "torch AV (k, n)": lambda: (Vt.mT @ ATt).mT,
        "torch ATU gemv": lambda: [ATt @ Ut[:, j] for j in range(k)],
        "torch ATU": lambda: ATt @ Ut,
        "torch ATU (k, n)": lambda: (Ut.mT @ At).mT,
    }


def product_table(sizes, ks, repeats: int, clock) -> str:
    rows = []
    for m, n, _ in sizes:
        A, _ = problem(m, n, 1)
        for k in ks:
            t = interleaved_samples(products(A, k), repeats, clock=clock)
            row = [f"{m}x{n}", str(k)]
            for key in ("numpy AV", "numpy ATU", "torch AV", "torch AV (k, n)", "torch ATU",
                        "torch ATU (k, n)"):
                gemv = key.split(" (")[0] + " gemv"
                row.append(f"{paired_ratio(t[key], t[gemv]):.2f}")
            rows.append(row)
    header = ["problem", "k", "NumPy A@V", "NumPy A.T@U", "torch A@V", "torch (V.mT@A.mT).mT",
              "torch A.mT@U", "torch (U.mT@A).mT"]
    return table(header, rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="smoke run: small problems, 3 rounds")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per median (default 7, --small 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for OpenBLAS, MKL and PyTorch (default: theirs)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS), help="numbers of columns")
    ap.add_argument("--problems", nargs="+", default=None, metavar="MxN",
                    help="only these problems, e.g. 2000x500 (default: all of the run)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with time.process_time, this process's CPU time: with --threads 1, "
                         "far less inflated than wall time by other work on a shared machine")
    ap.add_argument("--products", action="store_true",
                    help="also time the products alone: one GEMM against k GEMVs, k = 1..16")
    args = ap.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    import numpy as np
    import scipy
    import torch

    import lsqdiff

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.small else 7)
    clock = time.process_time if args.cpu_time else time.perf_counter
    sizes = SMALL if args.small else FULL
    if args.problems:
        sizes = tuple(s for s in sizes if f"{s[0]}x{s[1]}" in args.problems)
    print(f"lsqdiff {lsqdiff.__version__} | numpy {np.__version__} | scipy {scipy.__version__} | "
          f"torch {torch.__version__} (threads {torch.get_num_threads()}) | {os.cpu_count()} CPUs | "
          f"float64 | median of {repeats} | {'CPU' if args.cpu_time else 'wall'} time\n")
    if args.small:
        print("--small: a smoke test of the script; these figures are not results\n")
    warn_if_loaded()
    t0 = time.perf_counter()
    rows = []
    for m, n, iters in sizes:
        for k in args.ks:
            A, B = problem(m, n, k)
            t = interleaved_samples(solves(A, B, iters), repeats, clock=clock)
            row = [f"{m}x{n}", str(iters), str(k), f"{median(t['scipy loop']) * 1e3:.1f}"]
            for fw in ("numpy", "torch"):
                ratio = paired_ratio(t[f"{fw} 2-D"], t[f"{fw} loop"])
                mark = "" if fw == "numpy" else " ok" if ratio <= 1.3 else " MISS"
                row += [f"{median(t[f'{fw} 2-D']) * 1e3:.1f}", f"{ratio:.2f}{mark}",
                        f"{paired_ratio(t[f'{fw} 2-D'], t['scipy loop']):.2f}"]
            rows.append(row)
            print(f"  done {m}x{n} k={k}", file=sys.stderr)
    header = ["problem", "iters", "k", "SciPy loop ms", "NumPy 2-D ms", "NumPy 2-D/loop",
              "NumPy 2-D/SciPy", "torch 2-D ms", "torch 2-D/loop (<= 1.3)", "torch 2-D/SciPy"]
    print("(time of one solve with a 2-D b of k columns) / (time of k 1-D solves), "
          "same iterations\n")
    print(table(header, rows))
    if args.products:
        print("\nproducts with k columns: (one GEMM, written as shown) / (the same product "
              f"column by column, k GEMVs), median of {3 * repeats} rounds\n")
        print(product_table(sizes, sorted({1, 2, 3, *args.ks}), 3 * repeats, clock))
    print(f"\n({time.perf_counter() - t0:.0f} s; 1-min load average at the end "
          f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
