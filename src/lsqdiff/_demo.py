"""The demo behind ``python -m lsqdiff``: one real problem on every installed backend.

The problem is scattered-data gridding, a staple of geophysics and imaging:
recover a smooth surface on a 32x32 grid from 500 noisy samples at random
points, by damped least squares with a finite-difference smoothness penalty,

    min_x ||P x - y||^2 + mu^2 ||D x||^2 + damp^2 ||x||^2,

where P interpolates the grid bilinearly at the sample points and D stacks the
horizontal and vertical differences. The same stacked matrix is solved with
LSMR by SciPy and by lsqdiff on NumPy, array-api-strict, PyTorch, JAX and
CuPy (whichever are installed), and the table compares them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .solvers import lsmr

GRID = 32
SAMPLES = 500
SMOOTHING = 0.5
DAMP = 1e-3


def gridding_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stacked matrix ``[P; mu D]``, right-hand side ``[y; 0]`` and true surface."""
    rng = np.random.default_rng(seed)
    g = np.linspace(0.0, 1.0, GRID)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    surface = np.sin(3 * gx) * np.cos(2 * gy) + 0.5 * np.exp(-20 * ((gx - 0.6) ** 2 + (gy - 0.4) ** 2))

    pts = rng.uniform(0, GRID - 1, size=(SAMPLES, 2))
    i0 = np.minimum(pts.astype(int), GRID - 2)
    t = pts - i0
    P = np.zeros((SAMPLES, GRID * GRID))
    rows = np.arange(SAMPLES)
    for di, dj, w in ((0, 0, (1 - t[:, 0]) * (1 - t[:, 1])), (1, 0, t[:, 0] * (1 - t[:, 1])),
                      (0, 1, (1 - t[:, 0]) * t[:, 1]), (1, 1, t[:, 0] * t[:, 1])):
        P[rows, (i0[:, 0] + di) * GRID + i0[:, 1] + dj] += w
    y = P @ surface.ravel() + 0.01 * rng.standard_normal(SAMPLES)

    d1 = np.diff(np.eye(GRID), axis=0)  # (GRID-1, GRID) first differences
    eye = np.eye(GRID)
    D = np.vstack([np.kron(d1, eye), np.kron(eye, d1)])
    A = np.vstack([P, SMOOTHING * D])
    b = np.concatenate([y, np.zeros(D.shape[0])])
    return A, b, surface.ravel()


def _backends() -> list[tuple[str, Callable[[np.ndarray], Any], Callable[[Any], np.ndarray], Any]]:
    """(name, to-backend, to-numpy, synchronise or None for JAX's
    ``block_until_ready``) for each importable framework."""
    found: list[Any] = [("numpy", lambda a: a, np.asarray, lambda: None)]
    try:
        xs = importlib.import_module("array_api_strict")
        found.append(("array-api-strict", xs.asarray, np.from_dlpack, lambda: None))
    except ImportError:
        pass
    try:
        torch = importlib.import_module("torch")
        found.append(("torch", torch.asarray, lambda a: a.cpu().numpy(), lambda: None))
        if torch.cuda.is_available():
            found.append(("torch", lambda a: torch.asarray(a, device="cuda"), lambda a: a.cpu().numpy(),
                          torch.cuda.synchronize))
    except ImportError:
        pass
    try:
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        if not jax.config.jax_enable_x64:
            print("note: JAX runs in float32 here; set JAX_ENABLE_X64=1 for float64")
        found.append(("jax", jnp.asarray, np.asarray, None))
    except ImportError:
        pass
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() > 0:
            found.append(("cupy", cp.asarray, cp.asnumpy, cp.cuda.Device().synchronize))
    except Exception:  # no cupy, or no GPU for it
        pass
    return found


def run() -> list[dict[str, Any]]:
    """Solve the gridding problem on each backend; returns one row per backend."""
    scipy_lsmr = _scipy_lsmr()
    A, b, truth = gridding_problem()

    kw = dict(damp=DAMP, atol=1e-8, btol=1e-8, maxiter=2000)
    scipy_lsmr(A, b, **kw)  # warm-up, as for every backend below
    t0 = time.perf_counter()
    ref = scipy_lsmr(A, b, **kw)
    rows = [dict(backend="scipy (reference)", device="cpu", dtype="float64", itn=ref[2],
                 normr=ref[3], seconds=time.perf_counter() - t0, diff=0.0,
                 error=np.abs(ref[0] - truth).max())]
    for name, to, back, sync in _backends():
        Ab, bb = to(A), to(b)
        x, _ = lsmr(Ab, bb, **kw)  # warm-up: JAX compiles, GPUs initialise
        (sync or x.block_until_ready)()
        t0 = time.perf_counter()
        x, info = lsmr(Ab, bb, **kw)
        (sync or x.block_until_ready)()  # JAX dispatches asynchronously
        seconds = time.perf_counter() - t0
        xn = back(x).astype(np.float64)
        rows.append(dict(backend=name, device=_device_name(x), dtype=str(x.dtype).split(".")[-1],
                         itn=int(info.itn), normr=float(info.normr), seconds=seconds,
                         diff=np.abs(xn - ref[0]).max(), error=np.abs(xn - truth).max()))
    return rows


def _scipy_lsmr() -> Callable[..., Any]:
    """SciPy's ``lsmr``, the demo's reference, or an error that says what to install."""
    try:
        from scipy.sparse.linalg import lsmr as scipy_lsmr
    except ImportError as err:
        raise SystemExit(
            "python -m lsqdiff compares lsqdiff with SciPy's lsmr, and SciPy is not installed "
            f"({err}). Install it with pip install 'lsqdiff[scipy]' (or 'lsqdiff[demo]' for "
            "every backend the demo can compare; pip install -e '.[demo]' from a checkout)."
        ) from err
    return scipy_lsmr


def _device_name(x: Any) -> str:
    device = str(getattr(x, "device", "cpu")).lower()
    return "cuda" if ("cuda" in device or "gpu" in device) else "cpu"


def main() -> None:
    _scipy_lsmr()  # before anything is printed
    print(__doc__.split("\n\n")[1].replace("\n", " ").replace("penalty,", "penalty."))
    rows = run()
    header = f"{'backend':<18} {'device':<8} {'dtype':<8} {'iters':>6} {'||r||':>10} {'time':>9} {'max|x - scipy|':>15} {'max|x - truth|':>15}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['backend']:<18} {r['device']:<8} {r['dtype']:<8} {r['itn']:>6} {r['normr']:>10.4e} "
              f"{r['seconds'] * 1e3:>7.1f}ms {r['diff']:>15.2e} {r['error']:>15.3e}")
