"""Shared fixtures and helpers for the lsqdiff test suite.

* ``xp``: the array namespace under test, parametrised over every installed
  backend (numpy, array_api_strict, jax.numpy, torch, cupy). A backend that
  is not installed (or cupy without a GPU) is skipped, so the suite runs with
  only NumPy installed.
* ``solver``: ``lsqdiff.lsmr`` and ``lsqdiff.lsqr``.
* helpers (import them with ``from conftest import ...``): moving arrays to and
  from a backend, building test matrices from chosen singular values, float64
  reference solutions and dtype-dependent tolerances.

JAX runs in float64 here (``jax_enable_x64``); the library itself never turns
that flag on. Each test process runs one OpenMP (PyTorch) thread unless
``OMP_NUM_THREADS`` is set.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import lsqdiff

# Every JAX solve with new settings or shapes compiles its loop with XLA, which
# dominates the suite's run time on CPU; LLVM's optimisation level does not
# matter for these tiny problems, so the tests compile at -O0 (about a third
# less time per compile). Only when the user has not set XLA_FLAGS, and before
# jax is first imported.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"

# pytest -n 2 runs one worker per core on problems far too small to split
# across threads: PyTorch's intra-op threads (OpenMP, one per core by default)
# can then only oversubscribe the cores and spin at each operation's barrier.
# On a machine loaded by other processes the torch tests took about 3x the CPU
# time so (on idle cores the difference is within noise). One thread per
# worker, unless the user has set OMP_NUM_THREADS; before torch is first
# imported, which reads it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import jax
except ImportError:  # pragma: no cover - jax not installed
    jax = None
else:
    jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "lsqdiff",
    max_examples=25,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=ci: reproducible examples; =thorough: many more of them.
settings.register_profile(
    "ci", parent=settings.get_profile("lsqdiff"), derandomize=True, print_blob=True
)
settings.register_profile("thorough", parent=settings.get_profile("lsqdiff"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lsqdiff"))


# --------------------------------------------------------------------------- #
# Backends
# --------------------------------------------------------------------------- #

#: (module name, pytest id) of every backend lsqdiff supports.
BACKENDS = (
    ("numpy", "numpy"),
    ("array_api_strict", "strict"),
    ("jax.numpy", "jax"),
    ("torch", "torch"),
    ("cupy", "cupy"),
)


def load_backend(name: str):
    """Import a backend namespace or skip the test (cupy also needs a GPU)."""
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:  # not installed, or installed without CUDA
            pytest.skip(f"cupy not importable ({exc})")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("cupy: no CUDA device")
        except Exception as exc:  # no driver, no runtime
            pytest.skip(f"cupy: no usable CUDA device ({exc})")
        return cupy
    if name == "jax.numpy":
        pytest.importorskip("jax")
    return pytest.importorskip(name)


def _backend_params():
    params = []
    for name, ident in BACKENDS:
        marks = [pytest.mark.gpu] if name == "cupy" else []
        params.append(pytest.param(name, id=ident, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def xp(request):
    """The array namespace under test (the framework module users import)."""
    return load_backend(request.param)


def installed_backends():
    """The namespaces of all installed (and usable) backends, for cross-backend tests."""
    found = []
    for name, _ in BACKENDS:
        try:
            if name == "cupy":
                cupy = importlib.import_module("cupy")
                if cupy.cuda.runtime.getDeviceCount() < 1:
                    continue
                found.append(cupy)
            else:
                found.append(importlib.import_module(name))
        except Exception:
            continue
    return found


@pytest.fixture(params=["lsmr", "lsqr"])
def solver(request):
    """``lsqdiff.lsmr`` or ``lsqdiff.lsqr``."""
    return getattr(lsqdiff, request.param)


def backend_name(xp) -> str:
    """'numpy', 'array_api_strict', 'jax', 'torch' or 'cupy'."""
    name = xp.__name__
    if name.startswith("jax"):
        return "jax"
    return name.split(".")[0]


def is_jax(xp) -> bool:
    return backend_name(xp) == "jax"


# --------------------------------------------------------------------------- #
# Moving arrays between NumPy and a backend
# --------------------------------------------------------------------------- #

def to_xp(xp, a, dtype: str | None = None):
    """A NumPy array (or nested list) as an array of ``xp``, optionally cast to ``dtype``."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    if backend_name(xp) == "torch":
        return xp.asarray(a.copy())  # a copy: never share memory with the reference
    return xp.asarray(a)


def to_np(x) -> np.ndarray:
    """Any backend's array (or a Python/NumPy scalar) as a NumPy array."""
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return x.detach().cpu().numpy()
    if mod == "cupy":
        return x.get()
    try:
        return np.asarray(x)
    except Exception:  # array_api_strict versions without __array__
        return np.from_dlpack(x)


def info_np(info) -> dict[str, np.ndarray]:
    """The numeric fields of a SolveInfo as NumPy values (works on every backend)."""
    return {f: to_np(getattr(info, f)) for f in
            ("istop", "itn", "normr", "normar", "norma", "conda", "normx", "converged")}


def default_float(xp):
    """The dtype integer inputs are promoted to on ``xp`` (float32 for torch by default)."""
    return xp.asarray(1.0).dtype


# --------------------------------------------------------------------------- #
# Test problems
# --------------------------------------------------------------------------- #

def orthonormal(rng: np.random.Generator, m: int, r: int, complex_: bool = False) -> np.ndarray:
    """An m x r matrix with orthonormal columns (Haar-ish, from QR of a Gaussian)."""
    X = rng.standard_normal((m, r))
    if complex_:
        X = X + 1j * rng.standard_normal((m, r))
    Q, R = np.linalg.qr(X)
    d = np.diagonal(R)
    return Q * (d / np.abs(d))  # fix the signs/phases so the draw is unbiased


def singular_values(kind: str, r: int) -> np.ndarray:
    """Singular values for ``kind``:

    * ``well``: evenly spread in [1, 10] (cond 10);
    * ``mild``: evenly spread in [1, 1.3] (cond 1.3): converges to 1e-12 in well
      under ``min(m, n)`` iterations, so the stopping iteration is far from the
      rounding-dominated end of the Krylov space;
    * ``ill``: log-spaced in [1e-6, 1] (cond 1e6);
    * ``rankdef``: like ``well`` but the last ``r // 2`` are exactly 0.
    """
    if kind == "well":
        return np.linspace(10.0, 1.0, r)
    if kind == "mild":
        return np.linspace(1.3, 1.0, r)
    if kind == "ill":
        return np.logspace(0.0, -6.0, r)
    if kind == "rankdef":
        s = np.linspace(10.0, 1.0, r)
        s[r - r // 2:] = 0.0
        return s
    raise ValueError(kind)


def make_matrix(m: int, n: int, s, seed: int = 0, complex_: bool = False) -> np.ndarray:
    """``A = U diag(s) V^H`` (m x n) with orthonormal U, V drawn from ``seed``.

    ``len(s)`` must be at most ``min(m, n)``; zeros in ``s`` make A rank-deficient.
    """
    s = np.asarray(s, dtype=float)
    r = s.shape[0]
    assert r <= min(m, n)
    rng = np.random.default_rng(seed)
    U = orthonormal(rng, m, r, complex_)
    V = orthonormal(rng, n, r, complex_)
    return (U * s) @ V.conj().T


SHAPES = {"tall": (30, 20), "wide": (20, 30), "square": (25, 25)}


def make_problem(shape: str = "tall", kind: str = "well", seed: int = 0, k: int | None = None,
                 complex_: bool = False, consistent: bool = False):
    """``(A, b)`` in float64 (complex128 with ``complex_``) as NumPy arrays.

    ``shape`` is a key of :data:`SHAPES` or an ``(m, n)`` pair; ``k`` columns in
    ``b`` (1-D when None). ``consistent`` puts b in the range of A.
    """
    m, n = SHAPES[shape] if isinstance(shape, str) else shape
    A = make_matrix(m, n, singular_values(kind, min(m, n)), seed, complex_)
    rng = np.random.default_rng(seed + 1000)
    cols = () if k is None else (k,)
    if consistent:
        xt = rng.standard_normal((n,) + cols)
        if complex_:
            xt = xt + 1j * rng.standard_normal((n,) + cols)
        b = A @ xt
    else:
        b = rng.standard_normal((m,) + cols)
        if complex_:
            b = b + 1j * rng.standard_normal((m,) + cols)
    return A, b


# --------------------------------------------------------------------------- #
# References and comparisons (float64 / complex128)
# --------------------------------------------------------------------------- #

def lstsq_ref(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minimum-norm least-squares solution by SVD (NumPy)."""
    return np.linalg.lstsq(A, b, rcond=None)[0]


def damped_ref(A: np.ndarray, b: np.ndarray, damp: float = 0.0, x0=None) -> np.ndarray:
    """``x0 + argmin_d ||A d - (b - A x0)||^2 + damp^2 ||d||^2`` (SciPy's semantics).

    Damped: the normal equations ``(A^H A + damp^2 I) d = A^H r0``; undamped:
    the pseudo-inverse ``d = A^+ r0`` (minimum norm).
    """
    A = np.asarray(A)
    r0 = b if x0 is None else b - A @ x0
    if damp > 0:
        n = A.shape[1]
        d = np.linalg.solve(A.conj().T @ A + damp**2 * np.eye(n), A.conj().T @ r0)
    else:
        d = np.linalg.pinv(A) @ r0
    return d if x0 is None else x0 + d


#: Norm-wise relative error allowed for a converged solve, by the solve's dtype.
RTOL = {"float64": 1e-8, "complex128": 1e-8, "float32": 2e-3, "complex64": 2e-3}

#: Tight stopping tolerances used when comparing to a reference, by dtype.
TIGHT = {"float64": dict(atol=1e-12, btol=1e-12), "complex128": dict(atol=1e-12, btol=1e-12),
         "float32": dict(atol=1e-5, btol=1e-5), "complex64": dict(atol=1e-5, btol=1e-5)}


def dtype_name(x) -> str:
    """'float64', 'float32', 'complex128', ... for an array of any backend."""
    return str(to_np(x).dtype)


def assert_solution(x, ref, rtol: float = 1e-8):
    """``||x - ref|| <= rtol * max(||ref||, 1)``, column by column for 2-D."""
    x = to_np(x)
    ref = np.asarray(ref)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    assert np.all(np.isfinite(x)), "solution has NaN/Inf"
    xs = x.reshape(x.shape[0], -1)
    rs = ref.reshape(ref.shape[0], -1)
    for j in range(xs.shape[1]):
        err = np.linalg.norm(xs[:, j] - rs[:, j])
        scale = max(np.linalg.norm(rs[:, j]), 1.0)
        assert err <= rtol * scale, (
            f"column {j}: ||x - ref|| = {err:.3e} > {rtol:.1e} * {scale:.3e}")


def assert_converged(info):
    """Every column of ``info`` reports convergence (istop in 0, 1, 2, 4, 5)."""
    v = info_np(info)
    assert np.all(v["converged"]), f"not converged: istop={v['istop']}, itn={v['itn']}"
    assert np.all(np.isin(v["istop"], [0, 1, 2, 4, 5])), v["istop"]


@pytest.fixture
def one_torch_thread():
    """One PyTorch thread for the test (tiny example models: more threads only
    add synchronisation), restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
