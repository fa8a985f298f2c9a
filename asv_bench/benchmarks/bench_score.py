"""asv benchmarks: one training step of `lsqdiff.examples.score`, four ways.

The models of the example's full runs (MLP width 128 x 3, SiLU, batch 256) on
2-D data (32 constraints per null-space step: 32 points x 1 probe pair) and on
the 64-D digits (64 constraints: 16 points x 4 pairs), PyTorch on CPU, one
thread. The null-space step runs LSMR to its cap of 10 iterations or to
convergence, as in the example.

* ``time_step``: one step of each method (forward, backward, Adam; the
  penalty's Jacobian products; the null-space projection; the energy
  model's double backward).
* ``track_nullspace_over_unconstrained`` / ``track_nullspace_over_energy``:
  the median null-space step over the median step of the other method,
  measured side by side in one process.
"""

from __future__ import annotations

import statistics
import time

DIMS = {"2d": 2, "digits": 64}
CONSTRAINTS = {"2d": (32, 1), "digits": (16, 4)}  # (points, probe pairs)
METHODS = ("unconstrained", "penalty", "nullspace", "energy")


def _make(method, data):
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    from lsqdiff.examples._score_model import (EnergyNet, ScoreNet, constraint_points,
                                               make_step)

    torch.set_num_threads(1)
    dim = DIMS[data]
    points, pairs = CONSTRAINTS[data]
    torch.manual_seed(0)
    model = (EnergyNet if method == "energy" else ScoreNet)(dim, 128, 3)
    step, _ = make_step(method, model, lr=2e-3, mu=1.0, gamma=0.5, maxiter=10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, dim, generator=g)
    sigma = torch.exp(torch.empty(256, 1).uniform_(-3.5, 1.0, generator=g))
    eps, v = torch.randn(256, dim, generator=g), torch.randn(256, dim, generator=g)
    pts = constraint_points(x + sigma * eps, sigma, points, pairs, g)
    return lambda: step(x, sigma, eps, v, pts)


class ScoreStep:
    params = [list(DIMS), list(METHODS)]
    param_names = ["data", "method"]

    def setup(self, data, method):
        self.step = _make(method, data)
        self.step()

    def time_step(self, data, method):
        self.step()


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class ScoreRatio:
    params = [list(DIMS)]
    param_names = ["data"]
    timeout = 300

    def setup(self, data):
        self.steps = {m: _make(m, data) for m in ("unconstrained", "nullspace", "energy")}
        for step in self.steps.values():
            step()

    def _ratio(self, other):
        # Interleaved, so that both see the same machine load.
        a, b = [], []
        for _ in range(10):
            a.append(_median_seconds(self.steps["nullspace"], 1))
            b.append(_median_seconds(self.steps[other], 3))
        return statistics.median(a) / statistics.median(b)

    def track_nullspace_over_unconstrained(self, data):
        return self._ratio("unconstrained")

    def track_nullspace_over_energy(self, data):
        return self._ratio("energy")
