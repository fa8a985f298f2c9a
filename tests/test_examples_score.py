"""`lsqdiff.examples.score`: the conservativeness constraint and its products
against dense Jacobians, the null-space step's residual decay, the Langevin
sampler on a Gaussian's score, and the ``--small`` run of every data set."""

from __future__ import annotations

import doctest
import importlib
import json
import math

import pytest

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(dim=3, seed=0):
    from lsqdiff.examples._score_model import ScoreNet

    torch.manual_seed(seed)
    return ScoreNet(dim, width=8, depth=2).double()


def _points(k, dim, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, dim, generator=g, dtype=torch.float64)
    sigma = torch.rand(k, 1, generator=g, dtype=torch.float64) + 0.2
    u = torch.randn(k, dim, generator=g, dtype=torch.float64)
    w = torch.randn(k, dim, generator=g, dtype=torch.float64)
    return x, sigma, u, w


def _dense_input_jacobians(model, x, sigma):
    return torch.stack([torch.autograd.functional.jacobian(
        lambda z: model(z[None], s[None])[0], xi) for xi, s in zip(x, sigma)])


def test_constraint_matches_dense_input_jacobian():
    from lsqdiff.examples._score_model import (asymmetry_at, asymmetry_constraint,
                                               jacobian_products)

    model = _tiny()
    x, sigma, u, w = _points(5, 3)
    J = _dense_input_jacobians(model, x, sigma)  # (k, d, d)
    expected = torch.einsum("ki,kij,kj->k", u, J - J.transpose(1, 2), w)
    c = asymmetry_constraint(model, dict(model.named_parameters()), x, sigma, u, w)
    torch.testing.assert_close(c, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(asymmetry_at(model, {"x": x, "sigma": sigma, "u": u, "w": w}),
                               expected.detach(), rtol=1e-10, atol=1e-12)
    jv, jtv = jacobian_products(model, x, sigma, w)
    torch.testing.assert_close(jv, torch.einsum("kij,kj->ki", J, w))
    torch.testing.assert_close(jtv, torch.einsum("kji,kj->ki", J, w))


def test_constraint_jvp_vjp_match_dense_parameter_jacobian():
    """The products the null-space projection runs LSMR with (``J v`` and
    ``J^T u`` of c in the parameters) against ``jacrev`` of c, formed densely."""
    from lsqdiff.examples._score_model import asymmetry_constraint
    from lsqdiff.nullspace._torch import linearize

    model = _tiny()
    x, sigma, u, w = _points(6, 3)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def c(p):
        return asymmetry_constraint(model, p, x, sigma, u, w)

    dense = torch.func.jacrev(c)(params)
    D = torch.cat([dense[n].reshape(6, -1) for n in params], 1)  # (k, N)
    lin = linearize(c, params, {n: torch.zeros_like(p) for n, p in params.items()})
    g = torch.Generator().manual_seed(2)
    v = torch.randn(D.shape[1], generator=g, dtype=torch.float64)
    r = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lin.matvec(v), D @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lin.rmatvec(r), D.T @ r, rtol=1e-9, atol=1e-12)
    assert torch.linalg.matrix_rank(D) == 6  # full row rank: LSMR can meet J d = -gamma c


def test_penalty_is_hutchinson_estimate_of_frobenius_asymmetry():
    from lsqdiff.examples._score_model import asymmetry_penalty

    model = _tiny()
    x, sigma, _, _ = _points(4, 3)
    J = _dense_input_jacobians(model, x, sigma)
    exact = torch.mean(torch.sum((J - J.transpose(1, 2)) ** 2, (1, 2)))
    g = torch.Generator().manual_seed(3)
    v = torch.randn(4 * 4000, 3, generator=g, dtype=torch.float64)
    est = asymmetry_penalty(model, x.repeat(4000, 1), sigma.repeat(4000, 1), v)
    assert est.requires_grad
    assert abs(float(est.detach()) - float(exact)) < 0.05 * float(exact)


def test_energy_model_is_conservative():
    from lsqdiff.examples._score_model import EnergyNet, relative_asymmetry

    torch.manual_seed(0)
    model = EnergyNet(3, width=8, depth=2).double()
    x, sigma, _, _ = _points(5, 3)
    J = _dense_input_jacobians(model, x, sigma)
    torch.testing.assert_close(J, J.transpose(1, 2))
    r = relative_asymmetry(model, x, torch.tensor([1.0, 0.1], dtype=torch.float64),
                           torch.Generator().manual_seed(0))
    assert r < 1e-12
    assert relative_asymmetry(_tiny(), x, torch.tensor([1.0, 0.1], dtype=torch.float64),
                              torch.Generator().manual_seed(0)) > 1e-3


def test_nullspace_step_residual_decays_at_rate_one_minus_gamma():
    """With fixed constraint points, each step removes the fraction gamma of the
    residual (update placement: J u' = -gamma c), up to second-order terms."""
    from lsqdiff.examples._score_model import asymmetry_at, make_step

    gamma = 0.5
    model = _tiny(dim=2)
    x, sigma, u, w = _points(8, 2)
    pts = {"x": x, "sigma": sigma, "u": u, "w": w}
    step, opt = make_step("nullspace", model, lr=1e-3, mu=0.0, gamma=gamma, maxiter=50)
    g = torch.Generator().manual_seed(4)
    norms = [float(torch.linalg.norm(asymmetry_at(model, pts)))]
    for _ in range(6):
        data = torch.randn(32, 2, generator=g, dtype=torch.float64)
        eps = torch.randn(32, 2, generator=g, dtype=torch.float64)
        step(data, torch.full((32, 1), 0.5, dtype=torch.float64), eps, eps, pts)
        assert opt.last_info.converged
        norms.append(float(torch.linalg.norm(asymmetry_at(model, pts))))
    ratios = [b / a for a, b in zip(norms, norms[1:])]
    assert all(abs(r - (1 - gamma)) < 0.03 for r in ratios), ratios


def test_langevin_matches_gaussian_moments():
    """On the exact noise-perturbed score of N(m, C), the sampler returns C's moments."""
    from lsqdiff.examples._score_model import noise_levels
    from lsqdiff.examples._score_sampling import annealed_langevin

    m = torch.tensor([1.0, -2.0], dtype=torch.float64)
    C = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)

    def score(x, s):
        P = torch.linalg.inv(C + float(s) ** 2 * torch.eye(2, dtype=torch.float64))
        return -(x - m) @ P

    # The ladder, steps and ratio of the example's full runs.
    sigmas = noise_levels(3.0, 0.03, 10).double()
    g = torch.Generator().manual_seed(0)
    x0 = 3.0 * torch.randn(6000, 2, generator=g, dtype=torch.float64)
    x = annealed_langevin(score, sigmas, x0, steps=50, ratio=0.5, generator=g)
    assert torch.linalg.norm(x.mean(0) - m) < 0.05
    assert torch.linalg.norm(torch.cov(x.T) - C) < 0.04 * torch.linalg.norm(C)
    with pytest.raises(ValueError, match="ratio"):
        annealed_langevin(score, sigmas, x0, steps=3, ratio=2.5, generator=g)


@pytest.mark.parametrize("data", ["moons", "swissroll", "8gaussians", "digits"])
def test_small_run(data):
    pytest.importorskip("ot", reason="the sample scores use POT")
    pytest.importorskip("sklearn", reason="the data sets come from scikit-learn")
    pytest.importorskip("tqdm")
    from lsqdiff.examples import score

    r = score.run(data, size="small", seeds=[0])
    runs = {m: rs[0] for m, rs in r["runs"].items()}
    for m, figures in runs.items():
        for k in ("swd", "mmd2", "asymmetry", "heldout_dsm", "ms_per_step", "final_rms_c"):
            assert math.isfinite(figures[k]), (m, k)
    assert runs["energy"]["asymmetry"] < 1e-5
    # The residual at each step's fresh constraint points, measured before the step:
    # in 2-D one probe pair per point pins the whole curl; in 64-D a few random
    # pairs per point leave most of the antisymmetric part free.
    bound = 0.9 if data == "digits" else 0.5
    assert runs["nullspace"]["final_rms_c"] < bound * runs["unconstrained"]["final_rms_c"]
    # The sampler did not blow up (the small digits models are barely trained).
    assert all(f["swd"] < 3 * r["settings"]["sigma_max"] for f in runs.values())


def test_cli_writes_results(tmp_path, capsys):
    pytest.importorskip("ot", reason="the sample scores use POT")
    pytest.importorskip("sklearn", reason="the data sets come from scikit-learn")
    pytest.importorskip("tqdm")
    from lsqdiff.examples import score

    score.main(["--small", "--seeds", "1", "--data", "8gaussians", "--methods",
                "unconstrained,energy", "--no-plot", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "smoke test" in out and "| energy |" in out
    saved = json.loads((tmp_path / "score_results.json").read_text())
    assert set(saved["8gaussians"]["summary"]) == {"unconstrained", "energy", "data"}


def test_bad_input():
    from lsqdiff.examples import score
    from lsqdiff.examples._score_model import make_step, noise_levels

    with pytest.raises(ValueError, match="data"):
        score.run("mnist", size="small")
    with pytest.raises(ValueError, match="size"):
        score.run("moons", size="medium")
    with pytest.raises(ValueError, match="methods"):
        score.run("moons", size="small", methods=["adam"])
    with pytest.raises(ValueError, match="method"):
        make_step("adam", _tiny(), lr=1e-3, mu=1.0, gamma=0.5, maxiter=5)
    with pytest.raises(ValueError, match="sigma_max"):
        noise_levels(0.1, 1.0, 5)


@pytest.mark.parametrize("name", ["lsqdiff.examples._score_model",
                                  "lsqdiff.examples._score_sampling",
                                  "lsqdiff.examples.score"])
def test_docstring_examples(name):
    if name != "lsqdiff.examples._score_model":
        pytest.importorskip("ot")
        pytest.importorskip("sklearn")
        pytest.importorskip("tqdm")
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
