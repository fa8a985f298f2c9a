"""``python -m lsqdiff``: the demo (see :mod:`lsqdiff._demo`).

The demo is a program of its own, so it asks JAX for float64 through the
environment (unless the caller set ``JAX_ENABLE_X64``); the library never does.
"""

import os

os.environ.setdefault("JAX_ENABLE_X64", "1")

from ._demo import main  # noqa: E402

main()
