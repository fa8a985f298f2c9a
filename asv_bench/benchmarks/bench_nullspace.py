"""asv benchmarks: the null-space method's constrained step on a small MLP.

A fast stand-in for ``asv_bench/nullspace_scale.py`` (which runs the 50M-parameter
model): the same MLP and constraint built by that script's ``build`` at width
256 (0.5M parameters, 1,024 constraint outputs), PyTorch on CPU.

* ``time_unconstrained_step``: forward + backward + Adam step.
* ``time_constrained_step``: the same through ``ConstrainedOptimizer``
  (placement "update"), LSMR running exactly ``maxiter`` iterations.
* ``time_vjp``: one VJP of the constraint on a built graph.
* ``track_iteration_over_vjp``: the median LSMR iteration inside maxiter-50
  steps (timed as the script does) over the median VJP (the target of <= 2.5
  is for the 50M-parameter model, where Python's overhead is negligible).
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
        self.s, self.clock = s, s.IterationClock("cpu")
        self.step = s.make_step(setup, 50)
        self.vjp = s.make_vjp(setup)[0]
        self.step()
        self.vjp()

    def teardown(self):
        self.clock.close()

    def track_iteration_over_vjp(self):
        """Median LSMR iteration inside a maxiter-50 step / median VJP."""
        iterations, vjps = [], []
        for _ in range(5):
            self.clock.stamps = []
            self.step()
            iterations += self.s.iteration_times(self.clock.stamps)
            for _ in range(5):
                t0 = time.perf_counter()
                self.vjp()
                vjps.append(time.perf_counter() - t0)
        return statistics.median(iterations) / statistics.median(vjps)
