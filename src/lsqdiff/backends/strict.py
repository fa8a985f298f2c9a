"""array-api-strict adapter: its arrays compute with NumPy, whose floating-point
warnings a solve silences as the NumPy adapter does."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class StrictBackend(Backend):
    name = "array-api-strict"

    def solve_context(self) -> Any:
        # Stopped columns of a 2-D b divide by zero, and norms first try plain
        # squares, which may under- or overflow; neither result is used.
        return np.errstate(all="ignore")
