"""Acquisition rules: which unrelaxed candidates a campaign relaxes next.

Each rule turns what the campaign knows in a round into a score per candidate, lower = relax
first (ties broken by pool order, i.e. by id). Energies in eV/atom.

| strategy | score | needs IS single points |
|---|---|---|
| `greedy` | predicted E_hull (ESNet mean on the current hull) | yes (IS-DOS is the input) |
| `lcb` | predicted E_hull - kappa x sigma (lower confidence bound: optimistic) | yes |
| `random` | a seeded random order (baseline) | no |
| `composition` | predicted E_hull of a composition-only model | no (composition is free) |
| `oracle` | true E_hull (relaxes in true order: the best any model could do) | yes |

`oracle` pays for the IS single points as the ESNet strategies do, so "fraction of the oracle's
saving" measures the ranking alone; the report also gives the saving of a perfect ranking that
needs no screening calculation at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("greedy", "lcb", "random", "composition", "oracle")
#: the prediction source each strategy ranks by (None: none)
SOURCE_OF = {"greedy": "esnet", "lcb": "esnet", "random": None, "composition": "composition", "oracle": None}
#: whether a strategy computes the IS single points of every candidate in round 0
PAYS_IS = {"greedy": True, "lcb": True, "random": False, "composition": False, "oracle": True}


@dataclass(frozen=True)
class RoundView:
    """What a strategy sees in one round, over the *remaining* candidates (arrays aligned).

    predicted_e_above_hull / predicted_std: of the strategy's source on the current hull (eV/atom,
    NaN = no prediction); true_e_above_hull: the final truth (oracle only; NaN otherwise);
    index: their positions in the pool; round: the round number (1 = first acquisition).
    """

    index: np.ndarray
    predicted_e_above_hull: np.ndarray
    predicted_std: np.ndarray
    true_e_above_hull: np.ndarray
    round: int
    seed: int
    n_pool: int


def scores(strategy: str, view: RoundView, kappa: float = 1.0) -> np.ndarray:
    """Score per remaining candidate (lower = relax first; NaN = last)."""
    if strategy in ("greedy", "composition"):
        return view.predicted_e_above_hull.copy()
    if strategy == "lcb":
        std = np.where(np.isfinite(view.predicted_std), view.predicted_std, 0.0)
        return view.predicted_e_above_hull - kappa * std
    if strategy == "oracle":
        return view.true_e_above_hull.copy()
    if strategy == "random":
        # one permutation of the whole pool for the seed: the same order whatever the round split
        rng = np.random.default_rng([view.seed, 7919])
        rank = rng.permutation(view.n_pool).astype(float)
        return rank[view.index]
    raise ValueError(f"unknown strategy {strategy!r}")


def ranking(score: np.ndarray) -> np.ndarray:
    """Positions of `score` in acquisition order: ascending, NaN last, ties in input order."""
    s = np.asarray(score, float)
    return np.argsort(np.where(np.isnan(s), np.inf, s), kind="stable")
