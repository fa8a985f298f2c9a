#!/usr/bin/env python
"""Preconditioned against unpreconditioned LSMR: iterations and time to 1e-8.

    python asv_bench/precond_quick.py             # 3 seeds, a few minutes
    python asv_bench/precond_quick.py --small     # smoke test (1 seed, small problems)

For each problem of ``benchmarks/precond_common.py`` and each seed: the forward
solve (lsqdiff on NumPy, JAX jit, PyTorch, and SciPy's unpreconditioned lsmr)
and value-and-grad (``sum(x**2)`` in A and b), with and without the Jacobi
scaling, at ``atol = btol = 1e-8``. Prints mean +- std over seeds of the
iterations (forward; backward summed over the gradient's solves), the wall
time, and the forward's error against ``numpy.linalg.lstsq``. Runs of one seed
are interleaved, so machine drift hits both sides alike. Writes no files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke test: small problems, 1 seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backends", default="scipy,numpy,jax,torch")
    args = parser.parse_args()

    import numpy as np
    from tqdm import tqdm

    from benchmarks import precond_common as pc

    if args.small:
        print("--small: a smoke test of the script; its figures are not results.")
        pc.PRECOND_PROBLEMS.clear()
        pc.PRECOND_PROBLEMS.update({"scales_200x50": ("scales", 200, 50),
                                    "laplacian_8": ("laplacian", 8)})
        args.seeds = 1
    backends = args.backends.split(",")
    rows = []
    jobs = [(name, seed) for name in pc.PRECOND_PROBLEMS for seed in range(args.seeds)]
    results: dict = {}
    bar = tqdm(jobs, desc="problems x seeds")
    for name, seed in bar:
        A, b = pc.problem(name, seed)
        ref = np.linalg.lstsq(A, b, rcond=None)[0]
        for backend in backends:
            for precond in (False, True):
                try:
                    forward, grad = pc.runners(backend, name, seed, precond)
                except (NotImplementedError, ImportError):
                    continue
                bar.set_postfix_str(f"{backend} precond={precond}")
                if backend == "jax":  # compile first
                    forward()
                    grad()
                t0 = time.perf_counter()
                x, itn = forward()
                t_fwd = time.perf_counter() - t0
                x = np.asarray(x.detach() if hasattr(x, "detach") else x)
                err = np.linalg.norm(x - ref) / np.linalg.norm(ref)
                entry = dict(itn=int(itn), t_fwd=t_fwd, err=err)
                if grad is not None:
                    t0 = time.perf_counter()
                    _, back = grad()
                    entry.update(t_vg=time.perf_counter() - t0, back=int(back))
                bar.set_postfix_str(f"{backend} precond={precond} itn={itn}")
                results.setdefault((name, backend, precond), []).append(entry)

    def stat(values, fmt):
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    print(f"\nLSMR to atol = btol = 1e-8 (conlim off, maxiter {pc.MAXITER}); mean ± std over "
          f"{args.seeds} seed(s); times in seconds, one thread count as the machine gives.\n")
    print("| problem | backend | Jacobi | fwd iters | fwd time | error vs lstsq | "
          "backward iters | value+grad time |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, backend, precond), entries in results.items():
        get = lambda k: [e[k] for e in entries if k in e]  # noqa: E731
        back = stat(get("back"), ".0f") if get("back") else "-"
        t_vg = stat(get("t_vg"), ".3g") if get("t_vg") else "-"
        rows.append(f"| {name} | {backend} | {'yes' if precond else 'no'} | "
                    f"{stat(get('itn'), '.0f')} | {stat(get('t_fwd'), '.3g')} | "
                    f"{stat(get('err'), '.1e')} | {back} | {t_vg} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
