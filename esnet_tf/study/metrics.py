"""Scores of one study unit: errors, polymorph ranking and E_hull <= 0 screening of the test fold.

Screening places each test candidate's predicted E_f on the hull of the *training* folds' entries
plus the elements at 0 eV/atom (`esnet_tf.screening.formation_energy_references`); truly stable =
the label's e_above_hull <= 0 (the hull of the whole snapshot). The `oof_hull_*` keys repeat the
metrics with the truth recomputed from the true E_f on the same out-of-fold hull. eV/atom.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from esnet_tf.study.data import StudyData

#: the screening metrics kept per unit (and their `oof_hull_` twins)
SCREEN_KEYS = ("precision", "recall", "f1", "daf")


def polymorph_ranking(formulas: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[float, int]:
    """(correct, total) over compositions with >= 2 polymorphs: predicted lowest == true lowest.

    Tied predictions (composition-only models give every polymorph the same value) count as a
    random pick among the tied ones: credit 1/k when the true lowest is among the k tied.
    """
    correct, total = 0.0, 0
    for f in np.unique(formulas):
        m = np.where(formulas == f)[0]
        if len(m) < 2:
            continue
        total += 1
        tied = m[np.isclose(pred[m], pred[m].min(), rtol=0, atol=1e-9)]
        correct += float(m[np.argmin(truth[m])] in tied) / len(tied)
    return correct, total


def training_references(data: StudyData, train_idx: np.ndarray, note: str) -> Any:
    """The training rows as reference entries (E_f x atoms) plus every element of the snapshot at 0 eV/atom."""
    from esnet_tf.screening import formation_energy_references, parse_formula

    a = data.is_
    rows = [(str(a["id"][i]), parse_formula(str(a["formula"][i])), float(a["formation_energy_per_atom"][i]))
            for i in train_idx]
    elements = {el.symbol for f in a["formula"] for el in parse_formula(str(f)).elements}
    return formation_energy_references(rows, note, elements)


def screening_metrics(data: StudyData, refs: Any, test_idx: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """E_hull <= 0 screening of the test fold against `refs` (which must not hold a test-fold entry)."""
    from esnet_tf.screening import Candidates, ScreenConfig, screen

    test_ids = data.is_["id"][test_idx]
    leaked = set(test_ids.tolist()) & set(refs.ids)
    if leaked:
        raise AssertionError(f"test-fold entries in the reference hull: {sorted(leaked)[:5]}")
    out: dict[str, Any] = {}
    for prefix, truth in (("", {"e_above_hull": data.is_["e_above_hull"][test_idx]}),
                          ("oof_hull_", {"formation_energy": data.y[test_idx]})):
        cands = Candidates(ids=test_ids, predicted=pred, formulas=data.is_["formula"][test_idx], **truth)
        m = screen(cands, refs, ScreenConfig(mode="ehull", threshold=0.0), costs=data.costs()).metrics
        for key in SCREEN_KEYS:
            v = m.get(key)
            out[prefix + key] = None if v is None or not math.isfinite(v) else float(v)
        tr = (m.get("cost") or {}).get("at_target_recall") or {}
        out[prefix + "cost_reduction_at_90_recall"] = tr.get("cost_reduction")
        out[prefix + "n_true_stable"] = int(m["tp"] + m["fn"]) if m.get("tp") is not None else None
    return out


def unit_metrics(data: StudyData, refs: Any, test_idx: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """n_test, MAE, RMSE (eV/atom), polymorph ranking and the screening metrics of one unit."""
    y = data.y[test_idx]
    err = pred - y
    c, n = polymorph_ranking(data.is_["formula"][test_idx], y, pred)
    return {"n_test": int(len(test_idx)), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "polymorph_correct": c, "polymorph_total": n, **screening_metrics(data, refs, test_idx, pred)}
