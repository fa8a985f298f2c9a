"""The undamped gradient's cost at any rank: how many backward solves run.

Without ``assume_full_rank`` the undamped backward needs ``b_bar = A^+H x_bar``,
``g = A^+ b_bar`` and ``y = A^+H (x - x0)`` (DESIGN.md section 2). ``g`` and
``y`` come from the duals of the ``b_bar`` solve and of the forward solve
(`lsqdiff._gradient.dual_pinv`), so a converged forward leaves one backward
solve, whatever the rank, warm start or cotangent, except that a tall ``A``
carries no forward dual (its y takes a solve where needed); a solve that stopped on
neither convergence test (its iteration limit) costs a solve for what its dual
would have given. Each case checks the gradients against the dense closed form
and counts the backward solves that ran an iteration, under NumPy
(`lsqdiff.vjp`) and PyTorch (autograd). Under JAX (``jax.vjp``, the transpose
of the tangent rule) the solves stay primitives that JAX differentiates again
for second derivatives, and the count is the same: the duals enter as the value
of the y solve and as the transpose of the min-norm pair, and the tangent
primitive's transpose solves for y only where w is not negligible
(`lsqdiff.backends.jax`).
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import make_problem, to_np
from grad_reference import assert_close, closed_form
from lsqdiff import _driver, _gradient

#: name -> problem (conftest.make_problem arguments and whether x0 is given)
CASES = {
    "tall": dict(shape="tall"),
    "wide": dict(shape="wide"),
    "tall-rankdef": dict(shape="tall", kind="rankdef"),
    "wide-rankdef": dict(shape="wide", kind="rankdef"),
    "square-rankdef-x0": dict(shape="square", kind="rankdef", x0=True),
    "wide-rankdef-2d-b": dict(shape="wide", kind="rankdef", k=2),
    "complex-tall-rankdef-x0": dict(shape="tall", kind="rankdef", complex_=True, x0=True),
}

#: Tight enough for gradients to 1e-8, loose enough that a projected dual's
#: check (`lsqdiff._gradient.dual_pinv`) is not decided by rounding.
TIGHT_GRAD = dict(atol=1e-12, btol=1e-12, conlim=0.0, maxiter=500)


def problem(case: str, cotangent: str):
    """``(A, b, x0, x_bar)``: ``x_bar`` random (``general``: off the row space of a
    rank-deficient A, so ``w != 0``) or ``2 x`` (``row``: the gradient of
    ``||x||^2``, in the row space, so ``w = 0``)."""
    c = dict(CASES[case])
    warm = c.pop("x0", False)
    seed = sorted(CASES).index(case)
    A, b = make_problem(seed=seed, **c)
    rng = np.random.default_rng(seed + 50)
    shape = (A.shape[1],) + b.shape[1:]

    def draw():
        z = rng.standard_normal(shape)
        return z + 1j * rng.standard_normal(shape) if c.get("complex_") else z

    x0 = draw() if warm else None
    x_bar = draw() if cotangent == "general" else 2 * closed_form(A, b, x0, 0.0, draw())["x"]
    return A, b, x0, x_bar


@pytest.fixture
def backward_solves(monkeypatch):
    """The iteration counts of the backward's LSMR solves, in the order they ran
    (a solve of several columns counts its slowest). Under JAX the tangent rule is
    compiled once per setting: the cache is cleared so that it is traced afresh
    with the recording solves, and again afterwards."""
    records: list[int] = []
    original, run = _gradient.lsmr_on, _driver.run

    def run_recorded(*args, **kwargs):
        state = run(*args, **kwargs)
        itn = state["itn"]
        if type(itn).__module__.startswith("jax"):
            import jax

            jax.debug.callback(lambda i: records.append(int(np.max(i))), itn)
        else:
            records.append(int(np.max(to_np(itn))))
        return state

    def recording(op, rhs, **kw):
        monkeypatch.setattr(_driver, "run", run_recorded)
        try:
            return original(op, rhs, **kw)
        finally:
            monkeypatch.setattr(_driver, "run", run)

    monkeypatch.setattr(_gradient, "lsmr_on", recording)
    _clear_jax_cache()
    yield records
    _clear_jax_cache()


def _clear_jax_cache():
    import sys

    if "jax" in sys.modules:
        import jax.numpy as jnp

        from lsqdiff.backends import backend_for

        backend_for(jnp)._compiled.clear()


def ran(records: list[int]) -> int:
    """How many solves ran an iteration (a zero right-hand side stops at once)."""
    return sum(1 for itn in records if itn > 0)


def assert_gradients(ref, gA, gb, gx0, scale, rtol):
    assert_close(to_np(gA), ref["A"], rtol, 1e-10 * scale, "A")
    assert_close(to_np(gb), ref["b"], rtol, 1e-10 * scale, "b")
    if ref["x0"] is not None:
        assert_close(to_np(gx0), ref["x0"], rtol, 1e-10 * scale, "x0")


def numpy_gradients(A, b, x0, x_bar, **opts):
    (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, x0=x0, **opts)
    g = pullback(x_bar)
    return info, g.A.todense(), g.b, g.x0


def torch_gradients(A, b, x0, x_bar, **opts):
    torch = pytest.importorskip("torch")
    At = torch.tensor(A, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    x0t = None if x0 is None else torch.tensor(x0, requires_grad=True)
    x, info = lsqdiff.lsmr(At, bt, x0=x0t, **opts)
    loss = (torch.tensor(x_bar).conj() * x).real.sum()  # Re <x_bar, x>
    grads = torch.autograd.grad(loss, [At, bt] + ([] if x0t is None else [x0t]))
    return info, grads[0], grads[1], None if x0t is None else grads[2]


def jax_gradients(A, b, x0, x_bar, **opts):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    if not jax.config.jax_enable_x64:
        pytest.skip("needs jax_enable_x64")
    args = [jnp.asarray(A), jnp.asarray(b)] + ([] if x0 is None else [jnp.asarray(x0)])

    def solve(A, b, *x0):
        return lsqdiff.lsmr(A, b, x0=x0[0] if x0 else None, **opts)

    (x, info), pull = jax.vjp(solve, *args)
    grads = pull((jnp.asarray(x_bar), jax.tree_util.tree_map(jnp.zeros_like, info)))
    jax.effects_barrier()
    return info, grads[0], grads[1], grads[2] if x0 is not None else None


FRAMEWORKS = {"numpy": numpy_gradients, "torch": torch_gradients, "jax": jax_gradients}
#: The frameworks whose gradient is `pullback` (JAX transposes `pushforward`).
PULLBACK = ["numpy", "torch"]


def run_case(framework, case, cotangent, rtol=1e-8, **opts):
    A, b, x0, x_bar = problem(case, cotangent)
    if framework == "jax" and np.iscomplexobj(A):
        pytest.skip("complex cotangents under JAX: covered by test_jax_grad.py")
    info, gA, gb, gx0 = FRAMEWORKS[framework](A, b, x0, x_bar, **opts)
    assert_gradients(closed_form(A, b, x0, 0.0, x_bar), gA, gb, gx0, np.linalg.norm(x_bar), rtol)
    return info


@pytest.mark.parametrize("cotangent", ["general", "row"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("framework", PULLBACK)
def test_one_backward_solve_at_any_rank(backward_solves, framework, case, cotangent):
    """A converged forward: exact gradients from one backward solve, where the
    rule used to take three (two where assume_full_rank applies); two where a
    tall A needs y (`y_takes_a_solve`)."""
    info = run_case(framework, case, cotangent, **TIGHT_GRAD)
    assert np.all(to_np(info.converged))
    assert ran(backward_solves) == 1 + y_takes_a_solve(case, cotangent), backward_solves


def y_takes_a_solve(case: str, cotangent: str) -> bool:
    """A tall A's forward carries no dual, so its y takes a solve wherever the
    gradient needs it: w != 0, i.e. A rank-deficient and x_bar off its row
    space, or a warm start that put a null-space part into x."""
    c = CASES[case]
    return (c["shape"] == "tall" and c.get("kind") == "rankdef"
            and (cotangent == "general" or c.get("x0", False)))


def one_short(framework: str, case: str) -> int:
    """One iteration fewer than the forward needs to converge at TIGHT_GRAD's
    tolerances in ``framework`` (rounding differs between them): it stops at its
    limit (istop 7) on a nearly exact x."""
    A, b, x0, x_bar = problem(case, "general")
    return int(np.max(to_np(FRAMEWORKS[framework](A, b, x0, x_bar, **TIGHT_GRAD)[0].itn))) - 1


@pytest.mark.parametrize("cotangent", ["general", "row"])
@pytest.mark.parametrize("case", list(CASES))
def test_jax_default_takes_one_solve(backward_solves, case, cotangent):
    """Under JAX the undamped rule's solves stay primitives that JAX can
    differentiate again (exact second derivatives), yet a converged forward costs
    one backward solve, as under `pullback`: y is the forward's dual, passed as
    the value of the solve for y, and b_bar and g come from one solve with A^H
    and its dual (the transpose of the min-norm pair primitive). The other two
    solves get a zero right-hand side and stop before their first iteration."""
    info = run_case("jax", case, cotangent, **TIGHT_GRAD)
    assert np.all(to_np(info.converged))
    assert ran(backward_solves) == 1 + y_takes_a_solve(case, cotangent), backward_solves


#: JAX compiles each case anew (seconds): only the cases that tell its rules apart
#: (w = 0 by full column rank, w = 0 by a row-space cotangent, w != 0).
Y_LIMIT = [(fw, case, cot) for fw in PULLBACK
           for case in ["tall", "wide-rankdef", "square-rankdef-x0"]
           for cot in ["general", "row"]] + [
    ("jax", "tall", "general"), ("jax", "wide-rankdef", "row"),
    ("jax", "wide-rankdef", "general")]


@pytest.mark.parametrize("framework, case, cotangent", Y_LIMIT)
def test_forward_at_its_iteration_limit_costs_the_y_solve(backward_solves, framework, case,
                                                          cotangent):
    """The forward stops at maxiter (istop 7): its stop code says nothing about
    its residual, so its dual is not used, and y takes a solve where w != 0 (A
    rank-deficient, x_bar off its row space); g still comes from the b_bar
    solve's dual. Where w = 0 (A of full column rank, or x_bar in the row
    space: 2 x from a cold start) y is not needed: under JAX too, whose
    transposed tangent rule solves for y only after the b_bar solve has said
    whether w is negligible (else it would always cost a second solve here).
    Still exact."""
    # grad_maxiter: the backward solves may take more than the forward's maxiter.
    opts = dict(TIGHT_GRAD, maxiter=one_short(framework, case), grad_maxiter=500)
    backward_solves.clear()
    # x is one iteration short of converged: it and so the gradient are off by ~1e-8
    # (a dual used without removing its residual part would be off by O(1)).
    info = run_case(framework, case, cotangent, rtol=1e-6, **opts)
    assert np.all(to_np(info.istop) == 7)
    # 2 x lies in the row space unless a warm start added a null-space part to x.
    w_zero = case == "tall" or (cotangent == "row" and not CASES[case].get("x0"))
    assert ran(backward_solves) == (1 if w_zero else 2), backward_solves


@pytest.mark.parametrize("framework, case", [
    (fw, case) for fw in PULLBACK for case in ["tall", "wide", "wide-rankdef"]] + [
    ("jax", "wide")])  # JAX: the forward's residual, traced, still spares g's solve
def test_backward_at_its_iteration_limit_costs_the_g_solve(backward_solves, framework, case):
    """The b_bar solve stops at its iteration limit: its dual is not used, and g
    takes a solve where the residual term needs it (r != 0: a tall or
    rank-deficient A; none for a wide full-rank A, whose residual is negligible).
    Its stop code no longer says that w is negligible either, so a tall A, whose
    forward carries no dual, takes a solve for y as well."""
    run_case(framework, case, "general", **TIGHT_GRAD)
    b_bar_itn = max(backward_solves)  # the one solve that ran
    backward_solves.clear()
    # One iteration short (the g solve too): b_bar and g are off by up to ~1e-6, the
    # gradient with them (a dual used without removing its residual part: O(1)).
    run_case(framework, case, "general", rtol=1e-4, grad_maxiter=b_bar_itn - 1, **TIGHT_GRAD)
    assert max(backward_solves) == b_bar_itn - 1
    assert ran(backward_solves) == {"wide": 1, "tall": 3}.get(case, 2), backward_solves


@pytest.mark.parametrize("case", ["tall-rankdef", "wide-rankdef"])
def test_dual_pinv_recovers_the_pseudo_inverse(case):
    """The claim behind it all, on a rank-deficient A with a residual: the dual of
    a least-squares solve differs from A^+H d by a multiple of the exact residual,
    so it is not y, but removing its part along the computed residual gives y."""
    import array_api_compat.numpy as xp

    from lsqdiff import _lsmr
    from lsqdiff.backends import backend_for

    A, b = make_problem(seed=7, **CASES[case])
    st = _driver.run(A, b, None, 0.0, xp=xp, backend=backend_for(xp), method=_lsmr,
                     dtype=A.dtype, maxiter=500, atol=1e-12, btol=1e-12, ctol=0.0,
                     options=(("dual", True),))
    x, z, istop = st["x"], st["zx"], st["istop"]
    y = np.linalg.pinv(A).T @ x
    assert istop in _gradient.LEAST_SQUARES
    assert np.linalg.norm(z - y) > 1e-3 * np.linalg.norm(y)  # the dual alone is off
    stop = (istop, st["norma"], _driver.residual_tilt(st, xp))
    got, ok, negligible = _gradient.dual_pinv(z, b - A @ x, stop, xp, target=x,
                                              adjoint=lambda v: A.T @ v, atol=1e-12, btol=1e-12)
    assert ok and not negligible
    assert_close(got, y, 1e-8, 0.0, "y")


@pytest.mark.parametrize("case", ["wide-rankdef", "square-rankdef-x0", "complex-tall-rankdef-x0"])
def test_block_fallback_off_the_cpu(monkeypatch, backward_solves, case):
    """Off a CPU, when the forward's dual gives no y (forward at its iteration
    limit, one right-hand side), y is solved beside b_bar as one block solve,
    and g comes from the dual of the block's b_bar column: one solve, and the
    same gradients as the two one-column solves the CPU path runs. A tall A
    carries no dual, so it takes no block either (its y is rarely needed): y's
    solve runs after b_bar's has shown w != 0."""
    from lsqdiff.backends._base import Backend

    A, b, x0, x_bar = problem(case, "general")
    opts = dict(TIGHT_GRAD, maxiter=one_short("numpy", case), grad_maxiter=500)
    cpu = numpy_gradients(A, b, x0, x_bar, **opts)
    monkeypatch.setattr(Backend, "on_cpu", lambda self, a: False)
    backward_solves.clear()
    info, *block = numpy_gradients(A, b, x0, x_bar, **opts)
    assert info.istop == 7
    assert ran(backward_solves) == 1 + (CASES[case]["shape"] == "tall"), backward_solves
    for got, ref, what in zip(block, cpu[1:], ["A", "b", "x0"]):
        if ref is not None:
            assert_close(got, ref, 1e-9, 0.0, what)
    # x is one iteration short of converged: the gradients are off by ~1e-6.
    ref = closed_form(A, b, x0, 0.0, x_bar)
    assert_gradients(ref, *block, np.linalg.norm(x_bar), 1e-4)


def spread_rank_deficient(m: int, n: int, rank: int, seed: int = 0):
    """``(A, b, x_bar)``: ``A`` of the given rank with singular values
    ``sqrt(linspace(1, 1e4))`` (cond 100, as the benchmarks' ``_rank400`` problems),
    ``b`` and ``x_bar`` random: a residual and a cotangent off the row space."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    A = (U * np.sqrt(np.linspace(1.0, 1e4, rank))) @ V.T
    return A, rng.standard_normal(m), rng.standard_normal(n)


@pytest.mark.parametrize("framework", ["numpy", "jax"])
def test_failed_duals_warm_start_their_solves(monkeypatch, framework):
    """At a working tolerance the duals of an inconsistent rank-deficient problem
    fail their check, so y and g take solves (`lsqdiff._gradient.dual_pinv`):
    each starts from its projected dual and takes a fraction of a cold solve's
    iterations, with gradients as accurate as from cold solves. (NumPy's
    `pullback` and JAX's transposed tangent rule complete them apart.)"""
    A, b, x_bar = spread_rank_deficient(60, 200, 40)
    ref = closed_form(A, b, None, 0.0, x_bar)
    project_out = _gradient._project_out

    def run(warm: bool):
        if not warm:  # the projected duals never serve as warm starts
            monkeypatch.setattr(_gradient, "_project_out", lambda *a: (project_out(*a)[0], False))
        _clear_jax_cache()
        with lsqdiff.backward_diagnostics() as infos:
            _, gA, _, _ = FRAMEWORKS[framework](A, b, None, x_bar, atol=1e-8, btol=1e-8)
        monkeypatch.setattr(_gradient, "_project_out", project_out)
        _clear_jax_cache()
        error = np.linalg.norm(to_np(gA) - ref["A"]) / np.linalg.norm(ref["A"])
        return sorted(int(np.max(to_np(i.itn))) for i in infos), error

    (*warm_completions, b_bar_itn), warm_error = run(True)
    (*cold_completions, _), cold_error = run(False)
    assert len(warm_completions) == len(cold_completions) == 2  # y and g: both duals failed
    assert max(warm_completions) <= 0.3 * min(cold_completions), (warm_completions,
                                                                   cold_completions)
    assert warm_error <= 2 * cold_error + 1e-12, (warm_error, cold_error)
    assert cold_error < 1e-6
