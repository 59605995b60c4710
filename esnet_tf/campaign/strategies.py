"""Acquisition rules: which unrelaxed candidates a campaign relaxes next.

Each rule turns what the campaign knows in a round into a score per candidate, lower = relax
first (ties broken by pool order, i.e. by id). Energies in eV/atom.

| strategy | score | needs IS single points |
|---|---|---|
| `greedy` | predicted E_hull (ESNet mean on the current hull) | yes (IS-DOS is the input) |
| `lcb` | predicted E_hull - kappa x sigma (lower confidence bound: optimistic) | yes |
| `lower_bound` | predicted E_hull of the calibrated 90 % interval's lower bound (`_lower` column) | yes |
| `random` | a seeded random order (baseline) | no |
| `composition` | predicted E_hull of a composition-only model | no (composition is free) |
| `stable_per_cost` | -P(E_hull <= threshold) / estimated relaxation cost: the expected stable found per second | yes |
| `uip` | predicted E_hull of a universal potential's relaxed E_f (CHGNet) | no (its CPU seconds instead) |
| `oracle` | true E_hull (relaxes in true order: the best any model could do) | yes |

`stable_per_cost` takes P(stable) from the ESNet mean and sigma (floored at `min_std`) on the current
hull, and estimates a candidate's relaxation cost (s) as its measured IS single-point wall time times
the median relaxation / IS ratio of the candidates already relaxed with the same kind of relaxation
(`Pool.cost_group`; all relaxed ones while none of its kind is, and 1 before any), so that it learns,
for example, that an optimizer relaxation costs ~15 IS single points and an EOS scan ~4. It defers
expensive candidates: the stable ones it finds last are the costliest to relax.

`lcb` needs a std, `lower_bound` the interval's lower bound (`predicted_formation_energy_per_atom_lower`,
which `esnet predict` writes for a calibrated ensemble): a campaign refuses to run them without one.
On the current hull E_hull moves one for one with the candidate's E_f, so the lower bound's E_hull
is the mean's E_hull minus (mean - lower).

`uip` ranks like `greedy` but by the potential's predictions (source "uip", no sigma): a replay
builds them with `pool.uip_predictions` from an `esnet uip relax` CSV, the N/O/F/Cl references
fitted on the other folds only. Instead of the IS single points it pays the potential's CPU time per
candidate (and per elemental reference structure), `Predictions.cost_s`, counted in round 0.

`oracle` pays for the IS single points as the ESNet strategies do, so "fraction of the oracle's
saving" measures the ranking alone; the report also gives the saving of a perfect ranking that
needs no screening calculation at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("greedy", "lcb", "lower_bound", "stable_per_cost", "random", "composition", "uip", "oracle")
#: the rule the documentation recommends (cost-aware; the others spend more DFT to the same recall)
RECOMMENDED = "stable_per_cost"
#: the prediction source each strategy ranks by (None: none)
SOURCE_OF = {"greedy": "esnet", "lcb": "esnet", "lower_bound": "esnet", "stable_per_cost": "esnet",
             "random": None, "composition": "composition", "uip": "uip", "oracle": None}
#: whether a strategy computes the IS single points of every candidate in round 0
PAYS_IS = {"greedy": True, "lcb": True, "lower_bound": True, "stable_per_cost": True, "random": False,
           "composition": False, "uip": False, "oracle": True}
#: how a replay gets each prediction source: the CLI flag that gives it (one place for the error messages)
SOURCE_FLAG = {"esnet": "--predictions CSV", "composition": "--composition-predictions CSV",
               "uip": "--uip CSV (an `esnet uip relax` CSV with its .json beside it)"}
#: the strategies guided by ESNet's predictions, the recommended one first
ESNET_STRATEGIES = (RECOMMENDED, *(s for s in STRATEGIES if SOURCE_OF[s] == "esnet" and s != RECOMMENDED))
#: the strategies guided by any model's predictions (the ones a refit can change)
MODEL_GUIDED = tuple(s for s in STRATEGIES if SOURCE_OF[s] is not None)


@dataclass(frozen=True)
class RoundView:
    """What a strategy sees in one round, over the *remaining* candidates (arrays aligned).

    predicted_e_above_hull / predicted_std: of the strategy's source on the current hull (eV/atom,
    NaN = no prediction); true_e_above_hull: the final truth (oracle only; NaN otherwise);
    index: their positions in the pool; round: the round number (1 = first acquisition);
    estimated_relax_s: the estimated relaxation wall time (s; `stable_per_cost` only);
    threshold, min_std: the stability threshold and std floor (eV/atom);
    predicted_lower_e_above_hull: E_hull of the interval's lower bound (eV/atom; `lower_bound` only).
    """

    index: np.ndarray
    predicted_e_above_hull: np.ndarray
    predicted_std: np.ndarray
    true_e_above_hull: np.ndarray
    round: int
    seed: int
    n_pool: int
    estimated_relax_s: np.ndarray | None = None
    threshold: float = 0.0
    min_std: float = 0.05
    predicted_lower_e_above_hull: np.ndarray | None = None


def probability_stable(mean_e_hull: np.ndarray, std: np.ndarray | None, threshold: float,
                       min_std: float) -> np.ndarray:
    """P(E_hull <= threshold) per candidate with E_hull ~ N(mean, max(std, min_std)) (eV/atom); a
    missing std counts as min_std; NaN where the mean is NaN."""
    from scipy.stats import norm

    m = np.asarray(mean_e_hull, float)
    s = np.full(len(m), min_std) if std is None else np.where(np.isfinite(std), np.maximum(std, min_std), min_std)
    with np.errstate(divide="ignore", invalid="ignore"):
        return norm.cdf((threshold - m) / np.where(s > 0, s, 1e-12))


def estimated_relax_s(is_s: np.ndarray, group: np.ndarray, relaxed_is_s: np.ndarray, relaxed_relax_s: np.ndarray,
                      relaxed_group: np.ndarray) -> np.ndarray:
    """Relaxation wall time (s) per candidate: its IS wall time times the median relax / IS ratio of
    the relaxed candidates of its group (of all relaxed ones when its group has none; 1 before any)."""
    ok = np.isfinite(relaxed_is_s) & np.isfinite(relaxed_relax_s) & (relaxed_is_s > 0)
    ratio = relaxed_relax_s[ok] / relaxed_is_s[ok]
    overall = float(np.median(ratio)) if len(ratio) else 1.0
    by_group = {g: float(np.median(ratio[relaxed_group[ok] == g])) for g in set(relaxed_group[ok].tolist())}
    factor = np.array([by_group.get(g, overall) for g in group.tolist()], float)
    return np.where(np.isfinite(is_s) & (is_s > 0), is_s, np.nan) * factor


def scores(strategy: str, view: RoundView, kappa: float = 1.0) -> np.ndarray:
    """Score per remaining candidate (lower = relax first; NaN = last)."""
    if strategy in ("greedy", "composition", "uip"):
        return view.predicted_e_above_hull.copy()
    if strategy == "lcb":
        std = np.where(np.isfinite(view.predicted_std), view.predicted_std, 0.0)
        return view.predicted_e_above_hull - kappa * std
    if strategy == "lower_bound":
        if view.predicted_lower_e_above_hull is None:
            raise ValueError("lower_bound needs predicted_lower_e_above_hull")
        return view.predicted_lower_e_above_hull.copy()
    if strategy == "stable_per_cost":
        p_stable = probability_stable(view.predicted_e_above_hull, view.predicted_std, view.threshold, view.min_std)
        cost = view.estimated_relax_s if view.estimated_relax_s is not None else np.ones(len(view.index))
        cost = np.where(np.isfinite(cost) & (cost > 0), cost, np.nanmedian(cost) if np.any(np.isfinite(cost)) else 1.0)
        return -p_stable / cost
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
