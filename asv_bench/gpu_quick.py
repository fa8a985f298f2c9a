#!/usr/bin/env python
"""GPU side-by-side ratios for lsqdiff (run where a CUDA GPU is present).

    python asv_bench/gpu_quick.py [--iters 100] [--repeats 5]

For each problem (dense, float64 and float32) and each GPU framework present
(PyTorch CUDA, CuPy, JAX GPU), prints in one run:

* per-iteration time of lsqdiff's LSMR divided by one matvec + one rmatvec in
  the same framework (the floor any Golub-Kahan solver pays);
* lsqdiff on CuPy divided by ``cupyx.scipy.sparse.linalg.lsmr`` at equal
  iteration counts (CuPy's own GPU LSMR: the natural anchor on a GPU).

The solves run a fixed number of iterations (atol = btol = conlim = 0).
Timings are medians of interleaved repeats, each synchronised with the device.
"""

from __future__ import annotations

import argparse

import numpy as np
from quick import interleaved_samples, median  # the CPU script's timing loop

import lsqdiff

PROBLEMS = [(4000, 2000), (20000, 5000)]


def frameworks(A: np.ndarray, b: np.ndarray):
    """(name, A, b, sync, matvec+rmatvec) per GPU framework that imports."""
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            At, bt = torch.asarray(A, device="cuda"), torch.asarray(b, device="cuda")
            out.append(("torch-cuda", At, bt, torch.cuda.synchronize, lambda: At.T @ (At @ At[0])))
    except ImportError:
        pass
    try:
        import cupy

        Ac, bc = cupy.asarray(A), cupy.asarray(b)
        sync = cupy.cuda.Device().synchronize
        out.append(("cupy", Ac, bc, sync, lambda: Ac.T @ (Ac @ Ac[0])))
    except Exception:
        pass
    try:
        import jax
        import jax.numpy as jnp

        gpu = jax.devices("gpu")[0]
        Aj, bj = jax.device_put(jnp.asarray(A), gpu), jax.device_put(jnp.asarray(b), gpu)
        mv = jax.jit(lambda A, v: A.T @ (A @ v))
        out.append(("jax-gpu", Aj, bj, None, lambda: mv(Aj, Aj[0]).block_until_ready()))
    except Exception:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kw = dict(atol=0.0, btol=0.0, conlim=0.0, maxiter=args.iters)
    rows = []
    for m, n in PROBLEMS:
        for dtype in (np.float64, np.float32):
            rng = np.random.default_rng(0)
            A = rng.standard_normal((m, n)).astype(dtype)
            b = rng.standard_normal(m).astype(dtype)
            for name, Ab, bb, sync, pair in frameworks(A, b):
                def solve(Ab=Ab, bb=bb, sync=sync):
                    x, _ = lsqdiff.lsmr(Ab, bb, **kw)
                    (sync or x.block_until_ready)()

                def matvecs(pair=pair, sync=sync):
                    for _ in range(10):
                        pair()
                    if sync:
                        sync()

                fns = {"solve": solve, "pair": matvecs}
                if name == "cupy":
                    from cupyx.scipy.sparse.linalg import lsmr as cupy_lsmr

                    def anchor(Ab=Ab, bb=bb, sync=sync):
                        cupy_lsmr(Ab, bb, atol=0.0, btol=0.0, conlim=0.0, maxiter=args.iters)
                        sync()

                    fns["cupyx"] = anchor
                t = {k: median(v) for k, v in interleaved_samples(fns, args.repeats).items()}
                per_iter = t["solve"] / args.iters
                vs_cupyx = f"{t['solve'] / t['cupyx']:.2f}" if "cupyx" in t else "-"
                rows.append((f"{m}x{n}", np.dtype(dtype).name, name, f"{per_iter * 1e6:.0f}",
                             f"{t['pair'] / 10 * 1e6:.0f}", f"{per_iter / (t['pair'] / 10):.2f}",
                             vs_cupyx))
    header = ("problem", "dtype", "framework", "us/iter", "us/(matvec+rmatvec)",
              "iter / pair", "lsqdiff / cupyx lsmr")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
