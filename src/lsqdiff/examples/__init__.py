"""Worked examples of the null-space method (constrained training).

Each module trains one model three ways — unconstrained, with a quadratic
penalty ``loss + mu * ||c||^2`` and with the null-space method of
`lsqdiff.nullspace` — and reports the constraint residual beside the task
metric. Run one with ``python -m lsqdiff.examples.<name>`` (``--small`` for the
quick version used by the test suite); each also offers
``run(size, seed, plot) -> dict``.

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

The examples need ``scikit-learn`` (the digits) and, for plots, ``matplotlib``
(the ``examples`` extra). Nothing is downloaded.
"""

NAMES = ("periodic", "equivariant", "conservative", "sparsity")
