"""The study's statistics: percentile bootstrap intervals and paired tests over matched units.

Errors and differences in eV/atom.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: bootstrap resamples of a pooled interval
N_BOOTSTRAP = 2000


def bootstrap_ci(err: np.ndarray, stat: Callable[[np.ndarray], float], n: int = N_BOOTSTRAP, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap over the rows of `err` (`n` resamples, `seed`)."""
    err = np.asarray(err, float)
    rng = np.random.default_rng(seed)
    draws = np.array([stat(err[rng.integers(0, len(err), len(err))]) for _ in range(n)])
    a = (1 - level) / 2
    return float(stat(err)), float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))


def mae_of(e: np.ndarray) -> float:
    """Mean absolute value of errors `e`."""
    return float(np.abs(e).mean())


def rmse_of(e: np.ndarray) -> float:
    """Root mean square of errors `e`."""
    return float(np.sqrt((e ** 2).mean()))


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Paired a - b over matched units: mean difference with a t-interval, and the Wilcoxon signed-rank
    test (scipy.stats.wilcoxon, two-sided). None where undefined (fewer than 2 pairs; all differences 0)."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    out: dict[str, Any] = {"n_pairs": int(len(d)), "mean_diff": float(d.mean()) if len(d) else None,
                           "ci_low": None, "ci_high": None, "wilcoxon_statistic": None, "p_value": None}
    if len(d) >= 2:
        half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        out["ci_low"], out["ci_high"] = float(d.mean() - half), float(d.mean() + half)
    if len(d) >= 1 and np.any(d != 0):
        res = stats.wilcoxon(d)
        out["wilcoxon_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and population std of the finite values (None and NaN left out), and their count."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}
