"""Composition-only baselines of the accuracy study (`esnet_tf.study`) and the campaign replay.

- `magpie_features`: Magpie-style element-property statistics of a composition: for each of
  `ELEMENT_PROPERTIES` the fraction-weighted mean, min, max, range (max - min) and mean absolute
  deviation (sum_i x_i |p_i - mean|), from the atomic-fraction vector (Z = 1..118) that
  `esnet_tf.featurize` writes as `composition`.
- `gbr_fraction` / `gbr_magpie`: scikit-learn gradient boosting on the fractional composition or
  on those statistics; `crossfit`: out-of-fold predictions over given groups (the inner
  cross-fitting of a residual model, so no row's baseline is fit on that row's own fold).
- `with_energies`: features plus energy columns (the IS single point's or a potential's formation
  energy), the inputs of the study's energy baselines (`esnet_tf.study.models`: gbr_magpie_is, gbr_uip, ...).

Missing element properties (pymatgen has no value, e.g. the electronegativity of He, Ne, Ar or
the atomic radius of Kr, Xe) are imputed with the median of that property over the elements
Z = 1..103 that have one; `element_property_table` returns which (element, property) pairs were
imputed, so a caller can check that none of its elements needed it. Energies in eV/atom.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import numpy as np

#: pymatgen `Element` attributes used (n_valence is computed: electrons outside the noble-gas core).
ELEMENT_PROPERTIES = ("Z", "row", "group", "X", "atomic_radius", "atomic_mass", "mendeleev_no",
                      "melting_point", "n_valence")
STATISTICS = ("mean", "min", "max", "range", "mad")
N_ELEMENTS = 118
#: elements whose properties set the imputation median (the heavier ones are mostly unknown)
_MEDIAN_OVER_Z = 103

#: gradient-boosting settings shared by both composition baselines
GBR_PARAMS = {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05}


def _n_valence(electronic_structure: str) -> float:
    """Electrons outside the noble-gas core of a pymatgen electronic structure, e.g. '[Ar].3d10.4s2.4p1' -> 13."""
    total = 0
    for token in electronic_structure.split("."):
        if token.startswith("["):
            continue
        m = re.fullmatch(r"\d+[spdfg](\d+)", token)
        if not m:
            return math.nan
        total += int(m.group(1))
    return float(total)


def _property(element: object, name: str) -> float:
    """One property as a float; NaN when pymatgen has no value (None, NaN, or it raises)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for every missing value
            if name == "n_valence":
                return _n_valence(element.electronic_structure)  # type: ignore[attr-defined]
            value = getattr(element, name)
        return math.nan if value is None else float(value)
    except Exception:  # pymatgen raises on some unknown values instead of returning None
        return math.nan


@functools.lru_cache(maxsize=1)
def element_property_table() -> tuple[np.ndarray, dict[str, list[str]]]:
    """(118, len(ELEMENT_PROPERTIES)) property values by Z-1 (imputed), and {property: imputed element symbols}."""
    from pymatgen.core import Element

    raw = np.array([[_property(Element.from_Z(z), p) for p in ELEMENT_PROPERTIES] for z in range(1, N_ELEMENTS + 1)])
    table, imputed = raw.copy(), {}
    for j, p in enumerate(ELEMENT_PROPERTIES):
        missing = np.isnan(raw[:, j])
        if missing.any():
            table[missing, j] = np.nanmedian(raw[:_MEDIAN_OVER_Z, j])
            imputed[p] = [Element.from_Z(int(z) + 1).symbol for z in np.flatnonzero(missing)]
    table.setflags(write=False)
    return table, imputed


def magpie_feature_names() -> list[str]:
    """Column names of `magpie_features`, property-major: 'X_mean', 'X_min', ..."""
    return [f"{p}_{s}" for p in ELEMENT_PROPERTIES for s in STATISTICS]


def magpie_features(composition: np.ndarray) -> np.ndarray:
    """(N, 118) atomic fractions (Z = 1..118) -> (N, 5 x len(ELEMENT_PROPERTIES)) statistics.

    Rows are renormalised to sum 1; a row with no atoms is an error (ValueError).
    """
    x = np.asarray(composition, dtype=float)
    if x.ndim != 2 or x.shape[1] != N_ELEMENTS:
        raise ValueError(f"composition must be (N, {N_ELEMENTS}) atomic fractions, got shape {x.shape}")
    totals = x.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError(f"{int(np.sum(totals <= 0))} composition row(s) have no atoms")
    x = x / totals
    table, _ = element_property_table()
    present = x > 0
    out = np.empty((len(x), len(ELEMENT_PROPERTIES), len(STATISTICS)))
    for j in range(len(ELEMENT_PROPERTIES)):
        p = table[:, j][None, :]
        mean = (x * p).sum(axis=1)
        lo = np.where(present, p, np.inf).min(axis=1)
        hi = np.where(present, p, -np.inf).max(axis=1)
        mad = (x * np.abs(p - mean[:, None])).sum(axis=1)
        out[:, j] = np.stack([mean, lo, hi, hi - lo, mad], axis=1)
    return out.reshape(len(x), -1)


def fit_predict_gbr(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    """scikit-learn GradientBoostingRegressor (`GBR_PARAMS`) fit on the training rows; test predictions (eV/atom)."""
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(random_state=seed, **GBR_PARAMS)
    model.fit(x_train, y_train)
    return model.predict(x_test)


def gbr_fraction(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    """Gradient boosting on the fractional composition vector; predictions for `test_idx` (eV/atom)."""
    x, y = arrays["composition"], arrays["formation_energy_per_atom"]
    return fit_predict_gbr(x[train_idx], y[train_idx], x[test_idx], seed)


def gbr_magpie(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    """Gradient boosting on `magpie_features`; predictions for `test_idx` (eV/atom)."""
    x, y = magpie_features(arrays["composition"]), arrays["formation_energy_per_atom"]
    return fit_predict_gbr(x[train_idx], y[train_idx], x[test_idx], seed)


def with_energies(features: np.ndarray, *energies: np.ndarray) -> np.ndarray:
    """(N, F) features with one column appended per energy (eV/atom, (N,) or (N, 1)): the inputs of the
    energy baselines (Magpie or fractional composition + the IS or the potential's formation energy).

    ValueError when an energy column has another length or holds NaN/inf (a baseline never guesses a
    missing energy)."""
    x = np.asarray(features, dtype=float)
    cols = []
    for j, e in enumerate(energies):
        e = np.asarray(e, dtype=float).reshape(-1)
        if len(e) != len(x):
            raise ValueError(f"energy column {j} has {len(e)} rows, the features {len(x)}")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"energy column {j} has {int(np.sum(~np.isfinite(e)))} missing (NaN/inf) value(s)")
        cols.append(e[:, None])
    return np.hstack([x, *cols])


BASELINES: dict[str, Callable[[dict, np.ndarray, np.ndarray, int], np.ndarray]] = {
    "gbr_fraction": gbr_fraction, "gbr_magpie": gbr_magpie}


def crossfit(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], idx: np.ndarray,
             groups: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions for the rows `idx`: each group g of `groups` (one label per row of
    `idx`) is predicted by `predict(fit_rows, predict_rows)` fit on the rows of `idx` outside g.

    Returns one prediction per row of `idx`, in order. A single group is an error (ValueError):
    there would be nothing to fit on.
    """
    idx, groups = np.asarray(idx), np.asarray(groups)
    if len(idx) != len(groups):
        raise ValueError(f"{len(idx)} rows but {len(groups)} group labels")
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError("cross-fitting needs at least 2 groups")
    out = np.full(len(idx), np.nan)
    for g in labels:
        inside = groups == g
        out[inside] = predict(idx[~inside], idx[inside])
    return out
