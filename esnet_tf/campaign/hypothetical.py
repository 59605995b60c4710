"""The campaign replay on the hypothetical pool (`esnet dft pool`): hull-complete candidates on their real hull.

The pool's labels.csv holds candidates (role `candidate`), their competing binaries (`competitor`),
new elemental phases (`element`) and strongly unstable gas-element pairs (`label_range`);
`hull_complete` says whether every planned structure of a row's chemical system is computed. A replay on it:

- **candidates** = the hull-complete candidates only (`select_candidates`; the others are counted
  with the reason: their hull still lacks competitors, so their E_hull is not yet the real one);
- **references** = every row of the demo's labels (elements and compounds: the demo computed some
  of the candidates' binaries, e.g. CaO, and the pool reads them from its cache) plus the pool's
  elements, competitors and label-range rows, all DFT labels (`pool_references`); the candidates are never references;
- **truth**: E_hull against references + every candidate's relaxed E_f (`esnet_tf.campaign.hull`,
  one pymatgen PhaseDiagram per chemical system), which should equal labels.csv's `e_above_hull`.

Prediction sources that never saw a candidate: `uip_source` (the potential's relaxations of demo and
pool, its O/N/F/Cl references fitted on non-candidate rows only) and `composition_source` (gradient
boosting on the fractional composition, trained on the non-candidate rows); the ESNet source is
`esnet predict` of a model trained without the candidates (benchmarks/campaign_replay.py --pool).

    pool, sel = hypothetical_pool("pool/labels.csv", "demo/labels.csv", predictions={"esnet": "preds.csv"})
    sel.n_kept, sel.left_out

Energies in eV/atom, costs in s.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.campaign.pool import Pool, Predictions, pool_from_labels
from esnet_tf.dft.pool import ROLES  # the roles of a pool labels.csv (`esnet_tf.dft.pool.assemble_pool`)
from esnet_tf.errors import DatasetError, UserError
from esnet_tf.screening.references import ReferenceSet, formation_energy_references, parse_formula



@dataclass(frozen=True)
class CandidateSelection:
    """Which candidates of a pool labels.csv a replay keeps.

    kept: ids of the hull-complete candidates with a relaxed label (sorted); left_out: candidate id ->
    why it is not in the replay; n_rows / n_candidates: rows and candidates of the file.
    """

    kept: tuple[str, ...]
    left_out: Mapping[str, str] = field(default_factory=dict)
    n_rows: int = 0
    n_candidates: int = 0

    @property
    def n_kept(self) -> int:
        return len(self.kept)

    def to_dict(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.left_out.values():
            reasons[r] = reasons.get(r, 0) + 1
        return {"n_rows": self.n_rows, "n_candidates": self.n_candidates, "n_kept": self.n_kept,
                "n_left_out": len(self.left_out), "left_out_by_reason": reasons, "kept": list(self.kept),
                "left_out": dict(sorted(self.left_out.items()))}


def _truthy(text: str, path: Path, line: int) -> bool:
    t = (text or "").strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no", ""):
        return False
    raise UserError(f"{path}:{line}: hull_complete {text!r} is not True or False: reassemble the pool with "
                    "`esnet dft pool --out DIR --assemble-only`")


def _pool_rows(labels_csv: str | Path) -> list[Any]:
    from esnet_tf.labels import read_labels

    path = Path(labels_csv)
    try:
        rows = read_labels(path, path_column=None, require_energy=False,
                           required_columns=("formula", "role", "hull_complete"))
    except FileNotFoundError as exc:
        raise UserError(f"{exc}: give the pool's labels.csv (datasets/is_dos/pool/labels.csv)") from None
    except DatasetError as exc:  # e.g. a missing column: the message names the file
        raise UserError(f"{exc} (a labels.csv of `esnet dft pool` has role and hull_complete)") from None
    for r in rows:
        if r["role"] not in ROLES:
            raise UserError(f"{path}:{r.line}: id {r.id!r}: role {r['role']!r} is not one of {', '.join(ROLES)}")
    return rows


def select_candidates(labels_csv: str | Path) -> CandidateSelection:
    """The candidates of a pool labels.csv whose hull is complete (`hull_complete` True) and whose relaxed
    formation energy is known; every other candidate is left out with its reason."""
    path = Path(labels_csv)
    rows = _pool_rows(path)
    kept, left = [], {}
    for r in rows:
        if r["role"] != "candidate":
            continue
        if not _truthy(r["hull_complete"], path, r.line):
            left[r.id] = "hull not complete (competitors of its chemical system not computed yet)"
        elif not math.isfinite(r.formation_energy_per_atom):
            left[r.id] = "no relaxed formation energy"
        else:
            kept.append(r.id)
    return CandidateSelection(tuple(sorted(kept)), left, len(rows), len(kept) + len(left))


def reference_rows(pool_labels: str | Path, demo_labels: str | Path) -> list[tuple[str, str, float]]:
    """(id, formula, E_f eV/atom) of every row that is known before a campaign: all rows of the demo's
    labels and the pool's elements, competitors and label-range rows (never a pool candidate); rows without a relaxed
    formation energy are skipped. An id in both files is an error."""
    from esnet_tf.labels import read_labels

    out: list[tuple[str, str, float]] = []
    seen: dict[str, Path] = {}
    try:
        demo = read_labels(Path(demo_labels), path_column=None, require_energy=False, required_columns=("formula",))
    except FileNotFoundError as exc:
        raise UserError(f"{exc}: give the demo's labels.csv (datasets/is_dos/demo/labels.csv)") from None
    for path, rows in ((Path(demo_labels), demo), (Path(pool_labels), _pool_rows(pool_labels))):
        for r in rows:
            if r.id in seen:
                raise UserError(f"{path}:{r.line}: id {r.id!r} is also in {seen[r.id]}: a reference must be "
                                "given once")
            seen[r.id] = path
            if r.get("role") == "candidate" or not math.isfinite(r.formation_energy_per_atom):
                continue
            out.append((r.id, r.formula, r.formation_energy_per_atom))
    return out


def pool_references(pool_labels: str | Path, demo_labels: str | Path) -> ReferenceSet:
    """The replay's reference set (`reference_rows`): one PDEntry per known row, elements at 0 eV/atom."""
    rows = reference_rows(pool_labels, demo_labels)
    return formation_energy_references([(i, parse_formula(f), ef) for i, f, ef in rows],
                                       f"demo {demo_labels} + the non-candidate rows of {pool_labels}")


def hypothetical_pool(pool_labels: str | Path, demo_labels: str | Path, *,
                      predictions: Mapping[str, str | Path | Predictions] = ()) -> tuple[Pool, CandidateSelection]:
    """The replay pool: the hull-complete candidates of `pool_labels` (their DFT wall times and relaxed
    labels; `relax_kind` as the cost group) on the references of `pool_references`."""
    sel = select_candidates(pool_labels)
    if not sel.kept:
        raise UserError(f"{pool_labels}: no candidate has a complete hull yet ({sel.n_candidates} candidate(s)): "
                        "wait for `esnet dft pool` to compute their competitors")
    refs = pool_references(pool_labels, demo_labels)
    keep = set(sel.kept)
    others = [r.id for r in _pool_rows(pool_labels) if r.id not in keep]
    pool = pool_from_labels([pool_labels], predictions=predictions, references=refs, exclude_ids=others)
    return pool, sel


def labelled_e_above_hull(pool_labels: str | Path, ids: Sequence[str]) -> np.ndarray:
    """labels.csv's own `e_above_hull` (eV/atom; `esnet dft pool`'s assembly) of `ids`, NaN where blank."""
    by_id = {r.id: r.e_above_hull for r in _pool_rows(pool_labels)}
    return np.array([by_id.get(str(i), math.nan) for i in ids], float)


# ------------------------------------------------------------------------------ prediction sources


def uip_source(pool: Pool, uip_csvs: Sequence[str | Path], pool_labels: str | Path,
               demo_labels: str | Path) -> Predictions:
    """A universal potential's formation energies of the candidates (eV/atom), the "uip" source.

    `uip_csvs`: `esnet uip relax` CSVs (with their JSON beside) of the demo and of the pool, merged
    (`esnet_tf.study.data.merge_uip_tables`: each element's crystalline reference the lower of the two).
    The references of N, O, F and Cl are fitted (`esnet_tf.uip.fit_gas_references`) on the DFT labels
    of the non-candidate rows (`reference_rows`) only: no candidate's label is read. Cost: each
    candidate's CPU seconds (`cost_s`) and those of the CSVs' elemental structures (`extra_cost_s`).
    Candidates without a row get NaN (ranked last), counted in `audit`.
    """
    from esnet_tf.screening.io import read_csv_rows
    from esnet_tf.study.data import merge_uip_tables
    from esnet_tf.uip import fit_gas_references, read_table

    if not uip_csvs:
        raise UserError("no potential CSV given (the demo's and the pool's uip_chgnet.csv)")
    table = read_table(uip_csvs[0])
    for p in uip_csvs[1:]:
        table = merge_uip_tables(table, read_table(p), Path(p))
    cpu: dict[str, float] = {}
    for p in uip_csvs:
        for line, r in enumerate(read_csv_rows(p, required=("id", "cpu_time_s")), start=2):
            try:
                cpu[r["id"]] = float(r["cpu_time_s"])
            except (TypeError, ValueError):
                raise UserError(f"{p}:{line}: id {r['id']!r}: cpu_time_s {r['cpu_time_s']!r} is not a number of "
                                "seconds: remake the CSV with `esnet uip relax`") from None
    fit = {i: ef for i, _f, ef in reference_rows(pool_labels, demo_labels) if i in table.energies}
    candidates = set(map(str, pool.ids))
    if candidates & set(fit):
        raise AssertionError("a candidate among the rows the gas references are fitted on")
    mu = fit_gas_references(list(fit), table.energies, table.compositions, fit, table.crystal_mu)
    ef = table.formation_energies(mu)
    ids = [str(i) for i in pool.ids]
    mean = np.array([ef.get(i, math.nan) for i in ids], float)
    cost = np.array([cpu.get(i, 0.0) if i in table.energies else 0.0 for i in ids], float)
    elemental = sum(cpu.get(i, 0.0) for i, c in table.compositions.items() if len(c) == 1)
    if not np.any(np.isfinite(mean)):
        raise UserError(f"{', '.join(map(str, uip_csvs))}: no formation energy for any candidate of the pool: "
                        "relax the candidates with `esnet uip relax`")
    missing = [i for i in ids if i not in table.energies]
    nan = [i for i, m in zip(ids, mean) if i in table.energies and not math.isfinite(m)]
    audit = {"file": " + ".join(map(str, uip_csvs)), "n_candidates": len(ids), "n_missing_id": len(missing),
             "missing_ids": missing[:5], "n_nan_prediction": len(nan), "nan_prediction_ids": nan[:5],
             "n_unknown_id": 0, "has_std": False, "n_fit_rows": len(fit),
             "fitted_mu_ev_per_atom": mu}
    return Predictions(mean, None, audit["file"], cost, float(elemental), audit=audit)


def fraction_vector(formula: str) -> np.ndarray:
    """Atomic fractions (118,) indexed by Z - 1 of a formula."""
    from esnet_tf.isdos import N_ELEMENTS

    comp = parse_formula(formula).fractional_composition
    v = np.zeros(N_ELEMENTS)
    for el, x in comp.items():
        v[el.Z - 1] = x
    return v


def composition_source(pool: Pool, pool_labels: str | Path, demo_labels: str | Path, seed: int = 0) -> Predictions:
    """Composition-only baseline (eV/atom): `esnet_tf.baselines.fit_predict_gbr` on the fractional
    composition, trained on the non-candidate rows (`reference_rows`), predicting the candidates."""
    from esnet_tf.baselines import fit_predict_gbr

    rows = reference_rows(pool_labels, demo_labels)
    x = np.stack([fraction_vector(f) for _i, f, _e in rows])
    y = np.array([e for _i, _f, e in rows], float)
    pred = fit_predict_gbr(x, y, np.stack([fraction_vector(f) for f in pool.formulas]), seed)
    return Predictions(np.asarray(pred, float), None, f"composition GBR on {len(rows)} non-candidate rows",
                       audit={"file": "composition GBR", "n_candidates": pool.n, "n_train": len(rows),
                              "has_std": False})
