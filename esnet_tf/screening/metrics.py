"""Metrics of `esnet evaluate` and `esnet screen`, in one place (scikit-learn underneath).

Stability classification follows Matbench Discovery's convention:

- a candidate is predicted stable when its predicted value passes the threshold
  (`stable_mask`: E_hull <= threshold, or formation energy < threshold);
- a candidate whose prediction is missing or NaN is **predicted unstable** and stays in every
  denominator (N, prevalence, accuracy, recall);
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R),
  accuracy = (TP + TN) / N, prevalence = (TP + FN) / N, DAF = precision / prevalence;
  a ratio whose denominator is 0 is undefined (None in the returned dicts, `null` in JSON),
  and so is F1 when precision or recall is.

Regression errors (eV/atom) are over the pairs where both values are finite.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def nan_to_none(x: Any) -> Any:
    """NaN / inf floats -> None (JSON null); anything else unchanged."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def stable_mask(values: np.ndarray, threshold: float = 0.0, *, inclusive: bool = True,
                tol: float = 0.0) -> np.ndarray:
    """Boolean 'stable' per value (eV/atom): `value <= threshold + tol` (`inclusive`) or `value < threshold`.

    NaN (a missing prediction) is never stable: predicted unstable, as in Matbench Discovery.
    """
    v = np.asarray(values, float)
    with np.errstate(invalid="ignore"):
        out = v <= threshold + tol if inclusive else v < threshold
    return np.asarray(out & np.isfinite(v), bool)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """`n`, `mae`, `rmse` (eV/atom), `r2` and `mean_truth` over the finite pairs; None where undefined."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y, p = np.asarray(y_true, float).ravel(), np.asarray(y_pred, float).ravel()
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    n = int(len(y))
    if not n:
        return {"n": 0, "mae": None, "rmse": None, "r2": None, "mean_truth": None}
    r2 = float(r2_score(y, p)) if n > 1 and float(np.ptp(y)) > 0 else None
    return {"n": n, "mae": float(mean_absolute_error(y, p)), "rmse": float(math.sqrt(mean_squared_error(y, p))),
            "r2": r2, "mean_truth": float(y.mean())}


def classification_metrics(true_stable: np.ndarray, pred_stable: np.ndarray,
                           true_values: np.ndarray | None = None,
                           pred_values: np.ndarray | None = None) -> dict[str, Any]:
    """Matbench Discovery stability metrics from boolean labels (+ `mae`, `rmse` in eV/atom).

    `pred_stable` must already count missing predictions as unstable (see `stable_mask`); every
    candidate given is in the denominators. Keys: n_candidates, tp, fp, fn, tn, precision, recall,
    f1, accuracy, prevalence, daf, tpr, fpr, tnr, fnr (+ mae, rmse over finite pairs when values
    are given). Undefined ratios are None.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    t = np.asarray(true_stable, bool).ravel()
    p = np.asarray(pred_stable, bool).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true_stable {t.shape} and pred_stable {p.shape} differ in length")
    n = int(len(t))
    if n:
        tn, fp, fn, tp = (int(x) for x in confusion_matrix(t, p, labels=[False, True]).ravel())
    else:
        tn = fp = fn = tp = 0

    def div(a: float, b: float) -> float:
        return a / b if b else math.nan

    undefined = {"zero_division": np.nan}
    precision = float(precision_score(t, p, **undefined)) if n else math.nan
    recall = float(recall_score(t, p, **undefined)) if n else math.nan
    f1 = float(f1_score(t, p, **undefined)) if math.isfinite(precision) and math.isfinite(recall) else math.nan
    prevalence = div(tp + fn, n)
    out: dict[str, Any] = {
        "n_candidates": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "accuracy": float(accuracy_score(t, p)) if n else math.nan,
        "prevalence": prevalence, "daf": div(precision, prevalence),
        "tpr": recall, "fpr": div(fp, fp + tn), "tnr": div(tn, tn + fp), "fnr": div(fn, fn + tp),
    }
    if true_values is not None and pred_values is not None and n:
        reg = regression_metrics(true_values, pred_values)
        out["mae"], out["rmse"] = reg["mae"], reg["rmse"]
    return {k: nan_to_none(v) for k, v in out.items()}


def threshold_metrics(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = 0.0) -> dict[str, Any]:
    """`classification_metrics` of 'formation energy < threshold' (eV/atom) on energies; NaN predictions unstable."""
    return classification_metrics(stable_mask(y_true, threshold, inclusive=False),
                                  stable_mask(y_pred, threshold, inclusive=False))
