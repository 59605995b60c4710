"""`screen`: predicted formation energies (eV/atom) -> E_hull, relax-or-skip decision, metrics, cost curve.

ESNet predicts the relaxed formation energy of an *unrelaxed* candidate from its IS-DOS; this
turns those predictions into a decision (relax it with full DFT or skip it) and measures what
that decision costs and finds (DESIGN.md section 6):

1. Each candidate's predicted energy above the hull (eV/atom) against the *reference* hull
   (`references.ReferenceHull`): candidates are not judged against each other's predictions
   unless `candidates_in_hull`; reference entries whose id is also a candidate id are left out
   of the hull unless `keep_overlapping_references` (otherwise the truth leaks into the hull).
2. Classification at a threshold (`ehull`: stable if E_hull <= t; `formation-energy`: stable if
   E_f < t) with Matbench Discovery's metrics (`metrics`): a candidate whose prediction is
   missing or NaN is predicted unstable and stays in every denominator.
3. The cost curve (`cost`): recall against DFT time when the best-ranked candidates are relaxed.

Bad rows are never dropped silently: each candidate carries a `status` (`ok`, `no_truth`,
`nan_prediction`, `bad_formula`, `unspanned`, `hull_error`) and a `reason`. The metrics cover
every candidate with a truth; those that could not be screened count as predicted unstable.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.isdos import DOMAIN_COLUMN, OUTPUT_NAME, PREDICTION_COLUMN, PREDICTION_STD_COLUMN
from esnet_tf.screening.cost import (COST_COLUMNS, UNIT_COST_SOURCE, Costs, cost_curve, costs_from_columns,
                                     costs_from_labels, curve_at_recall, curve_point)
from esnet_tf.screening.metrics import classification_metrics, regression_metrics, stable_mask
from esnet_tf.screening.references import ReferenceHull, ReferenceSet, parse_formula

#: Numerical tolerance of the hull (eV/atom): E_hull <= t + HULL_TOL is stable.
HULL_TOL = 1e-6
MODES = ("ehull", "formation-energy")
EF_COL = OUTPUT_NAME
EHULL_COL = "e_above_hull"
PRED_COL, STD_COL = PREDICTION_COLUMN, PREDICTION_STD_COLUMN
#: the lower bound of the calibrated 90 % interval (eV/atom), written by `esnet predict` for a calibrated ensemble
LOWER_COL = f"{PREDICTION_COLUMN}_lower"
#: how `screen` may rank: by the mean prediction, or by the interval's lower bound
RANK_BY = ("mean", "lower")
NEEDS_DFT_RULE = ("a candidate whose prediction is flagged outside the model's domain (non-empty domain column) "
                  "needs DFT: the with_flag metrics do not count it as predicted stable, the without_flag ones do")
PRED_EHULL_COL, TRUE_EHULL_COL = "predicted_e_above_hull", "true_e_above_hull"
#: candidates.csv columns, in order (the E_hull ones only with references).
CANDIDATE_COLUMNS = ("id", "formula", "status", "reason", PRED_COL, PRED_EHULL_COL, "score", "rank", "decision",
                     "predicted_stable", "needs_dft", DOMAIN_COLUMN, EF_COL, EHULL_COL, TRUE_EHULL_COL, "true_stable",
                     *COST_COLUMNS)
MISSING_PREDICTION_RULE = ("a candidate with a truth whose prediction is missing or NaN (any status but ok) is "
                           "predicted unstable and stays in every denominator (Matbench Discovery)")


@dataclass(frozen=True)
class ScreenConfig:
    """How `screen` decides; energies in eV/atom.

    mode: 'ehull' (stable if E_hull <= threshold) or 'formation-energy' (E_f < threshold).
    margin: relax candidates whose score <= threshold + margin.
    uncertainty_weight: score = prediction - weight x predicted std (optimistic ranking).
    candidates_in_hull: also put the candidates' predicted entries into the hull.
    keep_overlapping_references: keep reference entries whose id is a candidate id (checks only).
    target_recall: report the cost reduction at this recall (0 < r <= 1).
    rank_by: 'mean' (the prediction) or 'lower' (the calibrated 90 % interval's lower bound, `LOWER_COL`:
    score = prediction - (mean - lower), optimistic like the uncertainty weight but calibrated).
    """

    mode: str = "ehull"
    threshold: float = 0.0
    margin: float = 0.0
    uncertainty_weight: float = 0.0
    candidates_in_hull: bool = False
    keep_overlapping_references: bool = False
    target_recall: float = 0.9
    rank_by: str = "mean"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}: use one of {MODES}")
        if self.rank_by not in RANK_BY:
            raise UserError(f"unknown rank_by {self.rank_by!r}: use one of {RANK_BY}")
        if self.rank_by == "lower" and self.uncertainty_weight:
            raise UserError("rank by the interval's lower bound or by prediction - weight x std, not both: drop "
                            "--uncertainty-weight or --rank-by lower")
        if not 0 < self.target_recall <= 1:
            raise UserError(f"target recall must be in (0, 1], got {self.target_recall}")
        for name in ("threshold", "margin", "uncertainty_weight"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number (eV/atom), got {getattr(self, name)}")

    @property
    def tolerance(self) -> float:
        """Numerical tolerance of the stability test (eV/atom): HULL_TOL in ehull mode, else 0."""
        return HULL_TOL if self.mode == "ehull" else 0.0

    def stable(self, values: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Stable per value at `threshold` (default: the config's); NaN is unstable."""
        t = self.threshold if threshold is None else threshold
        return stable_mask(values, t, inclusive=self.mode == "ehull", tol=self.tolerance)


def _array(x: Any, n: int, name: str, dtype: Any = float) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, dtype=dtype).ravel()
    if len(a) != n:
        raise UserError(f"candidates: {name} has {len(a)} values for {n} ids")
    return a


@dataclass
class Candidates:
    """The candidates as arrays, one value per candidate in input order; energies in eV/atom.

    predicted: predicted formation energy (NaN = missing); std: its predicted std; formulas: needed
    against references; formation_energy / e_above_hull: truths (NaN = unknown); is_wall_time_s /
    relax_wall_time_s: DFT wall times (s) beside the predictions; problems: per-candidate input
    problem ('' = none), such a candidate is reported as `nan_prediction`; lower: the calibrated 90 %
    interval's lower bound (eV/atom); domain: why a prediction lies outside the model's domain ('' =
    inside), such a candidate needs DFT. A negative std or a lower bound above the prediction is refused.
    """

    ids: np.ndarray
    predicted: np.ndarray
    formulas: np.ndarray | None = None
    std: np.ndarray | None = None
    formation_energy: np.ndarray | None = None
    e_above_hull: np.ndarray | None = None
    is_wall_time_s: np.ndarray | None = None
    relax_wall_time_s: np.ndarray | None = None
    problems: np.ndarray | None = None
    lower: np.ndarray | None = None
    domain: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str).ravel()
        n = len(self.ids)
        if not n:
            raise UserError("no candidates in the predictions")
        if any(not i for i in self.ids):
            raise UserError("candidates: an id is empty")
        dup = [i for i, k in Counter(self.ids.tolist()).items() if k > 1]
        if dup:
            raise UserError(f"candidates: duplicate id(s) {dup[:5]}: ids must be unique")
        self.predicted = _array(self.predicted, n, "predicted")
        for f in ("std", "formation_energy", "e_above_hull", "is_wall_time_s", "relax_wall_time_s", "lower"):
            setattr(self, f, _array(getattr(self, f), n, f))
        self.formulas = _array(self.formulas, n, "formulas", str)
        self.problems = _array(self.problems, n, "problems", object)
        self.domain = _array(self.domain, n, "domain", object)
        with np.errstate(invalid="ignore"):
            for arr, wrong, what in ((self.std, lambda: self.std < 0, "predicted std is negative (a std is >= 0)"),
                                     (self.lower, lambda: self.lower > self.predicted + 1e-9,
                                      "the interval's lower bound lies above the prediction")):
                bad = np.flatnonzero(wrong()) if arr is not None else []
                if len(bad):
                    raise UserError(f"candidate {self.ids[bad[0]]!r}: {what} ({len(bad)} candidate(s) like it): "
                                    "remake the predictions with `esnet predict`")

    def __len__(self) -> int:
        return len(self.ids)


def _number(value: str | None) -> float:
    """CSV cell -> float; empty / missing -> NaN; garbage -> ValueError."""
    if value is None or value.strip() == "":
        return math.nan
    return float(value)


def candidates_from_rows(rows: Sequence[Mapping[str, str]], *, with_std: bool = False,
                         source: str = "predictions") -> Candidates:
    """Predictions-CSV rows (`esnet predict` columns, text cells) -> `Candidates`.

    A cell that is not a number makes that candidate's values NaN with the problem recorded
    (status `nan_prediction`); `with_std` reads `predicted_formation_energy_per_atom_std`; the
    interval's lower bound (`LOWER_COL`) and the `domain` flag are read where the columns exist.
    """
    if not rows:
        raise UserError(f"{source}: no candidates")
    cols = set(rows[0])
    missing = [c for c in ("id", PRED_COL) if c not in cols]
    if missing:
        raise UserError(f"{source}: missing column(s) {missing}")
    n = len(rows)
    has_costs = all(c in cols for c in COST_COLUMNS)
    values = {k: np.full(n, np.nan) for k in ("pred", "std", "ef", "eh", "is", "rx", "lower")}
    problems = np.full(n, "", dtype=object)
    for i, r in enumerate(rows):
        try:
            values["pred"][i] = _number(r.get(PRED_COL))
            values["ef"][i] = _number(r.get(EF_COL))
            values["eh"][i] = _number(r.get(EHULL_COL))
            values["std"][i] = _number(r.get(STD_COL)) if with_std else 0.0
            values["lower"][i] = _number(r.get(LOWER_COL))
        except ValueError as exc:
            for k in ("pred", "ef", "eh", "lower"):
                values[k][i] = math.nan
            values["std"][i] = 0.0
            problems[i] = f"not a number: {exc}"
        if has_costs:
            try:
                values["is"][i], values["rx"][i] = (_number(r.get(c)) for c in COST_COLUMNS)
            except ValueError as exc:
                raise UserError(f"{source}: id {r['id']!r}: bad wall time ({exc})") from None
    try:
        return Candidates(
            ids=[r["id"] for r in rows], predicted=values["pred"],
            formulas=[r.get("formula") or "" for r in rows] if "formula" in cols else None,
            std=values["std"] if with_std and STD_COL in cols else None,
            formation_energy=values["ef"], e_above_hull=values["eh"],
            is_wall_time_s=values["is"] if has_costs else None, relax_wall_time_s=values["rx"] if has_costs else None,
            problems=problems, lower=values["lower"] if LOWER_COL in cols else None,
            domain=[(r.get(DOMAIN_COLUMN) or "").strip() for r in rows] if DOMAIN_COLUMN in cols else None)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def merge_truths(rows: Sequence[Mapping[str, str]], truths_path: str | Path) -> list[dict[str, str]]:
    """Copy `formation_energy_per_atom` / `e_above_hull` (eV/atom) by id from a labels.csv.

    Ids missing from the truths file get empty truths (reported as status `no_truth`); an empty
    formula is filled from the labels.
    """
    from esnet_tf.labels import read_labels

    table = {r.id: r for r in read_labels(truths_path, path_column=None, require_energy=False)}
    merged = []
    for r in rows:
        r = dict(r)
        t = table.get(r["id"])
        for c in (EF_COL, EHULL_COL):
            v = getattr(t, c) if t is not None else math.nan
            r[c] = repr(float(v)) if math.isfinite(v) else ""
        if not r.get("formula") and t is not None:
            r["formula"] = t.formula
        merged.append(r)
    return merged


@dataclass
class ScreenResult:
    """Per-candidate columns (arrays in input order), JSON-ready metrics and the cost curve.

    `table` holds the candidates.csv columns listed in `columns`; `rank` is 0 for unranked
    candidates, `has_truth` says where `true_stable` is known. `rows` gives the same as dicts.
    """

    table: dict[str, np.ndarray]
    metrics: dict[str, Any]
    curve: dict[str, np.ndarray] | None
    columns: tuple[str, ...] = field(default=CANDIDATE_COLUMNS)

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per candidate (input order): Python scalars; no `rank` if unranked, `true_stable` '' if unknown."""
        out = []
        cols = [c for c in self.columns if c in self.table]
        for i in range(len(self.table["id"])):
            r: dict[str, Any] = {}
            for c in cols:
                v = self.table[c][i]
                r[c] = v.item() if isinstance(v, np.generic) else v
            if not r.get("rank"):
                r.pop("rank", None)
            if not self.table["has_truth"][i]:
                r["true_stable"] = ""
            out.append(r)
        return out

    def parity_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(truth, prediction, truly stable) of the candidates in the metrics, in the screened quantity."""
        ev = self.table["has_truth"]
        key = (PRED_EHULL_COL, TRUE_EHULL_COL) if self.metrics["mode"] == "ehull" else (PRED_COL, EF_COL)
        pred = np.where(self.table["status"] == "ok", self.table[key[0]], np.nan)
        return self.table[key[1]][ev], pred[ev], self.table["true_stable"][ev]


def _hull_problem(status: np.ndarray, reason: np.ndarray, i: int, mode: str, kind: str, why: str) -> None:
    """E_hull impossible: fatal for candidate i in ehull mode, a note in formation-energy mode."""
    if status[i] != "ok":
        return
    if mode == "ehull":
        status[i], reason[i] = kind, why
    else:
        reason[i] = f"no E_hull ({kind}): {why}"


def _place_on_hull(c: Candidates, comps: list, status: np.ndarray, reason: np.ndarray, pred: np.ndarray,
                   ef_true: np.ndarray, eh_given: np.ndarray, refs: ReferenceSet, config: ScreenConfig,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Predicted and true E_hull (eV/atom) of each candidate; the number of references excluded."""
    from tqdm.auto import tqdm

    exclude = () if config.keep_overlapping_references else set(c.ids.tolist())
    with_comp = [i for i, comp in enumerate(comps) if comp is not None]
    try:
        base = ReferenceHull(refs, exclude)
        hulls = {"pred": base, "true": base}
        if config.candidates_in_hull:  # the predicted (for the truth: the true) entries join the hull
            hulls["pred"] = ReferenceHull(refs, exclude, [(comps[i], pred[i]) for i in with_comp
                                                          if status[i] == "ok"])
            hulls["true"] = ReferenceHull(refs, exclude, [(comps[i], ef_true[i]) for i in with_comp
                                                          if math.isfinite(ef_true[i])])
    except Exception as exc:  # qhull / pymatgen errors on degenerate reference sets
        raise UserError(f"references {refs.sources}: PhaseDiagram failed ({type(exc).__name__}: {exc})") from None
    pred_eh, true_eh = np.full(len(c), np.nan), np.full(len(c), np.nan)
    for i in tqdm(range(len(c)), desc="E_hull", unit="candidate", disable=not progress or None):
        comp = comps[i]
        if comp is None:
            continue
        miss = hulls["pred"].missing(comp)
        if miss:
            _hull_problem(status, reason, i, config.mode, "unspanned", f"references have no elemental entry for "
                          f"{'-'.join(miss)} (chemical system {comp.chemical_system})")
            continue
        try:
            if status[i] == "ok":
                pred_eh[i] = hulls["pred"].e_above_hull(comp, pred[i])
            if math.isfinite(ef_true[i]):
                true_eh[i] = hulls["true"].e_above_hull(comp, ef_true[i])
        except Exception as exc:
            pred_eh[i] = true_eh[i] = math.nan
            _hull_problem(status, reason, i, config.mode, "hull_error", f"PhaseDiagram failed: {exc}")
        if not math.isfinite(true_eh[i]) and math.isfinite(eh_given[i]):
            true_eh[i] = eh_given[i]  # no true E_f: use the given E_hull
    return pred_eh, true_eh, base.n_excluded


def screen(candidates: Candidates, refs: ReferenceSet | None = None, config: ScreenConfig | None = None, *,
           costs: Costs | None = None, progress: bool = False) -> ScreenResult:
    """Screen candidates: predicted E_hull, decision, metrics and the DFT-cost curve (eV/atom, s).

    refs: the reference set (needed in ehull mode). costs: DFT wall times by id; default the
    candidates' own wall-time arrays, else unit cost per relaxation.
    """
    config = config or ScreenConfig()
    c = candidates
    n, mode = len(c), config.mode
    if mode == "ehull" and refs is None:
        raise UserError("mode 'ehull' needs reference entries (--references)")
    if refs is not None and c.formulas is None:
        raise UserError("predictions: missing column(s) ['formula'] (needed to place candidates on the hull)")
    if config.uncertainty_weight and c.std is None:
        raise UserError(f"uncertainty weight {config.uncertainty_weight} needs predicted stds: a {STD_COL!r} "
                        "column in the predictions (an ensemble model's output)")
    if config.rank_by == "lower" and (c.lower is None or not np.any(np.isfinite(c.lower))):
        raise UserError(f"ranking by the interval's lower bound needs a {LOWER_COL!r} column in the predictions "
                        "(`esnet predict` of a calibrated ensemble writes it), or rank by the mean")
    nan = np.full(n, np.nan)
    status, reason = np.full(n, "ok", dtype=object), np.full(n, "", dtype=object)
    pred = c.predicted.copy()
    ef_true = nan.copy() if c.formation_energy is None else c.formation_energy.copy()
    eh_given = nan.copy() if c.e_above_hull is None else c.e_above_hull.copy()
    std = c.std.copy() if config.uncertainty_weight else np.zeros(n)
    problems = c.problems if c.problems is not None else np.full(n, "", dtype=object)
    for i in range(n):
        if problems[i]:
            pred[i] = ef_true[i] = eh_given[i] = math.nan
            std[i] = 0.0
            status[i], reason[i] = "nan_prediction", problems[i]
        elif not math.isfinite(pred[i]):
            status[i], reason[i] = "nan_prediction", "predicted formation energy is NaN or empty"
        elif not math.isfinite(std[i]):
            status[i], reason[i] = "nan_prediction", "predicted std is NaN or empty"
        elif config.rank_by == "lower" and not math.isfinite(c.lower[i]):
            status[i], reason[i] = "nan_prediction", "the interval's lower bound is NaN or empty"
    comps: list = [None] * n
    if refs is not None:
        for i, formula in enumerate(c.formulas):
            try:
                comps[i] = parse_formula(formula)
            except Exception as exc:  # pymatgen raises several types on bad formulas
                _hull_problem(status, reason, i, mode, "bad_formula", f"formula {str(formula)!r}: {exc}")
    pred_eh = true_eh = None
    n_excluded = 0
    if refs is not None:
        pred_eh, true_eh, n_excluded = _place_on_hull(c, comps, status, reason, pred, ef_true, eh_given, refs,
                                                      config, progress)

    # scores, truths, decisions
    pred_value, truth = (pred_eh, true_eh) if mode == "ehull" else (pred, ef_true)
    screened = status == "ok"
    pred_value = np.where(screened, pred_value, np.nan)
    score = pred_value - config.uncertainty_weight * std
    if config.rank_by == "lower":  # E_hull moves one for one with the candidate's E_f on the reference hull
        score = pred_value - (pred - c.lower)
    predicted_stable = config.stable(score)  # a missing prediction is predicted unstable
    decision = np.where(screened, np.where(config.stable(score, config.threshold + config.margin),
                                           "relax", "skip"), "unscreened").astype(object)
    has_truth = np.isfinite(truth)
    true_stable = config.stable(truth)
    no_truth = screened & ~has_truth
    status[no_truth] = "no_truth"
    reason[no_truth] = f"no true {'E_hull' if mode == 'ehull' else EF_COL}: decided but left out of the metrics"
    rank = np.zeros(n, int)
    ranked = np.flatnonzero(np.isfinite(score))
    rank[ranked[np.argsort(score[ranked], kind="stable")]] = np.arange(1, len(ranked) + 1)

    table: dict[str, np.ndarray] = {
        "id": c.ids, "formula": c.formulas if c.formulas is not None else np.full(n, "", dtype=object),
        "status": status, "reason": reason, PRED_COL: pred, "score": score, "rank": rank, "decision": decision,
        "predicted_stable": predicted_stable, EF_COL: ef_true, EHULL_COL: eh_given, "true_stable": true_stable,
        "has_truth": has_truth, "is_wall_time_s": nan.copy(), "relax_wall_time_s": nan.copy()}
    columns = [col for col in CANDIDATE_COLUMNS if refs is not None or col not in (PRED_EHULL_COL, TRUE_EHULL_COL)]
    if refs is not None:
        table[PRED_EHULL_COL], table[TRUE_EHULL_COL] = pred_eh, true_eh
    flagged = None
    if c.domain is not None:
        flagged = np.array([bool(d) for d in c.domain], bool)
        table["needs_dft"], table[DOMAIN_COLUMN] = flagged, c.domain
    else:
        columns = [col for col in columns if col not in ("needs_dft", DOMAIN_COLUMN)]

    ev = has_truth  # in the metrics: every candidate with a truth, screened or not
    metrics: dict[str, Any] = {
        "mode": mode, "threshold_eV_per_atom": config.threshold, "margin_eV_per_atom": config.margin,
        "uncertainty_weight": config.uncertainty_weight, "hull_tolerance_eV_per_atom": config.tolerance,
        "stable_if": (f"predicted E_hull <= {config.threshold} (+{config.tolerance}) eV/atom" if mode == "ehull"
                      else f"predicted formation energy < {config.threshold} eV/atom"),
        "missing_prediction": MISSING_PREDICTION_RULE,
        "n_rows": n, "status_counts": dict(Counter(status.tolist())),
    }
    if refs is not None:
        metrics["references"] = {
            "sources": refs.sources, "n_entries": len(refs.entries),
            "n_excluded_as_candidates": n_excluded, "candidates_in_hull": config.candidates_in_hull,
            "formation_energy_zero": "elemental reference entries" if any("elemental:" in s for s in refs.sources)
            else "lowest elemental entry among the references (0 eV/atom for labels.csv)",
        }
        metrics["truth_e_above_hull"] = ("recomputed from the true formation energy on the same hull as "
                                         "the predictions; the given e_above_hull where that is missing")
    metrics.update(classification_metrics(true_stable[ev], predicted_stable[ev], truth[ev], pred_value[ev]))
    metrics["rank_by"] = config.rank_by
    if flagged is not None:
        metrics["needs_dft"] = _needs_dft(flagged, predicted_stable, true_stable, ev)
    metrics["n_missing_prediction"] = int(np.sum(ev & ~screened))
    if refs is not None and mode == "ehull":
        reg = regression_metrics(ef_true[ev], np.where(screened, pred, np.nan)[ev])
        if reg["n"]:
            metrics["mae_formation_energy_per_atom"] = reg["mae"]
    metrics["n_relax_decisions"] = int(np.sum(decision == "relax"))

    curve = None
    if ev.any():
        ids = c.ids[ev].tolist()
        if costs is None and c.is_wall_time_s is not None and c.relax_wall_time_s is not None:
            costs = costs_from_columns(ids, c.is_wall_time_s[ev], c.relax_wall_time_s[ev],
                                       "predictions CSV columns is_wall_time_s, relax_wall_time_s")
        if costs is not None:
            is_c, rx_c = costs.arrays(ids)
            table["is_wall_time_s"][ev], table["relax_wall_time_s"][ev] = is_c, rx_c
        else:
            is_c, rx_c = np.zeros(len(ids)), np.ones(len(ids))
        curve = cost_curve(score[ev], true_stable[ev], rx_c, is_c)
        metrics["cost"] = {
            "source": f"wall time (s) from {costs.source}" if costs is not None else UNIT_COST_SOURCE,
            "baseline": "relaxing every candidate (cost fraction 1)",
            "is_single_point_total_s": float(is_c.sum()) if costs is not None else 0.0,
            "relax_all_total_s": float(rx_c.sum()) if costs is not None else None,
            "at_model_threshold": curve_point(curve, int(np.sum(decision[ev] == "relax"))),
            "at_target_recall": curve_at_recall(curve, config.target_recall),
        }
        if metrics["cost"]["at_target_recall"] is None:
            metrics["cost"]["note"] = "no truly stable candidate among the evaluated ones: recall undefined"
    return ScreenResult(table, metrics, curve, tuple(columns))


def _needs_dft(flagged: np.ndarray, predicted_stable: np.ndarray, true_stable: np.ndarray,
               ev: np.ndarray) -> dict[str, Any]:
    """The 'needs DFT' block of metrics.json: counts of flagged candidates and precision / recall with the flag
    (a flagged candidate is not predicted stable: it goes to DFT) and without it (the model's calls as they are)."""
    keys = ("precision", "recall", "f1", "daf", "tp", "fp", "fn")
    with_flag = classification_metrics(true_stable[ev], (predicted_stable & ~flagged)[ev])
    without = classification_metrics(true_stable[ev], predicted_stable[ev])
    return {"rule": NEEDS_DFT_RULE, "n_flagged": int(flagged.sum()),
            "n_flagged_predicted_stable": int((flagged & predicted_stable).sum()),
            "n_predicted_stable": int(predicted_stable.sum()),
            "n_flagged_truly_stable": int((flagged & true_stable & ev).sum()),
            "with_flag": {k: with_flag[k] for k in keys}, "without_flag": {k: without[k] for k in keys}}


_CONFIG_FIELDS = {f.name for f in fields(ScreenConfig)}


def screen_rows(rows: Sequence[Mapping[str, str]], refs: ReferenceSet | None = None,
                config: ScreenConfig | None = None, *, costs: str | Path | Costs | None = None,
                progress: bool = False, **options: Any) -> ScreenResult:
    """`screen` on predictions-CSV rows (see `read_csv_rows`); `costs` may be a labels.csv path.

    `options` are `ScreenConfig` fields (mode=..., threshold=... in eV/atom) overriding `config`.
    """
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"screen_rows() got unknown option(s) {unknown}; ScreenConfig fields are "
                        f"{sorted(_CONFIG_FIELDS)}")
    config = replace(config or ScreenConfig(), **options)
    if isinstance(costs, (str, Path)):
        costs = costs_from_labels(costs)
    cands = candidates_from_rows(rows, with_std=bool(config.uncertainty_weight))
    return screen(cands, refs, config, costs=costs, progress=progress)
