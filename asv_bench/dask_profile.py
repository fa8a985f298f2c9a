#!/usr/bin/env python
"""Where a Dask LSMR iteration spends its time (no asv needed).

    python asv_bench/dask_profile.py                    # 16000 x 1000, 20 iterations
    python asv_bench/dask_profile.py --size 4000x500 --top 25

On the same LocalCluster as ``dist_quick.py --engine dask`` (2 in-process
workers, one thread each, ``A`` in 4 row chunks), it runs a 20- and a
10-iteration solve and prints, per iteration (the difference over 10; medians
of ``--repeats`` such pairs):

* ``wall``: the iteration's wall time (over the iterations actually run:
  LSMR may reach rounding level and stop before 20);
* ``tasks``: tasks the scheduler ran (transitions to memory) and graphs it
  received (``update_graph`` calls, one per ``persist``/``compute``);
* ``round trips``: results brought back to the client (``Client.gather``);
* ``client``: CPU time of the client's thread (building each iteration's
  graph, ``persist``, waiting excluded), and ``of which graph building``: the
  solver's ``step`` alone;
* ``event loop``: CPU time of the thread that runs the scheduler and the
  workers' bookkeeping (all in one process here);
* ``task compute``: the tasks' own run time on the workers, summed over the
  tasks that finished during the solve;

then, with ``--top``, the client thread's profile (cProfile, by cumulative
time) of another 20-iteration solve. CPU times come from ``time.thread_time`` in
each thread, so the three shares are comparable; on 2 shared cores they can
add up to more than the wall time (the threads run in parallel) or less (they
wait for one another).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import sys
import time

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="16000x1000", metavar="MxN")
    parser.add_argument("--top", type=int, default=0, help="lines of the client's profile")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    m, n = (int(d) for d in args.size.lower().split("x"))

    import dask.array as da
    import distributed
    from distributed.diagnostics.plugin import SchedulerPlugin

    import lsqdiff
    from lsqdiff import _lsmr

    class Counter(SchedulerPlugin):
        name = "lsqdiff-counter"

        def __init__(self):
            self.tasks = self.graphs = 0
            self.compute = 0.0

        def transition(self, key, start, finish, *args, **kwargs):
            if start == "processing" and finish == "memory":
                self.tasks += 1
                self.compute += sum(ss["stop"] - ss["start"] for ss in kwargs["startstops"]
                                    if ss["action"] == "compute")

        def update_graph(self, scheduler, **kwargs):
            self.graphs += 1

    counter = Counter()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=":0", silence_logs=logging.ERROR)
    with cluster, distributed.Client(cluster) as client:
        cluster.scheduler.add_plugin(counter)  # in-process: the counter itself, not a copy
        rng = da.random.default_rng(0)
        A = rng.standard_normal((m, n), chunks=(m // 4, n)).persist()
        b = rng.standard_normal(m, chunks=m // 4).persist()
        distributed.wait([A, b])

        step_time = [0.0]
        step = _lsmr.step

        def timed_step(p, st):
            t0 = time.thread_time()
            out = step(p, st)
            step_time[0] += time.thread_time() - t0
            return out

        _lsmr.step = timed_step
        gathers = [0]
        gather = distributed.Client.gather

        def counting(self, *a, **kw):
            gathers[0] += 1
            return gather(self, *a, **kw)

        distributed.Client.gather = counting

        def loop_cpu() -> float:
            return client.run_on_scheduler(lambda: time.thread_time())

        def solve(k: int, profile: cProfile.Profile | None = None) -> dict:
            tasks0, graphs0, compute0 = counter.tasks, counter.graphs, counter.compute
            step_time[0], gathers[0] = 0.0, 0
            l0, c0, t0 = loop_cpu(), time.thread_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            x, info = lsqdiff.lsmr(A, b, atol=0, btol=0, conlim=0, maxiter=k)
            distributed.wait(x)
            if profile is not None:
                profile.disable()
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            loop = loop_cpu() - l0
            return dict(wall=wall, client=cpu, step=step_time[0], loop=loop,
                        compute=counter.compute - compute0,
                        tasks=counter.tasks - tasks0, graphs=counter.graphs - graphs0,
                        trips=gathers[0], itn=info.itn)

        solve(K)  # warm up
        rounds = []
        for _ in range(args.repeats):
            short, long = solve(K), solve(2 * K)
            steps = long["itn"] - short["itn"]  # fewer than K where LSMR stopped first
            rounds.append({k: (long[k] - short[k]) / steps for k in long})
        profile = cProfile.Profile()
        if args.top:  # a run of its own: the profiler slows the client down
            solve(2 * K, profile)
        per = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"A {m} x {n} in 4 row chunks, 2 workers; per iteration (difference of a "
              f"{long['itn']}- and a {short['itn']}-iteration solve, over {steps}; "
              f"medians of {args.repeats} rounds):")
        print(f"  wall                     {1e3 * per['wall']:8.1f} ms")
        print(f"  tasks run                {per['tasks']:8.1f}   graphs submitted "
              f"{per['graphs']:.1f}   round trips {per['trips']:.1f}")
        print(f"  client thread CPU        {1e3 * per['client']:8.1f} ms   of which "
              f"graph building (step) {1e3 * per['step']:.1f} ms")
        print(f"  event loop CPU           {1e3 * per['loop']:8.1f} ms   (scheduler and "
              f"workers' bookkeeping)")
        print(f"  task compute (workers)   {1e3 * per['compute']:8.1f} ms   (sum over tasks)")
        if args.top:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        _lsmr.step = step
        distributed.Client.gather = gather
    return None


if __name__ == "__main__":
    sys.exit(main())
