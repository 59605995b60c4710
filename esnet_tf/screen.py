"""Stability screening and DFT-cost analysis: `esnet screen` (DESIGN.md section 6).

ESNet predicts the relaxed formation energy of an *unrelaxed* candidate from its IS-DOS;
this module turns those predictions into a decision (relax it with full DFT or skip it)
and measures what that decision costs and finds.

1. Each candidate's predicted energy above the convex hull (eV/atom) comes from pymatgen's
   `PhaseDiagram` built from *reference* entries (Materials Project `ComputedEntry` /
   `ComputedStructureEntry` JSON, or a dataset's `labels.csv`). Candidates are placed
   against the reference hull only, not against each other's predictions, unless
   `candidates_in_hull=True`. Reference entries whose id is also a candidate id are left
   out of the hull by default (otherwise the truth leaks into the hull).
2. Classification at a threshold (`ehull`: stable if E_hull <= t; `formation-energy`:
   stable if E_f < t) with the Matbench Discovery metrics: precision, recall, F1,
   accuracy, DAF (precision / prevalence), the confusion matrix and the MAE.
3. The cost curve: candidates ranked by predicted stability; sending the best k to DFT
   costs the IS single points of all candidates plus the relaxations of those k, against
   relaxing everything. Reported: cost reduction at a target recall and at the model's
   own threshold.

Formation energies are converted to total energies with elemental chemical potentials:
the `elemental_references` when given (e.g. the MP elemental reference entries, the
Matbench Discovery convention), otherwise the lowest-energy elemental entry of each element
among the references (pymatgen's convention); for a `labels.csv`, elements are at 0 eV/atom.

Bad rows are never dropped silently: each candidate carries a `status`
(`ok`, `no_truth`, `nan_prediction`, `bad_formula`, `unspanned`, `hull_error`) and a `reason`
in candidates.csv; metrics count only `ok` rows and metrics.json lists the counts.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from esnet_tf.errors import UserError

#: Numerical tolerance of the hull construction (eV/atom): E_hull <= t + HULL_TOL is stable.
HULL_TOL = 1e-6
MODES = ("ehull", "formation-energy")
from esnet_tf.isdos import PREDICTION_COLUMN as PRED_COL, PREDICTION_STD_COLUMN as STD_COL  # noqa: E402
EF_COL = "formation_energy_per_atom"
EHULL_COL = "e_above_hull"
COST_COLS = ("is_wall_time_s", "relax_wall_time_s")
_ENTRY_CLASSES = ("ComputedEntry", "ComputedStructureEntry", "PDEntry")


# --------------------------------------------------------------------------- inputs
def _open_text(path: Path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path, newline="")


def read_csv_rows(path: str | Path, required: Sequence[str] = ("id",)) -> list[dict[str, str]]:
    """Rows of a CSV as dicts; checks the `required` columns and unique, non-empty ids."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        cols = reader.fieldnames or []
    missing = [c for c in required if c not in cols]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing} (has {cols})")
    if "id" in required:
        ids = [r["id"] for r in rows]
        if any(not i for i in ids):
            raise UserError(f"{path}: empty id on row {ids.index('') + 2}")
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            raise UserError(f"{path}: duplicate id(s) {dup[:5]}: ids must be unique")
    return rows


def _float(value: str | None) -> float:
    """CSV cell -> float; empty / missing -> NaN; garbage -> ValueError."""
    if value is None or value.strip() == "":
        return math.nan
    return float(value)


def parse_formula(formula: str):
    """A pymatgen Composition of real elements with atoms; ValueError otherwise."""
    from pymatgen.core import Composition, Element

    comp = Composition(formula)
    if comp.num_atoms <= 0:
        raise ValueError("no atoms")
    bad = [str(e) for e in comp.elements if not isinstance(e, Element)]
    if bad:
        raise ValueError(f"{', '.join(bad)} not chemical element(s)")
    return comp


def _entry_from_dict(d: dict, path: Path):
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    cls = d.get("@class", "ComputedEntry")
    classes = {"ComputedEntry": ComputedEntry, "ComputedStructureEntry": ComputedStructureEntry,
               "PDEntry": PDEntry}
    if cls not in classes or "energy" not in d or "composition" not in d:
        raise UserError(f"{path}: expected entry dicts of class {_ENTRY_CLASSES} with 'energy' "
                          f"and 'composition', got {cls!r}")
    return classes[cls].from_dict(d)


def load_entries(path: str | Path) -> list:
    """Entries from JSON (.json / .json.gz): a list of entry dicts or {symbol: entry dict}.

    Decoded with `json` and pymatgen's `from_dict` (never pickle). Energies in eV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with _open_text(path) as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(data, dict) and "entries" in data:
        data = data["entries"]
    if isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UserError(f"{path}: expected a list of pymatgen entry dicts")
    return [_entry_from_dict(d, path) for d in data]


def _entry_id(entry, fallback: str) -> str:
    return str(getattr(entry, "entry_id", None) or getattr(entry, "name", None) or fallback)


@dataclass
class ReferenceSet:
    """Entries spanning the reference hull plus the zero of formation energy.

    `entries` are pymatgen entries (energies in eV, total per formula unit as given);
    `ids` their ids; `mu` the elemental chemical potential of each element in eV/atom,
    which turns a formation energy per atom into a total energy per atom.
    """

    entries: list
    ids: list[str]
    mu: dict[str, float]
    sources: list[str] = field(default_factory=list)

    @property
    def elements(self) -> set[str]:
        """Elements that have a pure elemental entry in the hull."""
        return {e.composition.elements[0].symbol for e in self.entries if e.composition.is_element}


def references_from_labels(path: str | Path) -> ReferenceSet:
    """A dataset labels.csv (`id`, `formula`, `formation_energy_per_atom` eV/atom) as a hull.

    Each row becomes a PDEntry with energy = E_f x atoms; every element seen gets a 0 eV entry.
    Rows with an empty formation energy are skipped (they are not known references).
    """
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    path = Path(path)
    rows = read_csv_rows(path, ("id", "formula", EF_COL))
    entries, ids, elements = [], [], set()
    for i, row in enumerate(rows, start=2):
        try:
            comp = parse_formula(row["formula"])
            ef = _float(row[EF_COL])
        except Exception as exc:  # pymatgen raises several types on bad formulas
            raise UserError(f"{path}: row {i} (id {row['id']!r}): bad formula or energy ({exc})") from None
        if not math.isfinite(ef):
            continue
        entries.append(PDEntry(comp, ef * comp.num_atoms, name=row["id"]))
        ids.append(row["id"])
        elements.update(el.symbol for el in comp.elements)
    for el in sorted(elements):
        entries.append(PDEntry(Composition(el), 0.0, name=f"{el} (element, 0 eV/atom)"))
        ids.append(f"__element_{el}")
    return ReferenceSet(entries, ids, {el: 0.0 for el in elements}, [str(path)])


def load_references(paths: Sequence[str | Path],
                    elemental_references: str | Path | None = None) -> ReferenceSet:
    """Reference hull from JSON entry files and/or labels.csv files (see module docstring)."""
    if not paths:
        raise UserError("no reference entries given (--references FILE)")
    entries, ids, mu, sources = [], [], {}, []
    json_given = False
    for p in paths:
        p = Path(p)
        if p.name.endswith((".csv", ".csv.gz")):
            ref = references_from_labels(p)
            entries += ref.entries
            ids += ref.ids
            mu.update(ref.mu)
        else:
            json_given = True
            got = load_entries(p)
            entries += got
            ids += [_entry_id(e, f"{p.name}#{i}") for i, e in enumerate(got)]
        sources.append(str(p))
    if json_given and mu:
        raise UserError("mixing labels.csv (elements at 0 eV/atom) and computed-entry JSON "
                          "references is ambiguous: give one kind")
    if elemental_references is not None:
        mu = {}
        for e in load_entries(elemental_references):
            if not e.composition.is_element:
                raise UserError(f"{elemental_references}: {e.composition.reduced_formula} is not an element")
            el = e.composition.elements[0].symbol
            mu[el] = min(mu.get(el, math.inf), e.energy_per_atom)
        sources.append(f"elemental: {elemental_references}")
    elif json_given:
        for e in entries:
            if e.composition.is_element:
                el = e.composition.elements[0].symbol
                mu[el] = min(mu.get(el, math.inf), e.energy_per_atom)
    return ReferenceSet(entries, ids, mu, sources)


# --------------------------------------------------------------------------- hull
class ReferenceHull:
    """Energy above the reference hull for compositions, one PhaseDiagram per chemical system.

    `exclude_ids`: reference ids left out of the hull (the candidates themselves).
    `extra`: further (composition, energy per atom) points put into the hull, e.g. the
    candidates' predicted entries when they are judged against each other too.
    """

    def __init__(self, refs: ReferenceSet, exclude_ids: Iterable[str] = (),
                 extra: Sequence[tuple[Any, float]] = ()) -> None:
        from pymatgen.analysis.phase_diagram import PDEntry

        excl = set(exclude_ids)
        self.refs = refs
        self.entries = [e for e, i in zip(refs.entries, refs.ids) if i not in excl]
        self.n_excluded = len(refs.entries) - len(self.entries)
        self.entries += [PDEntry(c, e * c.num_atoms, name="candidate") for c, e in extra]
        self.elements = {e.composition.elements[0].symbol for e in self.entries if e.composition.is_element}
        self._pds: list = []  # PhaseDiagrams built so far, largest chemical systems first

    def phase_diagram(self, elements: frozenset[str]):
        """The PhaseDiagram of a chemical system containing `elements` (built once, reused)."""
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        for pd in self._pds:
            if elements <= {el.symbol for el in pd.elements}:
                return pd
        sub = [e for e in self.entries if {el.symbol for el in e.composition.elements} <= elements]
        pd = PhaseDiagram(sub)
        self._pds.append(pd)
        self._pds.sort(key=lambda p: -len(p.elements))
        return pd

    def prepare(self, chemsystems: Iterable[frozenset[str]]) -> None:
        """Build the diagrams of the largest systems first so the subsystems reuse them."""
        for cs in sorted(set(chemsystems), key=len, reverse=True):
            if cs <= self.elements:
                try:
                    self.phase_diagram(cs)
                except Exception:  # reported per candidate by e_above_hull
                    pass

    def missing(self, comp) -> list[str]:
        """Elements of `comp` with no elemental reference (hull entry or chemical potential)."""
        return sorted({el.symbol for el in comp.elements} - (self.elements & set(self.refs.mu)))

    def e_above_hull(self, comp, formation_energy_per_atom: float) -> float:
        """E_hull (eV/atom, negative below the hull) of a composition with the given E_f."""
        energy = formation_energy_per_atom + sum(
            comp.get_atomic_fraction(el) * self.refs.mu[el.symbol] for el in comp.elements)
        pd = self.phase_diagram(frozenset(el.symbol for el in comp.elements))
        return float(energy - pd.get_hull_energy_per_atom(comp))


# --------------------------------------------------------------------------- metrics
def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def classification_metrics(true_stable: np.ndarray, pred_stable: np.ndarray,
                           true_values: np.ndarray | None = None,
                           pred_values: np.ndarray | None = None) -> dict[str, Any]:
    """Matbench Discovery stability metrics from boolean labels (+ MAE/RMSE in eV/atom).

    precision = TP/(TP+FP), recall = TP/(TP+FN), prevalence = (TP+FN)/N,
    DAF = precision / prevalence, accuracy = (TP+TN)/N; undefined ratios are None.
    """
    t = np.asarray(true_stable, bool)
    p = np.asarray(pred_stable, bool)
    tp, fp = int(np.sum(t & p)), int(np.sum(~t & p))
    fn, tn = int(np.sum(t & ~p)), int(np.sum(~t & ~p))
    n = tp + fp + fn + tn

    def div(a: float, b: float) -> float:
        return a / b if b else math.nan

    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    prevalence = div(tp + fn, n)
    out: dict[str, Any] = {
        "n_candidates": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall,
        "f1": (div(2 * precision * recall, precision + recall) or 0.0)
        if math.isfinite(precision) and math.isfinite(recall) else math.nan,
        "accuracy": div(tp + tn, n), "prevalence": prevalence, "daf": div(precision, prevalence),
        "tpr": recall, "fpr": div(fp, fp + tn), "tnr": div(tn, tn + fp), "fnr": div(fn, fn + tp),
    }
    if true_values is not None and pred_values is not None and n:
        err = np.asarray(pred_values, float) - np.asarray(true_values, float)
        out["mae"] = float(np.mean(np.abs(err)))
        out["rmse"] = float(np.sqrt(np.mean(err ** 2)))
    return {k: _nan_to_none(v) for k, v in out.items()}


def cost_curve(score: np.ndarray, true_stable: np.ndarray, relax_cost: np.ndarray,
               is_cost: np.ndarray) -> dict[str, np.ndarray]:
    """Recall and DFT cost when the k best-ranked candidates (k = 0..N) are relaxed.

    Candidates are ranked by ascending `score` (more stable first, ties in input order).
    `relax_cost_fraction` = relaxations spent / relaxing everything (ends at 1);
    `cost_fraction` additionally counts the IS single points of all candidates.
    """
    order = np.argsort(np.asarray(score, float), kind="stable")
    t = np.asarray(true_stable, bool)[order]
    rc = np.asarray(relax_cost, float)[order]
    total_relax = rc.sum()
    is_total = float(np.sum(is_cost))
    n_pos = t.sum()
    k = np.arange(len(t) + 1)
    found = np.concatenate([[0], np.cumsum(t)])
    spent = np.concatenate([[0.0], np.cumsum(rc)])
    return {
        "order": order,
        "k": k,
        "fraction_sent": k / max(len(t), 1),
        "recall": found / n_pos if n_pos else np.full(len(k), np.nan),
        "relax_cost_fraction": spent / total_relax if total_relax else np.zeros(len(k)),
        "cost_fraction": (spent + is_total) / total_relax if total_relax else np.zeros(len(k)),
    }


def _curve_point(curve: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    frac = float(curve["cost_fraction"][k])
    return {k_: _nan_to_none(v) for k_, v in {
        "n_relaxed": int(k), "fraction_relaxed": float(curve["fraction_sent"][k]),
        "recall": float(curve["recall"][k]),
        "relax_cost_fraction": float(curve["relax_cost_fraction"][k]),
        "cost_fraction": frac, "cost_reduction": 1.0 - frac,
        "candidate_reduction": 1.0 - float(curve["fraction_sent"][k]),
    }.items()}


def cost_at_recall(curve: dict[str, np.ndarray], target: float) -> dict[str, Any] | None:
    """The cheapest point of the curve reaching `target` recall (None without stable truths)."""
    rec = curve["recall"]
    if not np.any(np.isfinite(rec)):
        return None
    k = int(np.argmax(rec >= target - 1e-12))
    return {"target_recall": target, **_curve_point(curve, k)}


# --------------------------------------------------------------------------- screening
@dataclass
class ScreenResult:
    """Per-candidate table (list of row dicts), metrics (JSON-ready) and the cost curve."""

    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    curve: dict[str, np.ndarray] | None


def _costs_by_id(rows: list[dict[str, str]], costs_path: str | Path | None,
                 wanted: Sequence[str]) -> tuple[dict[str, tuple[float, float]] | None, str]:
    """(IS s, relaxation s) per candidate id from --costs or the predictions' own columns."""
    if costs_path is not None:
        crow = {r["id"]: r for r in read_csv_rows(costs_path, ("id", *COST_COLS))}
        unknown = [i for i in wanted if i not in crow]
        if unknown:
            raise UserError(f"{costs_path}: no cost row for candidate id(s) {unknown[:5]}"
                              f"{' ...' if len(unknown) > 5 else ''} ({len(unknown)} of {len(wanted)})")
        src, table = str(costs_path), crow
    elif rows and all(c in rows[0] for c in COST_COLS):
        src, table = "predictions CSV columns is_wall_time_s, relax_wall_time_s", {r["id"]: r for r in rows}
    else:
        return None, "unit cost: 1 per relaxation, IS single points not counted (no wall times given)"
    out = {}
    for i in wanted:
        try:
            c = (_float(table[i]["is_wall_time_s"]), _float(table[i]["relax_wall_time_s"]))
        except ValueError as exc:
            raise UserError(f"{src}: id {i!r}: bad wall time ({exc})") from None
        if not all(math.isfinite(x) and x >= 0 for x in c):
            raise UserError(f"{src}: id {i!r}: wall times must be finite and >= 0 s, got {c}")
        out[i] = c
    return out, f"wall time (s) from {src}"


def screen(rows: list[dict[str, str]], refs: ReferenceSet | None = None, *, mode: str = "ehull",
           threshold: float = 0.0, margin: float = 0.0, uncertainty_weight: float = 0.0,
           candidates_in_hull: bool = False, keep_overlapping_references: bool = False,
           costs: str | Path | None = None, target_recall: float = 0.9,
           progress: bool = True) -> ScreenResult:
    """Screen candidates: predicted E_hull, decision, metrics and the DFT-cost curve.

    rows: predictions (`id`, `formula`, `predicted_formation_energy_per_atom`, optional
    truths `formation_energy_per_atom`, `e_above_hull`, optional `..._std`), eV/atom.
    mode: 'ehull' (stable if E_hull <= threshold) or 'formation-energy' (E_f < threshold).
    margin (eV/atom): relax candidates whose score <= threshold + margin.
    uncertainty_weight: score = prediction - weight x predicted std (optimistic ranking).
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use one of {MODES}")
    if mode == "ehull" and refs is None:
        raise UserError("mode 'ehull' needs reference entries (--references)")
    if not rows:
        raise UserError("no candidates in the predictions")
    need = ["id", PRED_COL] + (["formula"] if refs is not None else [])
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise UserError(f"predictions: missing column(s) {missing}")
    if uncertainty_weight and STD_COL not in rows[0]:
        raise UserError(f"--uncertainty-weight needs a {STD_COL!r} column in the predictions")

    out = _parse_rows(rows, refs is not None, mode, uncertainty_weight)
    n_excluded = _place_on_hull(out, refs, mode, candidates_in_hull, keep_overlapping_references,
                                progress) if refs is not None else 0

    # scores, truths, decisions
    pred_key, true_key = ((("predicted_e_above_hull", "true_e_above_hull")) if mode == "ehull"
                          else (PRED_COL, EF_COL))
    tol = HULL_TOL if mode == "ehull" else 0.0

    def is_stable(x: float, t: float) -> bool:
        return x <= t + tol if mode == "ehull" else x < t

    for r in out:
        r["score"] = r[pred_key] - uncertainty_weight * r["std"] if r["status"] == "ok" else math.nan
        r["predicted_stable"] = is_stable(r["score"], threshold) if r["status"] == "ok" else ""
        r["decision"] = ("relax" if is_stable(r["score"], threshold + margin) else "skip") \
            if r["status"] == "ok" else "unscreened"
        truth = r.get(true_key, math.nan)
        r["true_stable"] = is_stable(truth, threshold) if math.isfinite(truth) else ""
        if r["status"] == "ok" and not math.isfinite(truth):
            r.update(status="no_truth", reason=f"no true {true_key.replace('true_', '')}: "
                     "decided but left out of the metrics")

    ok = [r for r in out if r["status"] == "ok"]
    order = sorted((r for r in out if math.isfinite(r["score"])), key=lambda r: r["score"])
    for rank, r in enumerate(order, start=1):
        r["rank"] = rank
    metrics: dict[str, Any] = {
        "mode": mode, "threshold_eV_per_atom": threshold, "margin_eV_per_atom": margin,
        "uncertainty_weight": uncertainty_weight, "hull_tolerance_eV_per_atom": tol,
        "stable_if": (f"predicted E_hull <= {threshold} (+{tol}) eV/atom" if mode == "ehull"
                      else f"predicted formation energy < {threshold} eV/atom"),
        "n_rows": len(out), "status_counts": dict(Counter(r["status"] for r in out)),
    }
    if refs is not None:
        metrics["references"] = {
            "sources": refs.sources, "n_entries": len(refs.entries),
            "n_excluded_as_candidates": n_excluded, "candidates_in_hull": candidates_in_hull,
            "formation_energy_zero": "elemental reference entries" if any("elemental:" in s for s in refs.sources)
            else "lowest elemental entry among the references (0 eV/atom for labels.csv)",
        }
        metrics["truth_e_above_hull"] = ("recomputed from the true formation energy on the same hull as "
                                         "the predictions; the given e_above_hull where that is missing")
    truth = np.array([r[true_key] for r in ok], float)
    pred = np.array([r[pred_key] for r in ok], float)
    t_st = np.array([bool(r["true_stable"]) for r in ok])
    p_st = np.array([bool(r["predicted_stable"]) for r in ok])
    metrics.update(classification_metrics(t_st, p_st, truth, pred))
    if ok and refs is not None and mode == "ehull":
        ef_t = np.array([r[EF_COL] for r in ok], float)
        if np.all(np.isfinite(ef_t)):
            metrics["mae_formation_energy_per_atom"] = float(np.mean(np.abs(
                np.array([r[PRED_COL] for r in ok]) - ef_t)))
    metrics["n_relax_decisions"] = sum(r["decision"] == "relax" for r in out)

    curve = None
    if ok:
        cost_map, cost_src = _costs_by_id(rows, costs, [r["id"] for r in ok])
        if cost_map:  # real wall times go to candidates.csv; unit costs do not
            for r in ok:
                r["is_wall_time_s"], r["relax_wall_time_s"] = cost_map[r["id"]]
        is_c, rx_c = (np.array([cost_map[r["id"]] for r in ok]).T if cost_map
                      else (np.zeros(len(ok)), np.ones(len(ok))))
        curve = cost_curve(np.array([r["score"] for r in ok]), t_st, rx_c, is_c)
        k_model = int(sum(r["decision"] == "relax" for r in ok))
        metrics["cost"] = {
            "source": cost_src,
            "baseline": "relaxing every candidate (cost fraction 1)",
            "is_single_point_total_s": float(is_c.sum()) if cost_map else 0.0,
            "relax_all_total_s": float(rx_c.sum()) if cost_map else None,
            "at_model_threshold": _curve_point(curve, k_model),
            "at_target_recall": cost_at_recall(curve, target_recall),
        }
        if metrics["cost"]["at_target_recall"] is None:
            metrics["cost"]["note"] = "no truly stable candidate among the evaluated ones: recall undefined"
    return ScreenResult(out, metrics, curve)


def _parse_rows(rows: list[dict[str, str]], need_formula: bool, mode: str,
                uncertainty_weight: float) -> list[dict[str, Any]]:
    """CSV rows -> candidate dicts with floats (eV/atom), a Composition and a status."""
    out: list[dict[str, Any]] = []
    for r in rows:
        row: dict[str, Any] = {"id": r["id"], "formula": r.get("formula", ""), "status": "ok", "reason": ""}
        try:
            row[PRED_COL] = _float(r.get(PRED_COL))
            row[EF_COL] = _float(r.get(EF_COL))
            row[EHULL_COL] = _float(r.get(EHULL_COL))
            row["std"] = _float(r.get(STD_COL)) if uncertainty_weight else 0.0
        except ValueError as exc:
            row.update({PRED_COL: math.nan, EF_COL: math.nan, EHULL_COL: math.nan, "std": 0.0,
                        "status": "nan_prediction", "reason": f"not a number: {exc}"})
        if row["status"] == "ok" and not math.isfinite(row[PRED_COL]):
            row.update(status="nan_prediction", reason="predicted formation energy is NaN or empty")
        if row["status"] == "ok" and not math.isfinite(row["std"]):
            row.update(status="nan_prediction", reason="predicted std is NaN or empty")
        row["comp"] = None
        if need_formula:
            try:
                row["comp"] = parse_formula(row["formula"])
            except Exception as exc:
                _hull_problem(row, mode, "bad_formula", f"formula {row['formula']!r}: {exc}")
                row["comp"] = None
        out.append(row)
    return out


def _place_on_hull(out: list[dict[str, Any]], refs: ReferenceSet, mode: str, candidates_in_hull: bool,
                   keep_overlapping_references: bool, progress: bool) -> int:
    """Fill predicted / true E_hull (eV/atom) of each candidate; returns #references excluded."""
    from tqdm.auto import tqdm

    exclude = () if keep_overlapping_references else {r["id"] for r in out}
    ok_comp = [r for r in out if r["comp"] is not None]
    pred_extra = [(r["comp"], r[PRED_COL]) for r in ok_comp if r["status"] == "ok"] if candidates_in_hull else []
    true_extra = [(r["comp"], r[EF_COL]) for r in ok_comp if math.isfinite(r[EF_COL])] if candidates_in_hull else []
    base = ReferenceHull(refs, exclude)
    # candidates_in_hull: the predicted (for the truth: the true) candidate entries join the hull
    hulls = {"pred": _with_extra(refs, exclude, pred_extra) if candidates_in_hull else base,
             "true": _with_extra(refs, exclude, true_extra) if candidates_in_hull else base}
    systems = [frozenset(el.symbol for el in r["comp"].elements) for r in ok_comp]
    for h in {id(h): h for h in hulls.values()}.values():
        h.prepare(systems)
    for r in tqdm(out, desc="E_hull", unit="candidate", disable=not progress or None):
        r["predicted_e_above_hull"] = r["true_e_above_hull"] = math.nan
        if r["comp"] is None:
            continue
        miss = hulls["pred"].missing(r["comp"])
        if miss:
            _hull_problem(r, mode, "unspanned", f"references have no elemental entry for "
                          f"{'-'.join(miss)} (chemical system {r['comp'].chemical_system})")
            continue
        try:
            if r["status"] == "ok":
                r["predicted_e_above_hull"] = hulls["pred"].e_above_hull(r["comp"], r[PRED_COL])
            if math.isfinite(r[EF_COL]):
                r["true_e_above_hull"] = hulls["true"].e_above_hull(r["comp"], r[EF_COL])
        except Exception as exc:
            _hull_problem(r, mode, "hull_error", f"PhaseDiagram failed: {exc}")
        if not math.isfinite(r["true_e_above_hull"]) and math.isfinite(r[EHULL_COL]):
            r["true_e_above_hull"] = r[EHULL_COL]  # no true E_f: use the given E_hull
    return base.n_excluded


def _hull_problem(row: dict[str, Any], mode: str, status: str, reason: str) -> None:
    """E_hull impossible: fatal for the row in ehull mode, a note in formation-energy mode."""
    if row["status"] != "ok":
        return
    if mode == "ehull":
        row.update(status=status, reason=reason)
    else:
        row["reason"] = f"no E_hull ({status}): {reason}"


def _with_extra(refs: ReferenceSet, exclude, extra) -> ReferenceHull:
    """A hull that also holds (composition, formation energy per atom) points."""
    pts = []
    for comp, ef in extra:
        if all(el.symbol in refs.mu for el in comp.elements):
            e = ef + sum(comp.get_atomic_fraction(el) * refs.mu[el.symbol] for el in comp.elements)
            pts.append((comp, e))
    return ReferenceHull(refs, exclude, pts)


# --------------------------------------------------------------------------- outputs
CANDIDATE_COLUMNS = ("id", "formula", "status", "reason", PRED_COL, "predicted_e_above_hull", "score",
                     "rank", "decision", "predicted_stable", EF_COL, EHULL_COL, "true_e_above_hull",
                     "true_stable", "is_wall_time_s", "relax_wall_time_s")


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6f}"
    return v


def write_outputs(result: ScreenResult, out_dir: str | Path) -> list[Path]:
    """candidates.csv, metrics.json, recall_vs_cost.png, predicted_vs_true.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "candidates.csv", out_dir / "metrics.json"]
    cols = [c for c in CANDIDATE_COLUMNS if c != "predicted_e_above_hull" or "predicted_e_above_hull" in result.rows[0]]
    cols = [c for c in cols if c != "true_e_above_hull" or "true_e_above_hull" in result.rows[0]]
    with open(written[0], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in sorted(result.rows, key=lambda r: (r.get("rank", math.inf), r["id"])):
            w.writerow({c: _cell(r.get(c, "")) for c in cols})
    written[1].write_text(json.dumps(result.metrics, indent=2) + "\n")
    written += _plots(result, out_dir)
    return written


def _plots(result: ScreenResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    m = result.metrics
    if result.curve is not None:
        c = result.curve
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        ax.plot(c["cost_fraction"], c["recall"], label="IS single points + chosen relaxations")
        if m["cost"]["is_single_point_total_s"]:
            ax.plot(c["relax_cost_fraction"], c["recall"], "--", label="relaxations only")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="random order (relaxations only)")
        ax.axvline(1.0, color="k", lw=0.6)
        pt = m["cost"]["at_model_threshold"]
        if pt["recall"] is not None:
            ax.plot(pt["cost_fraction"], pt["recall"], "o", label=f"model threshold ({pt['cost_reduction']:.0%} saved)")
        tr = m["cost"]["at_target_recall"]
        if tr is not None:
            ax.plot(tr["cost_fraction"], tr["recall"], "s",
                    label=f"recall {tr['target_recall']:.0%} ({tr['cost_reduction']:.0%} saved)")
        ax.set_xlabel("DFT cost / cost of relaxing every candidate")
        ax.set_ylabel("recall of truly stable candidates")
        ax.set_title(f"{m['n_candidates']} candidates, cost: {m['cost']['source'].split(' from ')[0][:40]}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        paths.append(out_dir / "recall_vs_cost.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    ok = [r for r in result.rows if r["status"] == "ok"]
    key = ("predicted_e_above_hull", "true_e_above_hull", "E_hull") if m["mode"] == "ehull" \
        else (PRED_COL, EF_COL, "formation energy")
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    if ok:
        x = np.array([r[key[1]] for r in ok])
        y = np.array([r[key[0]] for r in ok])
        ax.scatter(x, y, s=8, c=[("tab:green" if r["true_stable"] else "tab:red") for r in ok], alpha=0.7)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
        ax.axhline(m["threshold_eV_per_atom"], color="grey", ls="--", lw=0.6)
        ax.axvline(m["threshold_eV_per_atom"], color="grey", ls="--", lw=0.6)
    ax.set_xlabel(f"true {key[2]} (eV/atom; green: truly stable)")
    ax.set_ylabel(f"predicted {key[2]} (eV/atom)")
    mae = m.get("mae")
    ax.set_title(f"MAE {mae:.3f} eV/atom, F1 {m['f1'] or 0:.2f}" if mae is not None else "no truths", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "predicted_vs_true.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def merge_truths(rows: list[dict[str, str]], truths_path: str | Path) -> list[dict[str, str]]:
    """Copy `formation_energy_per_atom` / `e_above_hull` by id from a labels-like CSV.

    Ids missing from the truths file get empty truths (reported as status `no_truth`).
    """
    table = {r["id"]: r for r in read_csv_rows(truths_path, ("id",))}
    merged = []
    for r in rows:
        r = dict(r)
        t = table.get(r["id"], {})
        for c in (EF_COL, EHULL_COL):
            r[c] = t.get(c, "")
        if not r.get("formula"):
            r["formula"] = t.get("formula", "")
        merged.append(r)
    return merged


# --------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of `esnet screen` (energies in eV/atom, wall times in s)."""
    parser.add_argument("--predictions", required=True, metavar="CSV",
                        help="predictions: id, formula, predicted_formation_energy_per_atom (eV/atom); "
                        "optional truths formation_energy_per_atom, e_above_hull (eV/atom) and "
                        "is_wall_time_s, relax_wall_time_s (s)")
    parser.add_argument("--references", action="append", default=[], metavar="FILE",
                        help="reference hull: pymatgen ComputedEntry/ComputedStructureEntry JSON(.gz) "
                        "(list of entry dicts) or a dataset labels.csv (formula, formation_energy_per_atom "
                        "in eV/atom; elements at 0); repeatable; needed in ehull mode")
    parser.add_argument("--elemental-references", metavar="JSON",
                        help="elemental entries (JSON(.gz)) defining the zero of formation energy, e.g. "
                        "MP's elemental reference entries; default: lowest elemental entry among --references")
    parser.add_argument("--truths", metavar="CSV",
                        help="take formation_energy_per_atom / e_above_hull (eV/atom) by id from this CSV "
                        "(e.g. a dataset labels.csv)")
    parser.add_argument("--costs", metavar="CSV",
                        help="DFT wall times by id: is_wall_time_s, relax_wall_time_s (s); default: the "
                        "predictions' own columns, else unit cost per relaxation")
    parser.add_argument("--mode", choices=MODES, default="ehull",
                        help="ehull: stable if predicted E_hull <= threshold; formation-energy: stable if "
                        "predicted formation energy < threshold")
    parser.add_argument("--threshold", type=float, default=0.0, metavar="EV",
                        help="stability threshold (eV/atom)")
    parser.add_argument("--margin", type=float, default=0.0, metavar="EV",
                        help="relax candidates whose score <= threshold + margin (eV/atom)")
    parser.add_argument("--uncertainty-weight", type=float, default=0.0, metavar="K",
                        help=f"score = prediction - K x {STD_COL} (eV/atom column in the predictions)")
    parser.add_argument("--candidates-in-hull", action="store_true",
                        help="also put the candidates' predicted entries into the hull (judge them "
                        "against each other too)")
    parser.add_argument("--keep-overlapping-references", action="store_true",
                        help="keep reference entries whose id is a candidate id (leaks the truth into the "
                        "hull; for checks only)")
    parser.add_argument("--target-recall", type=float, default=0.9, metavar="R",
                        help="report the cost reduction at this recall (fraction 0-1)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on any candidate that cannot be screened instead of reporting it")
    parser.add_argument("--out", default="screen", metavar="DIR",
                        help="output directory: candidates.csv, metrics.json, PNGs")


def run(args: argparse.Namespace) -> int:
    """`esnet screen`: write candidates.csv, metrics.json and plots to --out."""
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    rows = read_csv_rows(args.predictions, ("id", PRED_COL))
    if args.truths:
        rows = merge_truths(rows, args.truths)
    refs = load_references(args.references, args.elemental_references) if args.references else None
    if refs is None and args.elemental_references:
        raise UserError("--elemental-references needs --references")
    res = screen(rows, refs, mode=args.mode, threshold=args.threshold, margin=args.margin,
                 uncertainty_weight=args.uncertainty_weight, candidates_in_hull=args.candidates_in_hull,
                 keep_overlapping_references=args.keep_overlapping_references, costs=args.costs,
                 target_recall=args.target_recall)
    bad = [r for r in res.rows if r["status"] != "ok"]
    if bad and args.strict:
        r = bad[0]
        raise UserError(f"{args.predictions}: {len(bad)} candidate(s) not screened, e.g. {r['id']!r}: "
                          f"{r['status']} ({r['reason']})")
    files = write_outputs(res, args.out)
    m = res.metrics
    if bad:
        print(f"warning: {len(bad)} of {len(res.rows)} candidates not in the metrics "
              f"{ {k: v for k, v in m['status_counts'].items() if k != 'ok'} }: see status/reason in "
              f"{files[0]}", file=sys.stderr)

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"{m['n_candidates']} candidates ({m['mode']}): precision {f(m['precision'])}, recall "
          f"{f(m['recall'])}, F1 {f(m['f1'])}, accuracy {f(m['accuracy'])}, DAF {f(m['daf'])}, "
          f"MAE {f(m.get('mae'))} eV/atom")
    if "cost" in m:
        pt, tr = m["cost"]["at_model_threshold"], m["cost"]["at_target_recall"]
        print(f"cost ({m['cost']['source']}): at the threshold {pt['n_relaxed']} relaxed, recall "
              f"{f(pt['recall'])}, cost reduction {pt['cost_reduction']:.1%}")
        if tr is not None:
            print(f"at recall >= {tr['target_recall']:.0%}: {tr['n_relaxed']} relaxed, cost reduction "
                  f"{tr['cost_reduction']:.1%}")
    print("wrote " + ", ".join(str(p) for p in files))
    return 0
