"""In-place vector updates (`lsqdiff._vectors`): PyTorch updates a single
right-hand side's vectors in place; the iterates must be those of the
new-array updates used for a block of columns."""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from lsqdiff import _lsqr, _solve
from conftest import make_problem

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape", ["tall", "wide"])
@pytest.mark.parametrize("damp", [0.0, 0.3])
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_single_column_in_place_matches_block(shape, damp, name):
    A, b = make_problem(shape, seed=41)
    x0 = np.random.default_rng(42).standard_normal(A.shape[1])
    At, bt, x0t = torch.tensor(A), torch.tensor(b), torch.tensor(x0)
    solve = getattr(lsqdiff, name)
    kwargs = dict(damp=damp, atol=0.0, btol=0.0, maxiter=12)
    x, info = solve(At, bt, x0=x0t, **kwargs)
    X, block = solve(At, bt[:, None], x0=x0t[:, None], **kwargs)
    assert info.itn == 12 and int(block.itn[0]) == 12
    np.testing.assert_allclose(x.numpy(), X[:, 0].numpy(), rtol=1e-12, atol=1e-14)
    for field in ("normr", "normar", "norma", "conda", "normx"):
        np.testing.assert_allclose(getattr(info, field), float(getattr(block, field)[0]),
                                   rtol=1e-12)
    if name == "lsqr":  # SciPy's var, which only the NumPy compat layer exposes
        var = [_solve.solve(_lsqr, At, b_, x0=x0_, conlim=1e8, default_maxiter=None,
                            calc_var=True, **kwargs)[1]["var"]
               for b_, x0_ in ((bt, x0t), (bt[:, None], x0t[:, None]))]
        np.testing.assert_allclose(var[0].numpy(), var[1][:, 0].numpy(), rtol=1e-12)


def test_in_place_keeps_x_at_a_non_finite_product():
    # A product turns NaN at the fourth call (the fourth iteration's): the solve stops
    # (istop 8) and returns the third iterate, which an in-place update must not
    # have overwritten.
    A, b = make_problem("tall", seed=43)
    At = torch.tensor(A)
    calls = []

    def matvec(v):
        calls.append(1)
        out = At @ v
        return out * float("nan") if len(calls) == 4 else out

    op = lsqdiff.LinearOperator(A.shape, matvec, lambda u: At.T @ u)
    x, info = lsqdiff.lsmr(op, torch.tensor(b), atol=0.0, btol=0.0, maxiter=10)
    x_ref, _ = lsqdiff.lsmr(At, torch.tensor(b), atol=0.0, btol=0.0, maxiter=3)
    assert info.istop == 8
    assert torch.isfinite(x).all()
    np.testing.assert_allclose(x.numpy(), x_ref.numpy(), rtol=1e-12)


def _pieces_operator(At, sizes):
    """A with ``A^T u`` also given in pieces of ``sizes`` (then the remainder)."""
    cuts = np.cumsum(sizes).tolist()

    AH = At.mH

    def pieces(u):
        return list(torch.tensor_split(AH @ u, cuts))

    return lsqdiff.LinearOperator(At.shape, lambda v: At @ v, lambda u: AH @ u,
                                  rmatvec_pieces=pieces)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("chunk_floats", [1, 5, 64])
@pytest.mark.parametrize("sizes", [(), (3, 7), (1, 1, 0, 11)], ids=["whole", "two", "uneven"])
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_sweeps_by_slices_and_pieces_match_block(monkeypatch, chunk_floats, sizes, name,
                                                 complex_):
    # The in-place updates run slice by slice (here slices of 1, 5 and 64 floats
    # against n = 20 or 30), and read A^T u in the operator's pieces, whose ends
    # fall inside the slices; the iterates must be those of the block path.
    from lsqdiff.backends import torch as torch_backend

    monkeypatch.setattr(torch_backend, "_IN_PLACE",
                        torch_backend._InPlace(chunk_floats * (16 if complex_ else 8)))
    solve = getattr(lsqdiff, name)
    for shape in ("tall", "wide"):
        A, b = make_problem(shape, seed=44, complex_=complex_)
        At, bt = torch.tensor(A), torch.tensor(b)
        kwargs = dict(atol=0.0, btol=0.0, maxiter=15)
        x, info = solve(_pieces_operator(At, sizes), bt, **kwargs)
        X, block = solve(At, bt[:, None], **kwargs)
        np.testing.assert_allclose(x.numpy(), X[:, 0].numpy(), rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(info.normx, float(block.normx[0]), rtol=1e-11)
        np.testing.assert_allclose(info.normar, float(block.normar[0]), rtol=1e-9)
        np.testing.assert_allclose(info.conda, float(block.conda[0]), rtol=1e-9)
        if name == "lsqr":  # SciPy's var, updated inside the same group
            var = [_solve.solve(_lsqr, A_, b_, x0=None, damp=0.0, conlim=1e8, default_maxiter=None,
                                calc_var=True, **kwargs)[1]["var"]
                   for A_, b_ in ((_pieces_operator(At, sizes), bt), (At, bt[:, None]))]
            np.testing.assert_allclose(var[0].numpy(), var[1][:, 0].numpy(), rtol=1e-11)


@pytest.mark.parametrize("pieces, error, match", [
    (lambda g: [g[:5], g[5:-1]], ValueError, r"rmatvec_pieces returned pieces of total length 19, "
                                             r"expected n = 20"),
    (lambda g: [g[:, None]], TypeError, r"rmatvec_pieces must return a list of 1-D tensors"),
], ids=["short", "2-D"])
def test_bad_rmatvec_pieces(pieces, error, match):
    A, b = make_problem("tall", seed=45)
    At = torch.tensor(A)
    op = lsqdiff.LinearOperator(At.shape, lambda v: At @ v, lambda u: At.T @ u,
                                rmatvec_pieces=lambda u: pieces(At.T @ u))
    with pytest.raises(error, match=match):
        lsqdiff.lsmr(op, torch.tensor(b))
