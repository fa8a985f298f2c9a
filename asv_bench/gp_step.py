#!/usr/bin/env python
"""The GP example's tuning step against its posterior-mean solve (PyTorch, CPU).

    python asv_bench/gp_step.py                         # flights, D = 1,024, all rows
    python asv_bench/gp_step.py --rows 20000 --reps 2   # a quicker run

One step: value and gradient of the validation NLPD of the RFF GP's posterior
mean (`lsqdiff.examples.gp.predictive_loss` + backward): the forward damped
LSMR solve, the backward's one LSMR solve, the gradient's products through the
feature map, and the validation predictions (the iterations of the backward's
solve are printed too: they, not the feature map, set most of the ratio). One solve:
`RFFGP.posterior_weights` alone (features built once, LSMR to the same
tolerance). Figures: the median over ``--reps`` rounds of step ÷ solve taken
side by side in each round (target <= 2.5), and the LSMR iterations.
"""

from __future__ import annotations

import argparse
import statistics
import time


def build(rows: int | None, features: int, dataset: str = "flights", seed: int = 0) -> dict:
    """Standardised splits as tensors and an RFF GP at the example's start."""
    import torch

    from lsqdiff.examples.gp import RFFGP
    from lsqdiff.examples.gp_compare import START
    from lsqdiff.examples.gp_data import load

    data = load(dataset, seed, limit=rows)
    T = {k: torch.from_numpy(v) for k, v in data.items() if k[:2] in ("X_", "y_")}
    gp = RFFGP(T["X_train"].shape[1], features, seed=seed, **START)
    return {"T": T, "gp": gp}


def make_solve(s: dict, tol: float = 1e-4):
    import torch

    def solve() -> int:
        with torch.no_grad():
            return int(s["gp"].posterior_weights(s["T"]["X_train"], s["T"]["y_train"],
                                                 atol=tol, btol=tol)[1].itn)

    return solve


def make_step(s: dict, tol: float = 1e-4):
    import lsqdiff
    from lsqdiff.examples.gp import predictive_loss

    T, gp = s["T"], s["gp"]

    def step() -> tuple[int, int]:
        """The forward solve's iterations and the backward's (its one damped solve)."""
        for p in gp.parameters():
            p.grad = None
        value, info = predictive_loss(gp, T["X_train"], T["y_train"], T["X_val"], T["y_val"],
                                      atol=tol, btol=tol)
        with lsqdiff.backward_diagnostics() as log:
            value.backward()
        return int(info.itn), sum(int(i.itn) for i in log)

    return step


def timed(f) -> tuple[float, int]:
    t0 = time.perf_counter()
    itn = f()
    return time.perf_counter() - t0, itn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="flights")
    ap.add_argument("--rows", type=int, help="rows kept before splitting (default: all)")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    s = build(args.rows, args.features, args.dataset)
    solve, step = make_solve(s), make_step(s)
    ratios = []
    for _ in range(args.reps):
        ts, itn = timed(solve)
        tg, (_, back) = timed(step)
        ratios.append(tg / ts)
        print(f"solve {ts:.2f} s ({itn} LSMR iterations), step {tg:.2f} s ({back} in the "
              f"backward's solve), step/solve {tg / ts:.2f}", flush=True)
    n, d = s["T"]["X_train"].shape
    print(f"{args.dataset}: {n} train rows x {d} inputs, D={args.features}: median step/solve "
          f"{statistics.median(ratios):.2f} over {args.reps} rounds")


if __name__ == "__main__":
    main()
