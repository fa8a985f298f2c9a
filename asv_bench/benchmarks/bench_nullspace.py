"""asv benchmarks: the null-space method's constrained step on a small MLP.

A fast stand-in for ``asv_bench/nullspace_scale.py`` (which runs the 50M-parameter
model): the same MLP and constraint built by that script's ``build`` at width
256 (0.5M parameters, 1,024 constraint outputs), PyTorch on CPU.

* ``time_unconstrained_step``: forward + backward + Adam step.
* ``time_constrained_step``: the same through ``ConstrainedOptimizer``
  (placement "update"), LSMR running exactly ``maxiter`` iterations.
* ``time_vjp``: one VJP of the constraint on a built graph.
* ``track_iteration_over_vjp``: (step(50) - step(20)) / 30 over the VJP, medians
  of interleaved rounds (target <= 2.5).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WIDTH = 256


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    import nullspace_scale

    return nullspace_scale


class NullspaceStep:
    params = [[20, 50]]
    param_names = ["maxiter"]

    def setup(self, maxiter):
        s = _require_torch()
        self.setup_ = s.build(WIDTH, "cpu")
        self.unconstrained = s.make_step(self.setup_, None)
        self.constrained = s.make_step(self.setup_, maxiter)
        self.vjp = s.make_vjp(self.setup_)[0]
        self.unconstrained()
        self.constrained()

    def time_unconstrained_step(self, maxiter):
        self.unconstrained()

    def time_constrained_step(self, maxiter):
        self.constrained()

    def time_vjp(self, maxiter):
        self.vjp()


class NullspaceRatio:
    timeout = 300

    def setup(self):
        s = _require_torch()
        setup = s.build(WIDTH, "cpu")
        self.steps = {n: s.make_step(setup, n) for n in (20, 50)}
        self.vjp = s.make_vjp(setup)[0]
        for f in (*self.steps.values(), self.vjp):
            f()

    def track_iteration_over_vjp(self):
        times: dict = {"vjp": [], 20: [], 50: []}
        for _ in range(5):
            for key, fn in (("vjp", self.vjp), (20, self.steps[20]), (50, self.steps[50])):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        return (med[50] - med[20]) / 30 / med["vjp"]

    track_iteration_over_vjp.unit = "ratio"
