"""The candidate pool of a campaign: compositions, DFT costs (s), predictions (eV/atom), truths.

A campaign works on a `Pool`: one entry per candidate (a compound; elements are references),
with its IS single-point and relaxation wall times in s, one or more named prediction sources
(mean and optional std of the relaxed formation energy, eV/atom) and, in a replay, the known
relaxed formation energy (eV/atom) that a "relaxation" reveals.

    pool = pool_from_labels(["datasets/is_dos/demo/labels.csv"], predictions={"esnet": "oof.csv"})
    pool.n, pool.references.ids[:3], pool.sources["esnet"].mean[:3]

`pool_from_labels` reads labels through `esnet_tf.labels.read_labels`; its elemental rows become
the reference set (they set the zero of formation energy: elements at 0 eV/atom, elemental
polymorphs at their own formation energy) and every compound row becomes a candidate.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.isdos import DOMAIN_COLUMN, PREDICTION_COLUMN, PREDICTION_STD_COLUMN
from esnet_tf.screening.cost import COST_COLUMNS
from esnet_tf.screening.references import ReferenceSet, formation_energy_references, parse_formula


#: the lower bound of the calibrated 90 % interval in a predictions CSV (eV/atom; `esnet predict` of an ensemble)
LOWER_COLUMN = f"{PREDICTION_COLUMN}_lower"


@dataclass(frozen=True)
class Predictions:
    """One prediction source over the pool, in pool order: mean and std (NaN = none) in eV/atom.

    cost_s: what making these predictions costs per candidate (s; e.g. a potential's CPU seconds),
    None when the source is free or its cost is the IS single points (`strategies.PAYS_IS`);
    extra_cost_s: a one-off cost of the source (s; e.g. the potential's elemental references).
    A strategy ranking by the source pays both in round 0.
    lower: the lower bound of the calibrated 90 % interval (eV/atom; NaN = none), for `lower_bound`;
    domain: per candidate why its prediction lies outside the model's domain ('' = inside): such a
    candidate needs DFT before it may count as stable; audit: what `read_predictions` found in the
    file (counts of missing, NaN and unknown ids), reported with the campaign.
    """

    mean: np.ndarray
    std: np.ndarray | None = None
    source: str = ""
    cost_s: np.ndarray | None = None
    extra_cost_s: float = 0.0
    lower: np.ndarray | None = None
    domain: np.ndarray | None = None
    audit: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_lower(self) -> bool:
        return self.lower is not None and bool(np.any(np.isfinite(self.lower)))

    @property
    def flagged(self) -> np.ndarray | None:
        """True where the prediction is flagged outside the model's domain (needs DFT); None without a domain column."""
        return None if self.domain is None else np.array([bool(str(d).strip()) for d in self.domain], bool)

    def replace_mean(self, mean: np.ndarray, source: str) -> "Predictions":
        """The same source with its mean (and the interval's lower bound with it) moved to `mean` (eV/atom)."""
        lower = None if self.lower is None else self.lower + (np.asarray(mean, float) - self.mean)
        return Predictions(np.asarray(mean, float), self.std, source, self.cost_s, self.extra_cost_s, lower,
                           self.domain, self.audit)

    @property
    def screening_cost_s(self) -> float:
        """The source's total screening cost (s): per-candidate costs plus the one-off cost."""
        return (0.0 if self.cost_s is None else float(np.nansum(self.cost_s))) + float(self.extra_cost_s)

    @property
    def has_std(self) -> bool:
        return self.std is not None and bool(np.any(np.isfinite(self.std)))


@dataclass
class Pool:
    """Candidates of a campaign, sorted by id (the order ties are broken in).

    ids / formulas: one per candidate; is_wall_time_s / relax_wall_time_s: DFT wall times (s), NaN
    when not yet measured (live); truth: the relaxed formation energy (eV/atom) a replay reveals
    (NaN in a live pool); sources: named `Predictions` ("esnet", "composition", ...);
    references: the reference set (elements, known compounds) the hull starts from; cost_group:
    the kind of relaxation each candidate gets ("eos", "optimizer"; "" when unknown), which the
    `stable_per_cost` strategy uses to learn relaxation-to-IS cost ratios per kind.
    """

    ids: np.ndarray
    formulas: np.ndarray
    is_wall_time_s: np.ndarray
    relax_wall_time_s: np.ndarray
    references: ReferenceSet
    truth: np.ndarray | None = None
    sources: dict[str, Predictions] = field(default_factory=dict)
    reference_cost_s: float = 0.0
    origin: str = ""
    cost_group: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, str)
        n = len(self.ids)
        self.cost_group = np.asarray([""] * n if self.cost_group is None else self.cost_group, str)
        if n == 0:
            raise UserError(f"{self.origin or 'pool'}: no candidates (compounds) in the pool")
        if len(set(self.ids.tolist())) != n:
            raise UserError(f"{self.origin or 'pool'}: duplicate candidate ids")
        self.formulas = np.asarray(self.formulas, str)
        self.is_wall_time_s = np.asarray(self.is_wall_time_s, float)
        self.relax_wall_time_s = np.asarray(self.relax_wall_time_s, float)
        if self.truth is not None:
            self.truth = np.asarray(self.truth, float)
        for name, arr in (("formulas", self.formulas), ("is_wall_time_s", self.is_wall_time_s),
                          ("relax_wall_time_s", self.relax_wall_time_s), ("cost_group", self.cost_group)):
            if len(arr) != n:
                raise UserError(f"pool: {name} has {len(arr)} values for {n} candidates")
        self.compositions = []
        for i, f in zip(self.ids, self.formulas):
            try:
                self.compositions.append(parse_formula(f))
            except Exception as exc:  # pymatgen raises several types
                raise UserError(f"{self.origin or 'pool'}: candidate {i!r}: bad formula {f!r} ({exc})") from None
        self.elements = [frozenset(el.symbol for el in c.elements) for c in self.compositions]
        missing = sorted({el for s in self.elements for el in s} - set(self.references.mu))
        if missing:
            raise UserError(f"{self.origin or 'pool'}: no elemental reference for {', '.join(missing)}: "
                            "put the elements' structures in the pool or give --references with them")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def chemsys(self) -> list[str]:
        return ["-".join(sorted(s)) for s in self.elements]

    @property
    def is_replay(self) -> bool:
        return self.truth is not None and bool(np.all(np.isfinite(self.truth)))

    def relaxation_equivalent_s(self) -> float:
        """The mean relaxation wall time (s) over the candidates that have one: the unit of 'relaxations'."""
        v = self.relax_wall_time_s[np.isfinite(self.relax_wall_time_s)]
        return float(v.mean()) if len(v) else math.nan

    def fingerprint(self, sources: Sequence[str] | None = None) -> str:
        """A hash of what the campaign's result depends on (ids, formulas, costs, truths, predictions, references).

        `sources`: the prediction sources hashed (default: all); a campaign written before a source was
        added to the pool is checked over the sources it had (`engine.Campaign` resumes it)."""
        h = hashlib.sha256()
        for arr in (self.ids, self.formulas):
            h.update("\x1f".join(arr.tolist()).encode())
        for arr in (self.is_wall_time_s, self.relax_wall_time_s, self.truth):
            if arr is not None:
                h.update(np.round(np.nan_to_num(arr, nan=-1e30), 6).tobytes())
        for name in sorted(self.sources if sources is None else sources):
            p = self.sources[name]
            h.update(name.encode())
            h.update(np.round(np.nan_to_num(p.mean, nan=-1e30), 6).tobytes())
            if p.std is not None:
                h.update(np.round(np.nan_to_num(p.std, nan=-1e30), 6).tobytes())
            if p.cost_s is not None:  # sources without a cost keep the earlier fingerprint
                h.update(np.round(np.nan_to_num(p.cost_s, nan=-1e30), 6).tobytes())
                h.update(repr(round(float(p.extra_cost_s), 6)).encode())
            if p.lower is not None:  # likewise sources without an interval
                h.update(b"lower")
                h.update(np.round(np.nan_to_num(p.lower, nan=-1e30), 6).tobytes())
        h.update(json.dumps(sorted(self.references.ids)).encode())
        if any(self.cost_group.tolist()):  # pools without relaxation kinds keep their earlier fingerprint
            h.update("\x1f".join(map(str, self.cost_group.tolist())).encode())
        return h.hexdigest()[:16]

    def subset(self, keep: np.ndarray) -> "Pool":
        """The pool restricted to the candidates where `keep` (bool or indices) holds."""
        idx = np.arange(self.n)[keep]
        return Pool(self.ids[idx], self.formulas[idx], self.is_wall_time_s[idx], self.relax_wall_time_s[idx],
                    self.references, None if self.truth is None else self.truth[idx],
                    {k: Predictions(p.mean[idx], None if p.std is None else p.std[idx], p.source,
                                    None if p.cost_s is None else p.cost_s[idx], p.extra_cost_s,
                                    None if p.lower is None else p.lower[idx],
                                    None if p.domain is None else p.domain[idx], p.audit)
                     for k, p in self.sources.items()}, self.reference_cost_s, self.origin, self.cost_group[idx])


def _is_element(formula: str) -> bool:
    try:
        return len(parse_formula(formula).elements) == 1
    except Exception:
        return False


def elemental_references(rows: Sequence[tuple[str, str, float]], source: str,
                         elements: Sequence[str] = ()) -> ReferenceSet:
    """Reference set of elemental (id, formula, formation energy eV/atom) rows: mu = 0 eV/atom per element.

    Every element of the rows and of `elements` gets a 0 eV/atom entry: formation energies are
    relative to the elemental references by definition (gas-phase elements such as O, F, Cl have no
    row in the demo data, their reference is implied); elemental polymorphs keep their own formation
    energy (>= 0). Energies of PDEntry objects are per cell (eV/atom x atoms).
    """
    known = []
    for id_, formula, ef in rows:
        if not math.isfinite(ef):
            raise UserError(f"{source}: elemental reference {id_!r} has no formation energy")
        known.append((id_, parse_formula(formula), ef))
    return formation_energy_references(known, source, elements)


def read_predictions(path: str | Path, ids: Sequence[str], *, column: str = PREDICTION_COLUMN,
                     std_column: str = PREDICTION_STD_COLUMN, name: str = "") -> Predictions:
    """Mean (and std, the interval's lower bound and the domain flag where those columns exist) in
    eV/atom by id from a predictions CSV, in `ids` order.

    Nothing is used silently: a cell that is not a number, a negative std and a lower bound above the
    mean are refused (file:line); ids of the pool missing from the CSV and empty / NaN predictions get
    NaN (ranked last, the screening convention's 'predicted unstable') and are counted, like the CSV's
    ids that are not in the pool, in `Predictions.audit` (`prediction_warnings` words them).
    """
    from esnet_tf.screening.io import read_csv_rows

    rows = read_csv_rows(path, required=("id", column))
    cols = set(rows[0]) if rows else set()
    line_of = {r["id"]: line for line, r in enumerate(rows, start=2)}
    by_id = {r["id"]: r for r in rows}

    def num(r: Mapping[str, str] | None, col: str) -> float:
        text = None if r is None else (r.get(col) or "").strip()
        if not text or text.lower() in ("nan", "none", "null"):
            return math.nan
        try:
            v = float(text)
        except ValueError:
            raise UserError(f"{path}:{line_of[r['id']]}: {col} {text!r} is not a number (eV/atom): fix the cell, "
                            "or leave it empty for 'no prediction'") from None
        if not math.isfinite(v):
            raise UserError(f"{path}:{line_of[r['id']]}: {col} is {text!r}: give a finite number (eV/atom) or leave "
                            "it empty for 'no prediction'")
        return v

    rows_in = [by_id.get(i) for i in ids]
    mean = np.array([num(r, column) for r in rows_in], float)
    std = np.array([num(r, std_column) for r in rows_in], float) if std_column in cols else None
    lower = np.array([num(r, LOWER_COLUMN) for r in rows_in], float) if LOWER_COLUMN in cols else None
    domain = (np.array([(r or {}).get(DOMAIN_COLUMN) or "" for r in rows_in], dtype=object)
              if DOMAIN_COLUMN in cols else None)
    for arr, bad, what in ((std, lambda j: std[j] < 0, f"{std_column} is negative: a standard deviation is >= 0"),
                           (lower, lambda j: lower[j] > mean[j] + 1e-9,
                            f"{LOWER_COLUMN} lies above {column}: the interval's lower bound is <= the mean")):
        if arr is None:
            continue
        with np.errstate(invalid="ignore"):
            wrong = [j for j in range(len(ids)) if np.isfinite(arr[j]) and bad(j)]
        if wrong:
            j = wrong[0]
            raise UserError(f"{path}:{line_of[ids[j]]}: id {ids[j]!r}: {what} ({len(wrong)} row(s) like it): remake "
                            "the file with `esnet predict`")
    if not np.any(np.isfinite(mean)):
        raise UserError(f"{path}: no prediction for any candidate of the pool (column {column!r}, ids such as "
                        f"{list(ids)[:3]}): give the predictions of these candidates")
    wanted = set(map(str, ids))
    missing = [i for i in ids if i not in by_id]
    nan_pred = [i for i, r, m in zip(ids, rows_in, mean) if r is not None and not math.isfinite(m)]
    unknown = [r["id"] for r in rows if r["id"] not in wanted]
    audit: dict[str, Any] = {"file": str(path), "n_candidates": len(ids), "n_missing_id": len(missing),
                             "missing_ids": missing[:5], "n_nan_prediction": len(nan_pred),
                             "nan_prediction_ids": nan_pred[:5], "n_unknown_id": len(unknown),
                             "unknown_ids": unknown[:5], "has_std": std is not None,
                             "has_lower": lower is not None, "has_domain": domain is not None}
    if std is not None:
        audit["n_nan_std"] = int(np.sum(np.isfinite(mean) & ~np.isfinite(std)))
    if domain is not None:
        audit["n_flagged"] = int(sum(bool(str(d).strip()) for d in domain))
    return Predictions(mean, std, name or str(path), lower=lower, domain=domain, audit=audit)


def prediction_warnings(p: Predictions) -> list[str]:
    """One line per problem `read_predictions` counted in a source (missing ids, NaN predictions, ids
    unknown to the pool, NaN std, flagged predictions): what a campaign prints and records."""
    a, src, out = p.audit, p.audit.get("file", p.source), []
    if a.get("n_missing_id"):
        out.append(f"{src}: {a['n_missing_id']} of {a['n_candidates']} candidate(s) have no row (e.g. "
                   f"{a['missing_ids'][:3]}): no prediction, ranked last as predicted unstable")
    if a.get("n_nan_prediction"):
        out.append(f"{src}: {a['n_nan_prediction']} candidate(s) have an empty or NaN prediction (e.g. "
                   f"{a['nan_prediction_ids'][:3]}): ranked last as predicted unstable")
    if a.get("n_unknown_id"):
        out.append(f"{src}: {a['n_unknown_id']} row(s) name ids that are not candidates of the pool (e.g. "
                   f"{a['unknown_ids'][:3]}): not used")
    if a.get("n_nan_std"):
        out.append(f"{src}: {a['n_nan_std']} prediction(s) have no std: uncertainty rules treat them as certain "
                   "(lcb: sigma 0; stable_per_cost and the expected-stable stop: the floor --min-std)")
    if a.get("n_flagged"):
        out.append(f"{src}: {a['n_flagged']} prediction(s) are flagged outside the model's domain (domain column): "
                   "they need DFT before they count as stable (needs_dft in the result)")
    return out


def pool_from_labels(labels: Sequence[str | Path], *, predictions: Mapping[str, str | Path | Predictions] = (),
                     references: ReferenceSet | None = None, exclude_ids: Sequence[str] = ()) -> Pool:
    """A replay pool from labels files (read with `esnet_tf.labels.read_labels`).

    Every row needs `formula`, `formation_energy_per_atom` (eV/atom, the relaxed label the replay
    reveals) and the wall times `is_wall_time_s`, `relax_wall_time_s` (s); an optional `relax_kind`
    column (eos, optimizer) becomes the pool's `cost_group`. Elemental rows are the
    references (unless `references` is given); compound rows are the candidates. `predictions`
    maps a source name ("esnet", "composition") to a predictions CSV or to `Predictions` already in
    the pool's id order.
    """
    from esnet_tf.labels import read_labels

    if not labels:
        raise UserError("no labels file given for the replay pool (--labels labels.csv)")
    cand: dict[str, tuple[str, float, float, float, str]] = {}
    elem: list[tuple[str, str, float]] = []
    skip = set(exclude_ids)
    for path in labels:
        rows = read_labels(path, path_column=None, require_energy=True,
                           required_columns=("formula", *COST_COLUMNS))
        for r in rows:
            if r.id in skip:
                continue
            if r.id in cand or any(r.id == e[0] for e in elem):
                raise UserError(f"{path}:{r.line}: id {r.id!r} is in two labels files: give each row once")
            try:
                parse_formula(r.formula)
            except Exception as exc:  # pymatgen raises several types; a zero count (Fe0O) is refused here
                raise UserError(f"{path}:{r.line}: id {r.id!r}: bad formula {r.formula!r} ({exc})") from None
            if _is_element(r.formula):
                elem.append((r.id, r.formula, r.formation_energy_per_atom))
                continue
            is_s, rx_s = (r.float(c, path) for c in COST_COLUMNS)
            if not (math.isfinite(is_s) and math.isfinite(rx_s) and is_s >= 0 and rx_s >= 0):
                raise UserError(f"{path}:{r.line}: id {r.id!r}: wall times must be finite and >= 0 s, got "
                                f"{(is_s, rx_s)}; a replay needs the DFT cost of every candidate")
            cand[r.id] = (r.formula, r.formation_energy_per_atom, is_s, rx_s, str(r.get("relax_kind") or ""))
    cand_elements = sorted({el.symbol for v in cand.values() for el in parse_formula(v[0]).elements})
    refs = references if references is not None else elemental_references(
        elem, f"elemental rows of {', '.join(map(str, labels))}", cand_elements)
    ids = sorted(cand)
    pool = Pool(ids=ids, formulas=[cand[i][0] for i in ids], is_wall_time_s=[cand[i][2] for i in ids],
                relax_wall_time_s=[cand[i][3] for i in ids], references=refs,
                truth=[cand[i][1] for i in ids], origin=", ".join(map(str, labels)),
                cost_group=[cand[i][4] for i in ids])
    for name, p in dict(predictions).items():
        pool.sources[name] = p if isinstance(p, Predictions) else read_predictions(p, ids, name=str(p))
        if len(pool.sources[name].mean) != pool.n:
            raise UserError(f"predictions {name!r}: {len(pool.sources[name].mean)} values for {pool.n} candidates")
    return pool


def uip_predictions(path: str | Path, pool: Pool, fold_of: Mapping[str, int] | None = None, *,
                    folds: int = 5, fold_seed: int = 0) -> Predictions:
    """The "uip" source of a replay pool: a universal potential's cross-fitted formation energies (eV/atom).

    `path`: an `esnet uip relax` CSV (id, formula, uip_energy_per_atom, cpu_time_s) with its JSON
    beside it (the potential's crystalline elemental references), read by `esnet_tf.uip.read_table`
    (no torch). The references of N, O, F, Cl are fitted (`esnet_tf.uip.cross_fitted_formation_energies`)
    for each fold on the relaxed DFT labels of the other folds' candidates only, so no candidate's
    label informs its own prediction. `fold_of`: candidate id -> fold (the folds of the ESNet
    out-of-fold predictions, `fold_column`); without it, grouped k-fold by chemical system
    (`esnet_tf.splits.kfold_of(chemsys, folds, fold_seed)`, the replay's default split).
    Candidates missing from the CSV get NaN (ranked last). Cost: the CPU seconds of each candidate's
    relaxation (`cost_s`) and of the CSV's elemental structures, from which the references are taken
    (`extra_cost_s`).
    """
    from esnet_tf.screening.io import read_csv_rows
    from esnet_tf.splits import kfold_of
    from esnet_tf.uip import cross_fitted_formation_energies, read_table

    if pool.truth is None:
        raise UserError(f"{path}: the uip source needs the relaxed labels of the pool (a replay) to fit the "
                        "N/O/F/Cl references on the training folds")
    table = read_table(path)
    rows = read_csv_rows(path, required=("id", "formula", "cpu_time_s"))
    cpu: dict[str, float] = {}
    for line, r in enumerate(rows, start=2):
        try:
            cpu[r["id"]] = float(r["cpu_time_s"])
        except (TypeError, ValueError):
            raise UserError(f"{path}:{line}: id {r['id']!r}: cpu_time_s {r['cpu_time_s']!r} is not a number of "
                            "seconds: remake the CSV with `esnet uip relax`") from None
    ids = [str(i) for i in pool.ids]
    have = [i for i in ids if i in table.energies]
    if not have:
        raise UserError(f"{path}: no row for any candidate of the pool (ids such as {ids[:3]}): give the "
                        "`esnet uip relax` CSV of these structures")
    if fold_of is None:
        fold_of = {i: kfold_of(cs, folds, fold_seed) for i, cs in zip(ids, pool.chemsys)}
    missing_fold = [i for i in have if i not in fold_of]
    if missing_fold:
        raise UserError(f"fold of {len(missing_fold)} candidate(s) unknown (e.g. {missing_fold[0]!r}): give a "
                        "fold for every candidate of the uip CSV")
    truth = dict(zip(ids, pool.truth.tolist()))
    pred, _mus = cross_fitted_formation_energies(table, truth, {i: int(fold_of[i]) for i in have})
    mean = np.array([pred.get(i, math.nan) for i in ids], float)
    cost = np.array([cpu.get(i, 0.0) if i in table.energies else 0.0 for i in ids], float)
    elemental = sum(cpu.get(i, 0.0) for i, c in table.compositions.items() if len(c) == 1)
    if not np.any(np.isfinite(mean)):
        raise UserError(f"{path}: no formation energy for any candidate (no usable references): check its .json")
    return Predictions(mean, None, str(path), cost, float(elemental))


def fold_column(path: str | Path, column: str = "fold") -> dict[str, int] | None:
    """id -> fold from a predictions CSV's `fold` column (benchmarks/campaign_replay.py writes one);
    None when the CSV has no such column."""
    from esnet_tf.screening.io import read_csv_rows

    rows = read_csv_rows(path, required=("id",))
    if not rows or column not in rows[0]:
        return None
    out = {}
    for line, r in enumerate(rows, start=2):
        try:
            out[r["id"]] = int(r[column])
        except (TypeError, ValueError):
            raise UserError(f"{path}:{line}: {column} {r[column]!r} is not a fold number (an integer)") from None
    return out


def describe(pool: Pool) -> dict[str, Any]:
    """JSON-ready summary of the pool (sizes, costs in s, sources)."""
    return {"n_candidates": pool.n, "n_references": len(pool.references.ids), "origin": pool.origin,
            "is_single_points_total_s": float(np.nansum(pool.is_wall_time_s)),
            "relaxations_total_s": float(np.nansum(pool.relax_wall_time_s)),
            "relaxation_equivalent_s": pool.relaxation_equivalent_s(),
            "reference_cost_s": pool.reference_cost_s,
            "sources": {k: {"source": p.source, "has_std": p.has_std} for k, p in pool.sources.items()},
            "fingerprint": pool.fingerprint()}
