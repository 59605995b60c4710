"""Initial-structure volumes: the contact rule's, the relaxed one, and pymatgen's data-mined predictions.

The engine builds an initial structure (IS) by the contact rule of `esnet_tf.dft.prototypes`: the
prototype is scaled isotropically until no pair of atoms is closer than the sum of their Slater
radii (pymatgen `Element.atomic_radius`). This module measures, per finished calculation folder
(`task.json` with the IS, `result.json` with the relaxed structure), how far that volume lies from
the relaxed one, and what pymatgen's volume predictors give for the same structure, without DFT:

- `DLSVolumePredictor` (data-mined lattice scaling): the same "closest pair touches" scaling, with
  bond lengths data-mined from the ICSD (`r + k * std(electronegativity)` per element); applied to
  the IS with pymatgen's defaults (cutoff 4 Å, the volume clamped to 0.5-1.5 x the input's).
- `RLSVolumePredictor` (reference lattice scaling): a known isostructural reference's volume scaled
  by radii sums (ionic radii where bond valence assigns oxidation states, atomic radii otherwise).
  The references here are the demo's relaxed structures of the same prototype, leaving out the
  target's own chemical system (so a demo compound is predicted as a hypothetical one would be); the
  prediction is the median over those references.
- `blend`: the geometric mean of the IS and DLS volumes (no fit: a candidate rule, reported beside them).

Every volume is in Å^3/atom. A predictor that fails on a structure leaves NaN and its reason in the
row (`dls_error`, `rls_error`); `summarize` counts those failures, nothing is dropped.
"""
from __future__ import annotations

import csv
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from esnet_tf.errors import UserError

#: the three groups reported separately: the pool's hypothetical candidates, the pool's competing
#: phases and elements, and the demo (in-distribution)
GROUPS: tuple[str, ...] = ("pool_candidates", "pool_competitors_elements", "demo")
#: volume estimates compared with the relaxed volume (`v_<method>` columns)
METHODS: tuple[str, ...] = ("is", "dls", "rls", "blend")
#: |V / V_relaxed - 1| above which an estimate counts as "more than 10 % off"
OFF_THRESHOLD = 0.10
#: eV/atom: an IS this far above its relaxed formation energy is a poor initial structure (issue 40)
BIG_GAP = 0.5


@dataclass(frozen=True)
class CalcVolumes:
    """One finished calculation: its initial (contact-rule) and relaxed structures and volumes (Å^3/atom)."""

    id: str
    prototype: str
    formula: str
    n_atoms: int
    v_is: float
    v_relaxed: float
    initial: Structure = field(repr=False, compare=False)
    relaxed: Structure = field(repr=False, compare=False)


def _read_json(path: Path) -> dict:
    from esnet_tf.safe_json import check_modules, loads

    if not path.is_file():
        raise UserError(f"{path}: not found: a finished calculation folder holds task.json and result.json "
                        "(written by `esnet dft run`); point at such a folder")
    try:
        obj = loads(path.read_text(encoding="utf-8"), path)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); recompute the task with `esnet dft run`") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object; recompute the task with `esnet dft run`")
    return check_modules(obj, path)


def calc_volumes(calc_dir: str | Path) -> CalcVolumes:
    """Initial and relaxed volume per atom (Å^3/atom) of the finished calculation in `calc_dir`.

    The IS is `task.json`'s `structure`; the relaxed structure is `result.json`'s `rs_structure`
    (EOS: the IS scaled by `rs_scale`; optimizer: the relaxed cell). A folder without a relaxation
    (no `rs_structure`), or a molecule in a box, raises a one-line `UserError`.
    """
    calc_dir = Path(calc_dir)
    task, result = _read_json(calc_dir / "task.json"), _read_json(calc_dir / "result.json")
    if result.get("kind", task.get("kind")) == "molecule":
        raise UserError(f"{calc_dir}: a molecule in a box has no crystal volume; leave it out")
    if "structure" not in task:
        raise UserError(f"{calc_dir / 'task.json'}: no 'structure'; recompute the task with `esnet dft run`")
    if "rs_structure" not in result:
        raise UserError(f"{calc_dir / 'result.json'}: no relaxed structure ('rs_structure'): the task ran "
                        "without --relax; rerun it with `esnet dft run --relax eos|optimizer`")
    try:
        initial = Structure.from_dict(task["structure"])
        relaxed = Structure.from_dict(result["rs_structure"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{calc_dir}: a structure in task.json or result.json cannot be read ({exc}); "
                        "recompute the task with `esnet dft run`") from None
    if len(initial) != len(relaxed) or initial.composition != relaxed.composition:
        raise UserError(f"{calc_dir}: the relaxed structure has other atoms than the initial one "
                        f"({relaxed.composition.formula} vs {initial.composition.formula}); recompute the task")
    n = len(initial)
    return CalcVolumes(id=str(task.get("id", result.get("id", calc_dir.name))),
                       prototype=str(task.get("prototype") or result.get("prototype") or ""),
                       formula=initial.composition.reduced_formula, n_atoms=n,
                       v_is=initial.volume / n, v_relaxed=relaxed.volume / n, initial=initial, relaxed=relaxed)


def dls_volume(structure: Structure) -> tuple[float, bool]:
    """pymatgen's DLS volume per atom (Å^3/atom) of `structure` and whether its 0.5-1.5 clamp acted.

    Raises what pymatgen raises (e.g. ValueError when no bond lies within the cutoff).
    """
    from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor

    predictor = DLSVolumePredictor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = float(predictor.predict(structure))
    factor = volume / structure.volume
    clamped = math.isclose(factor, predictor.min_scaling) or math.isclose(factor, predictor.max_scaling)
    return volume / len(structure), clamped


@dataclass(frozen=True)
class Reference:
    """A relaxed structure of known volume for RLS: its id, chemical system and prototype."""

    id: str
    chemsys: str
    prototype: str
    structure: Structure = field(repr=False, compare=False)


def _with_oxidation_states(structure: Structure) -> Structure:
    """`structure` decorated with bond-valence oxidation states, or unchanged where BV finds none
    (intermetallics): RLS then uses atomic radii, as pymatgen's own fallback does."""
    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return BVAnalyzer().get_oxi_state_decorated_structure(structure)
    except Exception:  # noqa: BLE001 - BVAnalyzer raises ValueError and others for non-ionic structures
        return structure


class RLSReferences:
    """The reference set of RLS: relaxed structures by prototype, decorated once with oxidation states."""

    def __init__(self, references: Iterable[Reference]) -> None:
        self.by_prototype: dict[str, list[Reference]] = {}
        for ref in references:
            decorated = Reference(ref.id, ref.chemsys, ref.prototype, _with_oxidation_states(ref.structure))
            self.by_prototype.setdefault(ref.prototype, []).append(decorated)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_prototype.values())

    def predict(self, structure: Structure, prototype: str, chemsys: str) -> tuple[float, int, int]:
        """Median RLS volume per atom (Å^3/atom) of `structure` over the references of `prototype`
        outside `chemsys`; also how many references and how many of them fell back to atomic radii.

        Raises ValueError when there is no such reference.
        """
        from pymatgen.analysis.structure_prediction.volume_predictor import RLSVolumePredictor

        refs = [r for r in self.by_prototype.get(prototype, []) if r.chemsys != chemsys]
        if not refs:
            raise ValueError(f"no reference structure of prototype {prototype!r} outside the target's chemical system")
        target = _with_oxidation_states(structure)
        # the prototype label makes the pair isostructural; pymatgen's StructureMatcher check is skipped
        predictor = RLSVolumePredictor(check_isostructural=False, use_bv=False)
        per_atom, n_atomic = [], 0
        for ref in refs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                v = float(predictor.predict(target, ref.structure))
            n_atomic += any("atomic radii" in str(w.message) for w in caught) or not _has_oxi(target)
            per_atom.append(v / len(target))  # pymatgen returns the target cell's volume
        return float(np.median(per_atom)), len(refs), int(n_atomic)


def _has_oxi(structure: Structure) -> bool:
    return all(hasattr(sp, "oxi_state") for sp in structure.composition)


def chemsys_of(structure: Structure) -> str:
    """The chemical system, elements sorted and joined by '-' (as the datasets write it)."""
    return "-".join(sorted({el.symbol for el in structure.composition.elements}))


@dataclass(frozen=True)
class VolumeRow:
    """One structure's volumes (Å^3/atom), the predictors' failures, and its IS-to-relaxed energy gap (eV/atom)."""

    id: str
    group: str
    prototype: str
    formula: str
    n_atoms: int
    relax_kind: str
    #: labels.csv's relax_converged: False where the EOS scan did not bracket its minimum or the optimizer
    #: stopped unconverged, so that V_relaxed is less certain
    relax_converged: bool
    v_relaxed: float
    v_is: float
    v_dls: float
    v_rls: float
    v_blend: float
    dls_clamped: bool
    dls_error: str
    rls_n_references: int
    rls_n_atomic_radii: int
    rls_error: str
    #: eV/atom: labels.csv's is_formation_energy_per_atom - formation_energy_per_atom
    is_minus_relaxed_formation_energy: float

    def ratio(self, method: str) -> float:
        """V_method / V_relaxed (NaN where the method failed)."""
        return getattr(self, f"v_{method}") / self.v_relaxed

    def as_csv(self) -> dict[str, str]:
        """The CSV row: volumes to 4 decimals, ratios to V_relaxed to 4, NaN as empty."""
        out: dict[str, str] = {}
        for k, v in asdict(self).items():
            out[k] = _fmt(v, 4 if k.startswith("v_") else 6)
        for m in METHODS:
            out[f"ratio_{m}"] = _fmt(self.ratio(m), 4)
        return out


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(VolumeRow)) + tuple(f"ratio_{m}" for m in METHODS)


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _float(row: dict, key: str) -> float:
    try:
        return float(row.get(key) or "nan")
    except ValueError:
        return math.nan


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]


def volume_row(calc: CalcVolumes, group: str, relax_kind: str, energy_gap: float,
               references: RLSReferences | None, relax_converged: bool = True) -> VolumeRow:
    """The row of one calculation: DLS on its IS, RLS against `references` (None: not computed, counted
    as failed), the IS/DLS blend; each predictor's failure kept as its reason."""
    v_dls, clamped, dls_error = math.nan, False, ""
    try:
        v_dls, clamped = dls_volume(calc.initial)
    except Exception as exc:  # noqa: BLE001 - any failure of pymatgen's predictor is recorded, not raised
        dls_error = _error(exc)
    v_rls, n_refs, n_atomic, rls_error = math.nan, 0, 0, ""
    if references is None:
        rls_error = "no reference set"
    else:
        try:
            v_rls, n_refs, n_atomic = references.predict(calc.initial, calc.prototype, chemsys_of(calc.initial))
        except Exception as exc:  # noqa: BLE001 - recorded per structure
            rls_error = _error(exc)
    return VolumeRow(id=calc.id, group=group, prototype=calc.prototype, formula=calc.formula,
                     n_atoms=calc.n_atoms, relax_kind=relax_kind, relax_converged=relax_converged,
                     v_relaxed=calc.v_relaxed, v_is=calc.v_is,
                     v_dls=v_dls, v_rls=v_rls, v_blend=math.sqrt(calc.v_is * v_dls), dls_clamped=clamped,
                     dls_error=dls_error, rls_n_references=n_refs, rls_n_atomic_radii=n_atomic,
                     rls_error=rls_error, is_minus_relaxed_formation_energy=energy_gap)


def read_labels(data_dir: str | Path, flag: str = "--data-dir") -> list[dict[str, str]]:
    """The rows of `data_dir`/labels.csv; a missing folder or file is one line naming `flag`."""
    data_dir = Path(data_dir)
    labels = data_dir / "labels.csv"
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such folder ({flag}): pass a dataset folder written by "
                        "`esnet dft` (labels.csv and calcs/)")
    if not labels.is_file():
        raise UserError(f"{labels}: not found ({flag}): pass a dataset folder written by `esnet dft` "
                        "(labels.csv and calcs/)")
    with labels.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("id", "path") if rows and c not in rows[0]]
    if missing:
        raise UserError(f"{labels}: lacks the column(s) {', '.join(missing)}; reassemble it with `esnet dft`")
    return rows


def pool_group(row: dict[str, str]) -> str:
    """The group of a pool labels row: its `role` 'candidate' or else (competitor, element)."""
    return GROUPS[0] if row.get("role") == "candidate" else GROUPS[1]


def references_from(data_dir: str | Path, rows: Sequence[dict[str, str]]) -> list[Reference]:
    """The relaxed structures of `rows` (labels rows of `data_dir`) as RLS references."""
    refs = []
    for row in rows:
        c = calc_volumes(Path(data_dir) / Path(row["path"]).parent)
        refs.append(Reference(c.id, chemsys_of(c.relaxed), c.prototype, c.relaxed))
    return refs


def volume_rows(data_dir: str | Path, rows: Sequence[dict[str, str]], group: Callable[[dict[str, str]], str],
                references: RLSReferences | None,
                progress: Callable[[int, int], None] | None = None) -> list[VolumeRow]:
    """One `VolumeRow` per labels row of `data_dir` (the calculation folder is the parent of `path`)."""
    out = []
    for i, row in enumerate(rows):
        calc = calc_volumes(Path(data_dir) / Path(row["path"]).parent)
        gap = _float(row, "is_formation_energy_per_atom") - _float(row, "formation_energy_per_atom")
        out.append(volume_row(calc, group(row), row.get("relax_kind", ""), gap, references,
                              relax_converged=row.get("relax_converged", "True") != "False"))
        if progress is not None:
            progress(i + 1, len(rows))
    return out


def _quantiles(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"median": None, "q10": None, "q90": None}
    q = np.quantile(x, [0.5, 0.1, 0.9])
    return {"median": round(float(q[0]), 4), "q10": round(float(q[1]), 4), "q90": round(float(q[2]), 4)}


def calibration_factors(rows: Sequence[VolumeRow], group: str = "demo") -> dict[str, float | None]:
    """Per method, the one factor c that makes the median of c * V_method / V_relaxed 1 on `group`'s rows
    (the demo: a constant correction learnt in-distribution, then applied to the pool unchanged)."""
    out: dict[str, float | None] = {}
    for m in METHODS:
        r = np.array([x.ratio(m) for x in rows if x.group == group], dtype=float)
        r = r[np.isfinite(r)]
        out[m] = round(float(1 / np.median(r)), 4) if r.size else None
    return out


def _method_summary(rows: Sequence[VolumeRow], method: str, factor: float | None = None) -> dict[str, Any]:
    ratios = np.array([r.ratio(method) for r in rows], dtype=float)
    ok = ratios[np.isfinite(ratios)]
    errors = Counter(getattr(r, f"{method}_error", "") for r in rows if not math.isfinite(r.ratio(method)))
    if method == "blend":
        errors = Counter("DLS failed" for r in rows if not math.isfinite(r.ratio(method)))
    out: dict[str, Any] = {"n": int(ok.size), "n_failed": int(ratios.size - ok.size),
                           "failures": dict(sorted(errors.items()))}
    out["ratio_to_relaxed"] = _quantiles(ok)
    out["mae_ln_ratio"] = round(float(np.mean(np.abs(np.log(ok)))), 4) if ok.size else None
    out["fraction_off_10pct"] = round(float(np.mean(np.abs(ok - 1) > OFF_THRESHOLD)), 4) if ok.size else None
    if factor is not None:
        scaled = ok * factor
        out["calibrated"] = {"factor": factor, "ratio_to_relaxed": _quantiles(scaled),
                             "mae_ln_ratio": round(float(np.mean(np.abs(np.log(scaled)))), 4) if ok.size else None,
                             "fraction_off_10pct": round(float(np.mean(np.abs(scaled - 1) > OFF_THRESHOLD)), 4)
                             if ok.size else None}
    return out


def _correlation(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.stats import pearsonr, spearmanr

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, Any] = {"n": int(x.size), "pearson": None, "spearman": None}
    if x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        out["pearson"] = round(float(pearsonr(x, y)[0]), 3)
        out["spearman"] = round(float(spearmanr(x, y)[0]), 3)
    return out


def summarize(rows: Sequence[VolumeRow], groups: Sequence[str] = GROUPS,
              calibrate_on: str | None = "demo") -> dict[str, Any]:
    """Per group: n, per method the quantiles (median, 10 %, 90 %) of V/V_relaxed, the MAE of
    ln(V/V_relaxed), the fraction more than 10 % off and the failures counted by reason (and the same
    after the `calibration_factors` of `calibrate_on`, when that group has rows); the correlation
    of |V_IS/V_relaxed - 1| with |E_f(IS) - E_f(relaxed)| (eV/atom); the DLS clamp count; the median
    V_IS/V_relaxed and V_DLS/V_relaxed per prototype; how many relaxations did not converge."""
    out: dict[str, Any] = {}
    factors = calibration_factors(rows, calibrate_on) if calibrate_on else dict.fromkeys(METHODS)
    for g in groups:
        rs = [r for r in rows if r.group == g]
        gap = np.abs(np.array([r.is_minus_relaxed_formation_energy for r in rs], dtype=float))
        off = np.abs(np.array([r.ratio("is") for r in rs], dtype=float) - 1)
        protos: dict[str, Any] = {}
        for p in sorted({r.prototype for r in rs}):
            sub = [r for r in rs if r.prototype == p]
            protos[p] = {"n": len(sub), **{f"median_ratio_{m}": _quantiles(
                np.array([r.ratio(m) for r in sub if math.isfinite(r.ratio(m))]))["median"] for m in ("is", "dls")}}
        out[g] = {
            "n": len(rs),
            "n_relax_not_converged": sum(not r.relax_converged for r in rs),
            "methods": {m: _method_summary(rs, m, factors[m]) for m in METHODS},
            "dls_clamped": sum(r.dls_clamped for r in rs),
            "energy_gap_ev_per_atom": {**_quantiles(gap[np.isfinite(gap)]),
                                       "n_above_0.5": int(np.sum(gap > 0.5))},
            "is_volume_error_vs_energy_gap": _correlation(off, gap),
            f"mae_ln_ratio_where_gap_above_{BIG_GAP}": _big_gap(rs),
            "per_prototype": protos,
        }
    return out


def _big_gap(rows: Sequence[VolumeRow]) -> dict[str, Any]:
    """MAE of ln(V/V_relaxed) per method over the rows whose |E_f(IS) - E_f(relaxed)| exceeds BIG_GAP."""
    big = [r for r in rows if abs(r.is_minus_relaxed_formation_energy) > BIG_GAP]
    out: dict[str, Any] = {"n": len(big)}
    for m in METHODS:
        x = np.array([r.ratio(m) for r in big], dtype=float)
        x = x[np.isfinite(x)]
        out[m] = round(float(np.mean(np.abs(np.log(x)))), 4) if x.size else None
    return out


def write_csv(rows: Sequence[VolumeRow], path: str | Path) -> Path:
    """The per-structure table (`CSV_COLUMNS`), written atomically."""
    from esnet_tf.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        w.writerows(r.as_csv() for r in rows)
    return Path(path)


def plot_ratios(rows: Sequence[VolumeRow], path: str | Path, groups: Sequence[str] = GROUPS) -> Path:
    """A PNG of V/V_relaxed per group (one panel each): box and points for the contact rule, DLS, RLS
    and the blend, the ±10 % band shaded."""
    from esnet_tf.screening.plots import pyplot, save_figure

    plt = pyplot()
    labels = {"is": "contact rule (IS)", "dls": "DLS", "rls": "RLS", "blend": "√(IS·DLS)"}
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), sharey=True)
    rng = np.random.default_rng(0)
    for ax, g in zip(np.atleast_1d(axes), groups):
        rs = [r for r in rows if r.group == g]
        data = [np.array([r.ratio(m) for r in rs if math.isfinite(r.ratio(m))]) for m in METHODS]
        ax.axhspan(1 - OFF_THRESHOLD, 1 + OFF_THRESHOLD, color="0.9", zorder=0)
        ax.axhline(1.0, color="0.4", lw=0.8)
        if any(d.size for d in data):
            ax.boxplot([d if d.size else np.array([np.nan]) for d in data], positions=range(len(METHODS)),
                       widths=0.5, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=8, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xticks(range(len(METHODS)), [labels[m] for m in METHODS], rotation=20)
        ax.set_title(f"{g.replace('_', ' ')} (n = {len(rs)})")
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("V / V_relaxed (log scale)")
    ticks = [0.5, 0.7, 1.0, 1.5, 2, 3, 4]
    first.set_yticks(ticks, [f"{t:g}" for t in ticks])
    first.minorticks_off()
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)
