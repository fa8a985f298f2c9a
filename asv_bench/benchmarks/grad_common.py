"""Problems and helpers for the gradient benchmarks (``bench_gradients.py``,
``grad_quick.py`` and ``grad_memory.py``).

Each problem is float64 with a fixed seed: ``A = U diag(s) V^T`` with orthonormal
``U``, ``V`` (``k`` columns) and singular values ``s = sqrt(linspace(1, 1e4, k))``,
i.e. spread over [1, 100] (cond 100 on the range) with the eigenvalues of
``A^T A`` evenly spread; ``k = min(m, n)`` (full rank) or the problem's rank
(the ``_rank400`` problems: rank-deficient, so ``b`` has a residual even for
the wide one, and the any-rank rule is the only exact one).
LSMR reaches atol = btol = 1e-6 on these in about a hundred iterations (the
same spread on a log scale needs ~300). ``b`` is a standard normal vector, so
the tall problems have a nonzero residual.

The loss is ``sum(x**2)``, or ``sum((x - t)**2)`` for a fixed random ``t`` on
the ``_target`` problems (the same ``A`` and ``b`` as without the suffix); "value
and grad" is its value and its gradient with respect to ``A`` and ``b``. The
cotangent ``2 x`` of the first lies in the row space of ``A``; ``2 (x - t)``
does not where ``A`` is rank-deficient, so the gradient needs all three terms
of the any-rank rule. Nothing here imports JAX, PyTorch or matfree until a
helper for that framework is called.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import enable_jax_x64

#: name -> (m, n, damp, rank); rank None: full rank
GRAD_PROBLEMS = {
    "tall_2000x500": (2000, 500, 0.0, None),
    "wide_500x2000": (500, 2000, 0.0, None),
    "tall_2000x500_rank400": (2000, 500, 0.0, 400),
    "wide_500x2000_rank400": (500, 2000, 0.0, 400),
    "tall_2000x500_rank400_target": (2000, 500, 0.0, 400),
    "wide_500x2000_rank400_target": (500, 2000, 0.0, 400),
    "damped_2000x500": (2000, 500, 1.0, None),
}

#: The full-rank problems: the memory benchmarks need no more.
MEMORY_PROBLEMS = [name for name, (_, _, _, rank) in GRAD_PROBLEMS.items() if rank is None]

#: Solver settings: "tol" stops on atol = btol = 1e-6 (conlim SciPy's default
#: 1e8); "fixed60" runs exactly 60 iterations (every stopping test off), as in
#: matfree's published comparison.
MODES = {
    "tol": dict(atol=1e-6, btol=1e-6),
    "fixed60": dict(atol=0.0, btol=0.0, conlim=0.0, maxiter=60),
}

#: The implementations compared. lsqdiff's LSMR: as it comes, "+fr" with
#: assume_full_rank=True, "+cap" with grad_maxiter = maxiter (backward solves
#: capped at the forward's iteration count, matfree's rule; fixed-iteration
#: mode only). matfree's LSMR: as it comes, "+fr" with is_full_rank=True.
VARIANTS = ("lsqdiff", "lsqdiff+fr", "lsqdiff+cap", "lsqdiff+fr+cap", "matfree", "matfree+fr")


@functools.lru_cache(maxsize=None)
def grad_problem(name: str):
    """``(A, b, damp)`` as NumPy float64 arrays and a float."""
    m, n, damp, rank = GRAD_PROBLEMS[name]
    if name.endswith("_target"):
        return grad_problem(name.removesuffix("_target"))
    rng = np.random.default_rng(1)
    k = min(m, n) if rank is None else rank
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.sqrt(np.linspace(1.0, 1e4, k))
    A = (U * s) @ V.T
    b = rng.standard_normal(m)
    return A, b, damp


@functools.lru_cache(maxsize=None)
def loss_target(name: str):
    """``t`` of the loss ``sum((x - t)**2)`` (NumPy), or None for ``sum(x**2)``."""
    if not name.endswith("_target"):
        return None
    return np.random.default_rng(2).standard_normal(GRAD_PROBLEMS[name][1])


def flags(variant: str) -> set:
    return set(variant.split("+")[1:])


def variant_applies(problem: str, mode: str, variant: str) -> bool:
    """Full-rank variants only for undamped full-rank problems (lsqdiff ignores
    the flag when damp > 0; matfree's drops its damped rank correction; on a
    rank-deficient A both give wrong gradients); the cap only where the forward
    has an iteration cap of its own (fixed-iteration mode)."""
    f = flags(variant)
    _, _, damp, rank = GRAD_PROBLEMS[problem]
    if "fr" in f and (damp > 0 or rank is not None):
        return False
    if "cap" in f and "maxiter" not in MODES[mode]:
        return False
    return True


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def lsqdiff_options(mode: str, variant: str, **extra) -> dict:
    f = flags(variant)
    opts = dict(MODES[mode], assume_full_rank="fr" in f, **extra)
    if "cap" in f:
        opts["grad_maxiter"] = opts["maxiter"]
    return opts


def matfree_solver(mode: str, variant: str):
    """matfree's ``lsmr`` with the same settings (ctol = 1 / conlim)."""
    from matfree import lstsq

    o = MODES[mode]
    conlim = o.get("conlim", 1e8)
    return lstsq.lsmr(atol=o["atol"], btol=o["btol"], ctol=1.0 / conlim if conlim else 0.0,
                      maxiter=o.get("maxiter", 1_000_000), is_full_rank="fr" in flags(variant))


def jax_loss(problem: str, mode: str, variant: str, **extra):
    """``loss(A, b) -> sum(x**2)`` under JAX for one implementation (not jitted)."""
    enable_jax_x64()
    import jax.numpy as jnp

    damp = GRAD_PROBLEMS[problem][2]
    t = loss_target(problem)
    t = 0.0 if t is None else jnp.asarray(t)
    if variant.startswith("matfree"):
        run = matfree_solver(mode, variant)

        def loss(A, b):
            x, _ = run(lambda u, A: u @ A, b, A, damp=damp)
            return jnp.sum((x - t) ** 2)
    else:
        import lsqdiff

        opts = lsqdiff_options(mode, variant, **extra)

        def loss(A, b):
            x, _ = lsqdiff.lsmr(A, b, damp=damp, **opts)
            return jnp.sum((x - t) ** 2)
    return loss


def jax_callables(problem: str, mode: str, variant: str, **extra):
    """``(forward, value_and_grad)``: zero-argument callables, jitted, blocking.
    Call each once to compile before timing."""
    jax = enable_jax_x64()
    import jax.numpy as jnp

    A, b, _ = grad_problem(problem)
    Aj, bj = jnp.asarray(A), jnp.asarray(b)
    loss = jax_loss(problem, mode, variant, **extra)
    fwd = jax.jit(loss)
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return (lambda: jax.block_until_ready(fwd(Aj, bj)),
            lambda: jax.block_until_ready(vg(Aj, bj)))


def torch_callables(problem: str, mode: str, variant: str, **extra):
    """``(forward, value_and_grad)`` for lsqdiff under PyTorch (CPU): the forward
    solve on tensors that need no gradient, and forward + ``loss.backward()`` on
    tensors that do."""
    import torch

    import lsqdiff

    A, b, damp = grad_problem(problem)
    opts = lsqdiff_options(mode, variant, **extra)
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    Ag, bg = At.clone().requires_grad_(True), bt.clone().requires_grad_(True)
    t = loss_target(problem)
    t = 0.0 if t is None else torch.from_numpy(t)

    def forward():
        x, _ = lsqdiff.lsmr(At, bt, damp=damp, **opts)
        return ((x - t) ** 2).sum()

    def value_and_grad():
        Ag.grad = bg.grad = None
        x, _ = lsqdiff.lsmr(Ag, bg, damp=damp, **opts)
        loss = ((x - t) ** 2).sum()
        loss.backward()
        return loss, Ag.grad, bg.grad

    return forward, value_and_grad


def count_iterations(problem: str, mode: str, variant: str, framework: str = "torch", **extra):
    """``(forward_itn, [backward solve itn, ...])`` for one value-and-grad.

    lsqdiff: the backward solves (`lsqdiff._gradient.lsmr_on`) are wrapped to
    record their iteration counts (a 2-column block solve reports its slowest
    column); under JAX, those of the tangent rule and of its transpose.
    matfree: its solve function is wrapped the same way (a
    ``jax.debug.callback``), the first record being the forward. Not for timing.
    """
    if variant.startswith("matfree"):
        return _count_matfree(problem, mode, variant)
    from lsqdiff import _driver, _gradient

    records: list = []
    original = _gradient.lsmr_on

    def recording(op, rhs, **kw):
        # lsmr_on's own loop, recorded: _driver.run is wrapped for this one call.
        run = _driver.run

        def run_recorded(*args, **kwargs):
            st = run(*args, **kwargs)
            if framework == "jax":
                import jax

                jax.debug.callback(lambda i: records.append(int(np.max(i))), st["itn"])
            else:
                records.append(int(np.max(np.asarray(st["itn"]))))
            return st

        _driver.run = run_recorded
        try:
            return original(op, rhs, **kw)
        finally:
            _driver.run = run

    _gradient.lsmr_on = recording
    try:
        if framework == "jax":
            jax = enable_jax_x64()
            import jax.numpy as jnp

            from lsqdiff.backends import backend_for

            # The tangent rule is compiled once per setting: trace it afresh, recording.
            backend_for(jnp)._compiled.clear()

            A, b, damp = grad_problem(problem)
            import lsqdiff

            opts = lsqdiff_options(mode, variant, **extra)
            # Not jitted: the forward's own compiled loop, the backward traced fresh.
            (x, info), pull = jax.vjp(lambda A, b: lsqdiff.lsmr(A, b, damp=damp, **opts),
                                      jnp.asarray(A), jnp.asarray(b))
            fwd_itn = int(info.itn)
            t = loss_target(problem)
            x_bar = 2 * x if t is None else 2 * (x - jnp.asarray(t))
            pull((x_bar, jax.tree_util.tree_map(jnp.zeros_like, info)))
            jax.effects_barrier()
        else:
            import torch

            import lsqdiff

            A, b, damp = grad_problem(problem)
            opts = lsqdiff_options(mode, variant, **extra)
            Ag = torch.from_numpy(A).requires_grad_(True)
            bg = torch.from_numpy(b).requires_grad_(True)
            x, info = lsqdiff.lsmr(Ag, bg, damp=damp, **opts)
            fwd_itn = int(info.itn)
            t = loss_target(problem)
            (((x - (0.0 if t is None else torch.from_numpy(t))) ** 2).sum()).backward()
    finally:
        _gradient.lsmr_on = original
    return fwd_itn, records


def _count_matfree(problem: str, mode: str, variant: str):
    jax = enable_jax_x64()
    import jax.numpy as jnp
    from matfree import lstsq

    records: list = []
    original = lstsq._lstsq_custom_vjp

    def wrap(run, **kw):
        def counted(*args):
            x, stats = run(*args)
            jax.debug.callback(lambda i: records.append(int(i)), stats["iteration_count"])
            return x, stats

        return original(counted, **kw)

    lstsq._lstsq_custom_vjp = wrap
    try:
        loss = jax_loss(problem, mode, variant)
    finally:
        lstsq._lstsq_custom_vjp = original
    A, b, _ = grad_problem(problem)
    jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(A), jnp.asarray(b)))
    jax.effects_barrier()
    return records[0], records[1:]


def reference_gradients(problem: str):
    """``(x, dL/dA, dL/db)`` for ``L = sum(x**2)`` from dense closed forms
    (DESIGN.md section 2, via ``pinv`` or the damped normal equations)."""
    A, b, damp = grad_problem(problem)
    if damp > 0:
        M = A.T @ A + damp**2 * np.eye(A.shape[1])
        x = np.linalg.solve(M, A.T @ b)
        g = np.linalg.solve(M, 2 * x)
        b_bar = A @ g
        return x, np.outer(b - A @ x, g) - np.outer(b_bar, x), b_bar
    P = np.linalg.pinv(A)
    x = P @ b
    t = loss_target(problem)
    x_bar = 2 * x if t is None else 2 * (x - t)
    b_bar = P.T @ x_bar
    g, y, w = P @ b_bar, P.T @ x, x_bar - A.T @ b_bar
    return x, -np.outer(b_bar, x) + np.outer(b - A @ x, g) + np.outer(y, w), b_bar


def relative_error(got, ref) -> float:
    got = np.asarray(got)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


# --------------------------------------------------------------------------- #
# Memory: lsqdiff against autodiff through the iterations (unrolled LSQR)
# --------------------------------------------------------------------------- #

#: Memory configurations: what runs, and with respect to what it differentiates.
MEMORY_CONFIGS = {
    "lsqdiff_forward": "lsqdiff forward",
    "lsqdiff_grad": "lsqdiff value+grad (A, b)",
    "lsqdiff_grad_b": "lsqdiff value+grad (b only)",
    "unrolled_grad": "unrolled LSQR value+grad (A, b)",
    "unrolled_grad_b": "unrolled LSQR value+grad (b only)",
}
#: every stopping test off: the forward runs exactly ``maxiter`` iterations
STOP_OFF = dict(atol=0.0, btol=0.0, conlim=0.0)


def _lsqr_step(matvec, rmatvec, norm, sqrt, carry):
    """One plain LSQR iteration (Paige & Saunders; no damping, no stopping tests)
    on ``carry = (x, w, u, v, alpha, phibar, rhobar)``, in any framework."""
    x, w, u, v, alpha, phibar, rhobar = carry
    u = matvec(v) - alpha * u
    beta = norm(u)
    u = u / beta
    v = rmatvec(u) - beta * v
    alpha = norm(v)
    v = v / alpha
    rho = sqrt(rhobar**2 + beta**2)
    cs, sn = rhobar / rho, beta / rho
    theta, rhobar = sn * alpha, -cs * alpha
    phi, phibar = cs * phibar, sn * phibar
    x = x + (phi / rho) * w
    w = v - (theta / rho) * w
    return x, w, u, v, alpha, phibar, rhobar


def _lsqr_start(b, rmatvec, norm, zeros_like):
    """The carry of `_lsqr_step` before the first iteration, from ``x = 0``."""
    beta = norm(b)
    u = b / beta
    v = rmatvec(u)
    alpha = norm(v)
    v = v / alpha
    return zeros_like(v), v, u, v, alpha, beta, alpha


def lsqr_unrolled_torch(A, b, iters: int):
    """Plain LSQR in PyTorch, for autograd to differentiate through its
    ``iters`` iterations."""
    import torch

    norm = torch.linalg.vector_norm
    carry = _lsqr_start(b, lambda u: A.T @ u, norm, torch.zeros_like)
    for _ in range(iters):
        carry = _lsqr_step(lambda v: A @ v, lambda u: A.T @ u, norm, torch.sqrt, carry)
    return carry[0]


def lsqr_unrolled_jax(A, b, iters: int):
    """The same LSQR as a ``lax.fori_loop`` with a fixed trip count (reverse-mode
    differentiable: JAX stores every iteration's carry)."""
    import jax
    import jax.numpy as jnp

    def rmatvec(u):
        return u @ A  # A^T u at matvec speed on XLA:CPU

    carry = _lsqr_start(b, rmatvec, jnp.linalg.norm, jnp.zeros_like)
    body = lambda _, c: _lsqr_step(lambda v: A @ v, rmatvec, jnp.linalg.norm, jnp.sqrt, c)  # noqa: E731
    return jax.lax.fori_loop(0, iters, body, carry)[0]


def memory_config_applies(problem: str, config: str) -> bool:
    """The unrolled LSQR has no damping."""
    return not (config.startswith("unrolled") and GRAD_PROBLEMS[problem][2] > 0)


def _torch_memory_call(config: str, A, b, damp: float, iters: int):
    import torch  # noqa: F401

    import lsqdiff

    def solve(A_, b_):
        if config.startswith("unrolled"):
            return lsqr_unrolled_torch(A_, b_, iters)
        return lsqdiff.lsmr(A_, b_, damp=damp, maxiter=iters, **STOP_OFF)[0]

    if config == "lsqdiff_forward":
        return lambda: (solve(A, b) ** 2).sum()

    def value_and_grad():
        Ag = A.detach().requires_grad_(not config.endswith("_b"))
        bg = b.detach().requires_grad_(True)
        loss = (solve(Ag, bg) ** 2).sum()
        loss.backward()
        return loss, Ag.grad, bg.grad

    return value_and_grad


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def torch_memory_child(config: str, problem: str, iters: int) -> int:
    """In a fresh process: the increase of the peak RSS during one call (bytes).

    The problem is built and the code warmed up on a tiny problem first; then
    ``VmHWM`` is reset to the current RSS (``/proc/self/clear_refs``) and read
    after the call.
    """
    import gc

    import torch

    torch.set_num_threads(1)
    A_np, b_np, damp = grad_problem(problem)
    A, b = torch.from_numpy(A_np), torch.from_numpy(b_np)
    _torch_memory_call(config, A[:40, :10].clone(), b[:40].clone(), damp, min(iters, 5))()
    gc.collect()
    before = _proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    result = _torch_memory_call(config, A, b, damp, iters)()
    peak = _proc_status("VmHWM")
    del result
    return peak - before


def torch_memory(config: str, problem: str, iters: int) -> int:
    """`torch_memory_child` in a fresh Python process (Linux only), with glibc's
    mmap threshold fixed at 64 KiB so that freed tensors go back to the OS and
    the peak RSS follows the peak of live memory."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from benchmarks import grad_common as g; "
            "print(g.torch_memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4])))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, root, config, problem, str(iters)],
                         env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def jax_memory(config: str, problem: str, iters: int) -> dict:
    """XLA's memory analysis of the jitted call: ``temp``, ``output`` and
    ``argument`` sizes in bytes."""
    jax = enable_jax_x64()
    import jax.numpy as jnp

    import lsqdiff

    A_np, b_np, damp = grad_problem(problem)
    A, b = jnp.asarray(A_np), jnp.asarray(b_np)

    def loss(A_, b_):
        if config.startswith("unrolled"):
            x = lsqr_unrolled_jax(A_, b_, iters)
        else:
            x = lsqdiff.lsmr(A_, b_, damp=damp, maxiter=iters, **STOP_OFF)[0]
        return jnp.sum(x * x)

    if config == "lsqdiff_forward":
        f = jax.jit(loss)
    elif config.endswith("_b"):
        f = jax.jit(jax.value_and_grad(loss, argnums=1))
    else:
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    m = f.lower(A, b).compile().memory_analysis()
    return {"temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes,
            "argument": m.argument_size_in_bytes}
