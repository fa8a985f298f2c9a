"""The null-space examples (``lsqdiff.examples``), small versions, against
their unconstrained and penalty baselines.

Each test runs one example with ``size="small"`` (no plot, so matplotlib is not
needed) and checks that (1) the constrained run's residual is far below the
unconstrained run's and (2) its task metric meets a stated bound. The bounds
leave room for seeds and platforms but fail if the constraint breaks the fit
(e.g. the network collapses to a constant) or the projection stops working.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_thread():
    """The examples' models are tiny: more threads only add synchronisation,
    which costs orders of magnitude on a busy machine (as the CLI does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_residual(result: dict, ratio: float) -> None:
    unc, con = result["unconstrained"]["residual"], result["constrained"]["residual"]
    assert con < ratio * unc, f"constrained residual {con:.3g} vs unconstrained {unc:.3g}"


def test_periodic():
    from lsqdiff.examples import periodic

    r = periodic.run(size="small", seed=0)
    _check_residual(r, 5e-2)
    # The truth has RMS 0.79 on the test range: a constant fit scores about that.
    assert r["constrained"]["test_rmse"] < 0.5 * r["unconstrained"]["test_rmse"]
    assert r["constrained"]["train_rmse"] < 0.3


def test_equivariant():
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    from lsqdiff.examples import equivariant

    r = equivariant.run(size="small", seed=0)
    _check_residual(r, 5e-2)
    # Data from one quadrant only: the constraint must carry the fit to the others.
    assert r["constrained"]["test_rmse"] < 0.6 * r["unconstrained"]["test_rmse"]


def test_conservative():
    from lsqdiff.examples import conservative

    r = conservative.run(size="small", seed=0)
    _check_residual(r, 5e-2)
    assert r["constrained"]["curl_rms"] < r["unconstrained"]["curl_rms"]
    assert r["constrained"]["test_rmse"] < 0.5  # noise level of the samples: 0.3 per component


def test_bad_size():
    from lsqdiff.examples import periodic

    with pytest.raises(ValueError, match="size"):
        periodic.run(size="medium")
