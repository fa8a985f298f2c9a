"""``python -m lsqdiff``: the demo (see `lsqdiff._demo`).

The demo is a program of its own, so it asks JAX for float64 through the
environment (unless the caller set ``JAX_ENABLE_X64``); the library never does.
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    from ._demo import main

    main()
