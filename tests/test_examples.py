"""The null-space examples (``lsqdiff.examples``), small versions, against
their unconstrained, penalty and Cooper / augmented-Lagrangian baselines.

Each test runs one example with ``size="small"`` and checks that (1) the
constrained run's residual is far below the unconstrained run's, (2) its task
metric meets a stated bound and (3) the baselines ran and reduced the residual.
The bounds leave room for seeds and platforms but fail if the constraint breaks
the fit (e.g. the network collapses to a constant) or the projection stops
working. The periodic, equivariant and conservative examples run through their
command line from a temporary working directory, which must receive the plot
while the repository's ``git status`` stays as it was.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_residual(result: dict, ratio: float) -> None:
    unc, con = result["unconstrained"]["residual"], result["constrained"]["residual"]
    assert con < ratio * unc, f"constrained residual {con:.3g} vs unconstrained {unc:.3g}"


def _check_baselines(result: dict, baselines: tuple[str, ...], ratio: float) -> None:
    unc = result["unconstrained"]["residual"]
    for m in baselines:
        res = result[m]["residual"]
        assert res < ratio * unc, f"{m} residual {res:.3g} vs unconstrained {unc:.3g}"
        assert math.isnan(result[m]["lsmr_iterations"])
    assert result["constrained"]["lsmr_iterations"] >= 1
    assert 0.0 <= result["constrained"]["converged"] <= 1.0


def _git_status() -> str | None:
    """``git status --porcelain`` of the repository (None outside a git checkout)."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True,
                         text=True)
    return out.stdout if out.returncode == 0 else None


def _run_cli(name: str, tmp_path, monkeypatch, capsys) -> dict:
    """``python -m lsqdiff.examples.<name> --small --seeds 1`` in ``tmp_path``:
    the plot lands there (the default ``--out``; ``--no-plot`` without
    matplotlib), the repository is untouched and the output says that small
    figures are a smoke test."""
    import importlib
    import importlib.util

    module = importlib.import_module(f"lsqdiff.examples.{name}")
    plot = importlib.util.find_spec("matplotlib") is not None
    before = _git_status()
    monkeypatch.chdir(tmp_path)
    argv = ["--small", "--seeds", "1"] + ([] if plot else ["--no-plot"])
    results = module.main(name, module.run, module.describe, argv, columns=module.COLUMNS)
    assert os.listdir(tmp_path) == ([f"nullspace_{name}.png"] if plot else [])
    assert "smoke test" in capsys.readouterr().out
    if before is not None:
        assert _git_status() == before
    return results[0]


def test_periodic(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cooper", reason="the Cooper baseline needs cooper-optim")
    r = _run_cli("periodic", tmp_path, monkeypatch, capsys)
    _check_residual(r, 5e-2)
    _check_baselines(r, ("penalty", "cooper"), 0.1)
    # The truth has RMS 0.79 on the test range: a constant fit scores about that.
    assert r["constrained"]["test_rmse"] < 0.5 * r["unconstrained"]["test_rmse"]
    assert r["constrained"]["train_rmse"] < 0.3


def test_equivariant(tmp_path, monkeypatch, capsys):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    r = _run_cli("equivariant", tmp_path, monkeypatch, capsys)
    _check_residual(r, 5e-2)
    _check_baselines(r, ("penalty", "auglag"), 0.1)
    # Data from one quadrant only: the constraint must carry the fit to the others.
    assert r["constrained"]["test_rmse"] < 0.6 * r["unconstrained"]["test_rmse"]


def test_conservative(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cooper", reason="the Cooper baseline needs cooper-optim")
    r = _run_cli("conservative", tmp_path, monkeypatch, capsys)
    _check_residual(r, 5e-2)
    _check_baselines(r, ("penalty", "cooper"), 0.1)
    assert r["constrained"]["curl_rms"] < r["unconstrained"]["curl_rms"]
    assert r["constrained"]["test_rmse"] < 0.5  # noise level of the samples: 0.3 per component


def test_seed_table():
    from lsqdiff.examples._compare import mean_std, seed_table

    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    runs = [{"constrained": {"r": 1.0}, "cooper": {"r": 4.0}, "settings": {}},
            {"constrained": {"r": 3.0}, "cooper": {"r": 4.0}, "settings": {}}]
    rows = seed_table(runs, [("r", "residual", ".2f")]).splitlines()
    assert rows[2:] == ["| null-space | 2.00 ± 1.41 |",
                        "| Cooper (aug. Lagrangian) | 4.00 ± 0.00 |"]


def test_bad_size():
    from lsqdiff.examples import periodic

    with pytest.raises(ValueError, match="size"):
        periodic.run(size="medium")
