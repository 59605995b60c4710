"""The DFT cost of screening: recall of truly stable candidates against the DFT time spent.

Candidates are ranked by score (most stable first). Sending the best k to DFT costs the IS
single points of *all* candidates plus the relaxations of those k, against the baseline of
relaxing every candidate (cost fraction 1):

    cost_fraction(k) = (IS single points of ALL + relaxations of the k chosen) / relaxations of ALL

Wall times in seconds; without any, each relaxation costs 1 and IS single points 0.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.screening.metrics import nan_to_none

#: Columns of the DFT wall times (s), as written by `esnet dft` into labels.csv.
COST_COLUMNS = ("is_wall_time_s", "relax_wall_time_s")
UNIT_COST_SOURCE = "unit cost: 1 per relaxation, IS single points not counted (no wall times given)"


@dataclass(frozen=True)
class Costs:
    """Wall times (s) of the IS single point and the relaxation per candidate id."""

    by_id: Mapping[str, tuple[float, float]]
    source: str

    def arrays(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(IS single point s, relaxation s) arrays for `ids`; UserError naming the ids without a cost row."""
        unknown = [i for i in ids if i not in self.by_id]
        if unknown:
            raise UserError(f"{self.source}: no cost row for candidate id(s) {unknown[:5]}"
                            f"{' ...' if len(unknown) > 5 else ''} ({len(unknown)} of {len(ids)}): "
                            "give wall times for every candidate")
        pairs = np.array([self.by_id[i] for i in ids], float).reshape(len(ids), 2)
        return pairs[:, 0], pairs[:, 1]


def _checked(source: str, id_: str, is_s: float, relax_s: float) -> tuple[float, float]:
    if not all(math.isfinite(x) and x >= 0 for x in (is_s, relax_s)):
        raise UserError(f"{source}: id {id_!r}: wall times must be finite and >= 0 s, got {(is_s, relax_s)}")
    return float(is_s), float(relax_s)


def costs_from_labels(path: str | Path) -> Costs:
    """Wall times by id from a labels.csv (`id`, `is_wall_time_s`, `relax_wall_time_s` in s); other columns ignored."""
    from esnet_tf.labels import read_labels

    rows = read_labels(path, path_column=None, require_energy=False, required_columns=COST_COLUMNS)
    return Costs({r.id: _checked(f"{path}:{r.line}", r.id, *(r.float(c, path) for c in COST_COLUMNS))
                  for r in rows}, str(path))


def costs_from_columns(ids: Sequence[str], is_wall_time_s: np.ndarray, relax_wall_time_s: np.ndarray,
                       source: str) -> Costs:
    """Wall times (s) given as arrays beside the candidates (e.g. the predictions CSV's own columns)."""
    return Costs({i: _checked(source, i, a, b) for i, a, b in zip(ids, is_wall_time_s, relax_wall_time_s)}, source)


def cost_curve(score: np.ndarray, true_stable: np.ndarray, relax_cost: np.ndarray,
               is_cost: np.ndarray) -> dict[str, np.ndarray]:
    """Recall and DFT cost when the k best-ranked candidates (k = 0..N) are relaxed.

    Candidates are ranked by ascending `score` (more stable first, ties in input order; NaN,
    a missing prediction, last). `relax_cost_fraction` = relaxations spent / relaxing everything
    (ends at 1); `cost_fraction` additionally counts the IS single points of all candidates;
    `n_found`: truly stable among the k relaxed.
    """
    s = np.asarray(score, float)
    order = np.argsort(np.where(np.isnan(s), np.inf, s), kind="stable")
    t = np.asarray(true_stable, bool)[order]
    rc = np.asarray(relax_cost, float)[order]
    total_relax = rc.sum()
    is_total = float(np.sum(is_cost))
    n_pos = t.sum()
    k = np.arange(len(t) + 1)
    found = np.concatenate([[0], np.cumsum(t)]).astype(int)
    spent = np.concatenate([[0.0], np.cumsum(rc)])
    return {
        "order": order,
        "k": k,
        "n_found": found,
        "fraction_sent": k / max(len(t), 1),
        "recall": found / n_pos if n_pos else np.full(len(k), np.nan),
        "relax_cost_fraction": spent / total_relax if total_relax else np.zeros(len(k)),
        "cost_fraction": (spent + is_total) / total_relax if total_relax else np.zeros(len(k)),
    }


def curve_point(curve: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    """The curve after relaxing the best `k`: n_relaxed, recall, cost_fraction, cost_reduction, ..."""
    frac = float(curve["cost_fraction"][k])
    return {k_: nan_to_none(v) for k_, v in {
        "n_relaxed": int(k), "fraction_relaxed": float(curve["fraction_sent"][k]),
        "recall": float(curve["recall"][k]),
        "relax_cost_fraction": float(curve["relax_cost_fraction"][k]),
        "cost_fraction": frac, "cost_reduction": 1.0 - frac,
        "candidate_reduction": 1.0 - float(curve["fraction_sent"][k]),
    }.items()}


def cost_at_recall(cost: np.ndarray, found: np.ndarray, n_stable: int, level: float, *,
                   relax_all_s: float | None = None, unit_s: float | None = None) -> dict[str, Any]:
    """The first point of a cumulative curve at which `level` of the `n_stable` truly stable are found.

    cost[k], found[k]: DFT cost (s, or a fraction) and stable found after the k-th acquisition
    (k = 0: before any). The one rule of "cost to recall" for screening and campaigns: the first k
    with found[k] >= ceil(level x n_stable). Returns recall (the level asked), reached, n_relaxed (k),
    cost_s (cost[k]), cost_relaxations (/ unit_s), cost_fraction (/ relax_all_s) and saving
    (1 - cost_fraction); None where a divisor is not given or the level is not reached.
    """
    need = math.ceil(level * n_stable - 1e-9)
    hit = np.nonzero(np.asarray(found) >= need)[0]
    if not len(hit):
        return {"recall": level, "reached": False, "cost_s": None}
    k = int(hit[0])
    c = float(np.asarray(cost, float)[k])
    return {"recall": level, "reached": True, "n_relaxed": k, "cost_s": c,
            "cost_relaxations": c / unit_s if unit_s else None,
            "cost_fraction": c / relax_all_s if relax_all_s else None,
            "saving": 1 - c / relax_all_s if relax_all_s else None}


def curve_at_recall(curve: dict[str, np.ndarray], target: float) -> dict[str, Any] | None:
    """`curve_point` of a `cost_curve` where `cost_at_recall` first reaches `target` (None without stable truths)."""
    n_pos = int(curve["n_found"][-1])
    if not n_pos:
        return None
    hit = cost_at_recall(curve["cost_fraction"], curve["n_found"], n_pos, target)
    return {"target_recall": target, **curve_point(curve, hit["n_relaxed"])}
