#!/usr/bin/env python
"""Per-iteration cost of distributed solves (no asv needed).

    python asv_bench/dist_quick.py --engine jax   # 4 forced host devices, A by rows, by columns
    python asv_bench/dist_quick.py --engine dask  # LocalCluster, 2 workers, A chunked by rows
    python asv_bench/dist_quick.py --engine dask --small   # smoke run: not results

For each size it prints, measured side by side in one process (round-robin):

* ``iteration``: the time of one LSMR iteration, from two solves run with
  ``atol = btol = conlim = 0`` to ``maxiter = K`` and ``2 K``: their
  difference over the difference of their iteration counts (``K``, or fewer
  where LSMR reaches rounding level and stops first: at 128000 x 2000 after
  16 iterations), so start-up, compilation and the final gathering cancel;
* ``AhAv``: one distributed ``A^H (A v)`` on the same engine (JAX: ``K`` of
  them in one jitted loop on the sharded A, divided by ``K``, so that neither
  side pays a dispatch per product; Dask: the product persisted on the cluster
  and waited for, one submission and one round trip);
* ``ratio`` = iteration / AhAv (target <= 1.5) and ``overhead`` = iteration -
  AhAv in milliseconds (Dask: the cost of the round trips and submissions);
* ``round trips``: Dask only, results brought back to the client per
  iteration (calls of ``Client.gather``, counted over the same two solves;
  0 for JAX, whose loop never leaves the devices).

Each figure is the median of ``--repeats`` rounds. ``--out DIR`` also writes
``dist_<engine>.json`` there. XLA and the BLAS run one thread per device or
worker (``OMP_NUM_THREADS=1``) so that the engines, not the BLAS, split the work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SIZES = [(4000, 500), (16000, 1000), (32000, 1000)]
SMALL_SIZES = [(800, 100)]
K = 10


def median_rounds(fns: dict, repeats: int) -> dict:
    """Median wall time of each callable over rounds, timed round-robin."""
    for f in fns.values():
        f()
    times: dict = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_jax(sizes, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import lsqdiff

    jax.config.update("jax_enable_x64", True)
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rows = []
    layouts = {"rows": (P("d", None), P("d")), "columns": (P(None, "d"), P())}
    for m, n in sizes:
        for layout, (a_spec, b_spec) in layouts.items():
            rng = np.random.default_rng(0)
            A = jax.device_put(rng.standard_normal((m, n)), NamedSharding(mesh, a_spec))
            b = jax.device_put(rng.standard_normal(m), NamedSharding(mesh, b_spec))
            v = jnp.asarray(rng.standard_normal(n))
            solve = {k: jax.jit(lambda A, b, k=k: lsqdiff.lsmr(
                A, b, atol=0, btol=0, conlim=0, maxiter=k)[0]) for k in (K, 2 * K)}
            # K products in one compiled loop, as in the solve (no dispatch per product);
            # A^T u as u @ A, as the solver forms it (XLA:CPU's A.T @ u is a slow
            # transposed dot).
            ahav = jax.jit(lambda A, v: jax.lax.fori_loop(
                0, K, lambda i, w: ((A @ w) @ A) * (1.0 / m), v))
            t = median_rounds({
                "short": lambda: solve[K](A, b).block_until_ready(),
                "long": lambda: solve[2 * K](A, b).block_until_ready(),
                "AhAv": lambda: ahav(A, v).block_until_ready()}, repeats)
            t["AhAv"] /= K
            rows.append(row(m, n, t, f"{len(jax.devices())} devices, {layout}"))
    return rows


def bench_dask(sizes, repeats):
    import logging

    import dask.array as da
    import distributed

    import lsqdiff

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=":0", silence_logs=logging.ERROR)
    rows = []
    with cluster, distributed.Client(cluster):
        for m, n in sizes:
            rng = da.random.default_rng(0)
            A = rng.standard_normal((m, n), chunks=(m // 4, n)).persist()
            b = rng.standard_normal(m, chunks=m // 4).persist()
            v = rng.standard_normal(n).persist()
            distributed.wait([A, b, v])

            itn = {}

            def solve(k):
                x, info = lsqdiff.lsmr(A, b, atol=0, btol=0, conlim=0, maxiter=k)
                distributed.wait(x)
                itn[k] = info.itn  # fewer than k where LSMR reached rounding level first

            trips = {k: _gathers(distributed.Client, lambda k=k: solve(k)) for k in (K, 2 * K)}
            steps = itn[2 * K] - itn[K]

            t = median_rounds({
                "short": lambda: solve(K), "long": lambda: solve(2 * K),
                "AhAv": lambda: distributed.wait((A.T @ (A @ v)).persist())}, repeats)
            rows.append(row(m, n, t, "2 workers, 4 row chunks",
                            round_trips=(trips[2 * K] - trips[K]) / steps, steps=steps))
    return rows


def _gathers(client_class, fn) -> int:
    """How many times ``fn`` brings results back to the client (``Client.gather``)."""
    gather = client_class.gather
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return gather(self, *args, **kwargs)

    client_class.gather = counting
    try:
        fn()
    finally:
        client_class.gather = gather
    return len(calls)


def row(m, n, t, setup, round_trips=0.0, steps=K):
    it = (t["long"] - t["short"]) / steps
    return dict(m=m, n=n, setup=setup, iteration_ms=1e3 * it, AhAv_ms=1e3 * t["AhAv"],
                ratio=it / t["AhAv"], overhead_ms=1e3 * (it - t["AhAv"]),
                round_trips=round_trips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["jax", "dask"], required=True)
    parser.add_argument("--small", action="store_true", help="smoke run (not results)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for dist_<engine>.json")
    parser.add_argument("--size", action="append", default=None, metavar="MxN",
                        help="a size to run instead of the default ones (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if args.engine == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=4"
                                   + " --xla_cpu_multi_thread_eigen=false")
    sizes = SMALL_SIZES if args.small else SIZES
    if args.size:
        sizes = [tuple(int(d) for d in s.lower().split("x")) for s in args.size]
    rows = (bench_jax if args.engine == "jax" else bench_dask)(sizes, args.repeats)
    if args.small:
        print("--small: a smoke test of the script, not results")
    print(f"{'m x n':>12} {'setup':>26} {'iteration ms':>13} {'AhAv ms':>9} {'ratio':>6} "
          f"{'overhead ms':>12} {'round trips':>11}")
    for r in rows:
        print(f"{r['m']:>6}x{r['n']:<5} {r['setup']:>26} {r['iteration_ms']:13.2f} "
              f"{r['AhAv_ms']:9.2f} {r['ratio']:6.2f} {r['overhead_ms']:12.2f} "
              f"{r['round_trips']:11.1f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"dist_{args.engine}.json"), "w") as f:
            json.dump(dict(small=args.small, rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
