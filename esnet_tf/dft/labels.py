"""Labels from finished DFT tasks: formation energies, energies above the hull, provenance.

Used by `esnet dft run` and by the demo dataset (`esnet dft demo`).
"""
from __future__ import annotations

import csv
import datetime
import json
import platform
from dataclasses import asdict
from pathlib import Path

from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.dft.runner import Outcome
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import OPTIMIZER


def eos_bracketed(result: dict) -> bool | str:
    """Whether the EOS scan's lowest point lies inside the scanned range ('' without a scan).

    False means the scan ran out of points (`eos_max_extra`) while the energy still fell: the
    label is then an upper bound of the relaxed energy.
    """
    pts = result.get("eos_points") or []
    if not pts:
        return ""
    scales = [p["scale"] for p in pts]
    best = min(pts, key=lambda p: p["energy"])["scale"]
    return min(scales) < best < max(scales)


def relax_converged(result: dict) -> bool | str:
    """Whether the relaxation reached its minimum: EOS bracketed, or BFGS converged ('' without one)."""
    if result.get("relax_kind") == "optimizer" or "relax_converged" in result:
        return bool(result.get("relax_converged"))
    return eos_bracketed(result)


def relax_kind(result: dict) -> str:
    """'eos', 'optimizer' or 'none' (results before `relax_kind` was recorded were EOS scans)."""
    if "rs_energy" not in result:
        return "none"
    return result.get("relax_kind", "eos")


def family_summary(rows: list[dict]) -> dict:
    """Per prototype: count, relaxation kind(s), stable entries and fraction, DFT cost.

    Cost in process-hours (single-threaded wall time) of the IS single points and of the
    relaxations, and the mean per structure (s).
    """
    out: dict[str, dict] = {}
    for proto in sorted({r["prototype"] for r in rows}):
        rs = [r for r in rows if r["prototype"] == proto]
        n_stable = sum(abs(float(r.get("e_above_hull", 1.0))) < 1e-9 for r in rs)
        is_s = [float(r["is_wall_time_s"]) for r in rs]
        rel_s = [float(r["relax_wall_time_s"]) for r in rs]
        out[proto] = {
            "n": len(rs), "relax_kind": "/".join(sorted({str(r.get("relax_kind", "eos")) for r in rs})),
            "n_stable": n_stable, "stable_fraction": round(n_stable / len(rs), 3),
            "n_relax_not_converged": sum(str(r.get("relax_converged", "True")) == "False" for r in rs),
            "is_process_hours": round(sum(is_s) / 3600, 3), "relax_process_hours": round(sum(rel_s) / 3600, 3),
            "mean_is_wall_time_s": round(float(sum(is_s) / len(rs)), 1),
            "mean_relax_wall_time_s": round(float(sum(rel_s) / len(rs)), 1),
        }
    return out


def _date_range(done: list[Outcome]) -> list[str]:
    dates = sorted(o.result["finished_utc"] for o in done if "finished_utc" in o.result)
    return [dates[0], dates[-1]] if dates else []


def summarize(rows: list[dict]) -> dict:
    """Counts per prototype, element and number of elements, stable entries, and DFT cost.

    Cost: structures per process-hour of the IS single points and of the relaxations
    (single-threaded processes, wall time), and their ratio: the DFT cost screening saves.
    """
    from collections import Counter

    from pymatgen.core import Composition

    comps = [Composition(r["formula"]) for r in rows]
    relaxed = [r for r in rows if str(r["relaxed"]) == "True"]
    compounds = [r for r, c in zip(relaxed, comps) if len(c.elements) > 1]

    def per_hour(rs: list[dict], col: str) -> float:
        total = sum(float(r[col]) for r in rs)
        return round(3600.0 * len(rs) / total, 1) if total > 0 else float("nan")

    is_rate, rs_rate = per_hour(relaxed, "is_wall_time_s"), per_hour(relaxed, "relax_wall_time_s")
    return {
        "n_examples": len(rows),
        "per_prototype": dict(sorted(Counter(r["prototype"] for r in rows).items())),
        "per_n_elements": {str(k): v for k, v in sorted(Counter(len(c.elements) for c in comps).items())},
        "per_element": dict(sorted(Counter(el.symbol for c in comps for el in c.elements).items())),
        "n_elements": len({el.symbol for c in comps for el in c.elements}),
        "n_stable": sum(abs(float(r.get("e_above_hull", 1.0))) < 1e-9 for r in rows),
        "n_stable_compounds": sum(abs(float(r.get("e_above_hull", 1.0))) < 1e-9 and len(c.elements) > 1
                                  for r, c in zip(rows, comps)),
        "n_spin_polarized": sum(str(r["spin_polarized"]) == "True" for r in rows),
        "eos_not_bracketed": sorted(r["id"] for r in rows if str(r.get("eos_bracketed")) == "False"),
        "optimizer_not_converged": sorted(r["id"] for r in rows if r.get("relax_kind") == "optimizer"
                                          and str(r.get("relax_converged")) == "False"),
        "per_relax_kind": dict(sorted(Counter(str(r.get("relax_kind", "eos")) for r in rows).items())),
        "per_family": family_summary(rows),
        "is_single_points_per_process_hour": is_rate,
        "relaxations_per_process_hour": rs_rate,
        "relaxation_to_is_cost_ratio": round(is_rate / rs_rate, 2),
        "relaxation_to_is_cost_ratio_compounds": round(per_hour(compounds, "is_wall_time_s")
                                                       / per_hour(compounds, "relax_wall_time_s"), 2),
    }


def assemble(outcomes: list[Outcome], data_dir: Path, settings: DFTSettings) -> dict:
    """Write labels.csv, failures.csv and provenance.json for the finished tasks.

    Formation energy per atom (eV/atom) of the relaxed structure against the lowest-energy
    computed phase of each element; `e_above_hull` (eV/atom) from pymatgen's PhaseDiagram
    over all relaxed entries of the dataset (unrelaxed tasks enter with their IS energy,
    flagged `relaxed=False`). Paths in labels.csv are relative to `data_dir`, whose `calcs/`
    folder is the task cache. Compounds whose elements lack a finished
    reference are listed in failures.csv with that reason.
    """
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    from esnet_tf.screening.hull import e_above_hull_of_entries

    data_dir = Path(data_dir)
    done = [o for o in outcomes if o.result is not None]
    failures = [(o.task_id, o.reason) for o in outcomes if o.status == "failed"]
    # relaxed energy = the lowest energy the relaxation found: normally the single point at the EOS
    # vertex; when a scanned point is lower (a magnetic transition across the scan, an SCF that
    # landed in another state at the vertex) that point is used and `rs_is_lowest` says so
    final_energy = {o.task_id: min([o.result.get("rs_energy", o.result["is_energy"])]
                                   + [pt["energy"] for pt in o.result.get("eos_points", [])]) for o in done}
    mu: dict[str, tuple[float, str]] = {}
    for o in done:
        comp = o.result["composition"]
        if len(comp) == 1:
            el, n = next(iter(comp.items()))
            e = final_energy[o.task_id] / n
            if el not in mu or e < mu[el][0]:
                mu[el] = (e, o.task_id)
    rows, entries = [], []
    for o in done:
        r = o.result
        comp = r["composition"]
        missing = sorted(set(comp) - set(mu))
        if missing:
            failures.append((o.task_id, f"no finished elemental reference for {missing}"))
            continue
        n_atoms = sum(comp.values())
        ef = (final_energy[o.task_id] - sum(n * mu[el][0] for el, n in comp.items())) / n_atoms
        entries.append(PDEntry(Composition(comp), final_energy[o.task_id], name=o.task_id))
        if r["kind"] == "molecule":
            continue
        relaxed = "rs_energy" in r
        rows.append({
            "id": o.task_id, "path": f"calcs/{o.key}/{r['is_dos']}",
            "formation_energy_per_atom": ef, "prototype": r["prototype"], "formula": r["formula"],
            "rs_path": (f"calcs/{o.key}/{r['rs_dos']}" if relaxed else ""), "n_atoms": r["n_atoms"],
            "relaxed": relaxed,
            "rs_is_lowest": (not relaxed) or r["rs_energy"] <= final_energy[o.task_id] + 1e-6,
            "eos_bracketed": eos_bracketed(r),
            "relax_kind": relax_kind(r), "relax_converged": relax_converged(r) if relaxed else "",
            "is_energy_per_atom": r["is_energy"] / n_atoms, "rs_energy_per_atom": final_energy[o.task_id] / n_atoms,
            "is_formation_energy_per_atom": (r["is_energy"] - sum(n * mu[el][0] for el, n in comp.items())) / n_atoms,
            "rs_scale": r.get("rs_scale"), "spin_polarized": r["spin_polarized"],
            "is_wall_time_s": r["is_wall_time"], "relax_wall_time_s": r.get("relax_wall_time", 0.0),
        })
    # the project's one hull (PhaseDiagram / PatchedPhaseDiagram over many chemical systems)
    ehull = dict(zip((e.name for e in entries), e_above_hull_of_entries(entries).tolist()))
    for row in rows:
        row["e_above_hull"] = max(0.0, ehull[row["id"]]) if abs(ehull[row["id"]]) < 1e-9 else ehull[row["id"]]
    rows.sort(key=lambda r: r["id"])
    cols = ["id", "path", "formation_energy_per_atom", "e_above_hull", "prototype", "formula", "rs_path",
            "n_atoms", "is_energy_per_atom", "rs_energy_per_atom", "is_formation_energy_per_atom",
            "rs_scale", "spin_polarized", "is_wall_time_s", "relax_wall_time_s", "relaxed", "rs_is_lowest",
            "eos_bracketed", "relax_kind", "relax_converged"]
    with atomic_path(data_dir / "labels.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(data_dir / "failures.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "reason"])
        w.writerows(sorted(failures))
    import gpaw
    import gpaw_data

    prov = {
        "description": "IS-DOS and energies computed by esnet-tf's GPAW engine (esnet dft)",
        "settings": settings.to_dict(), "code": f"GPAW {gpaw.__version__}",
        "paw_setups": f"gpaw-data {getattr(gpaw_data, '__version__', '?')} ({settings.xc})",
        "elemental_references": {el: {"energy_per_atom": e, "id": tid} for el, (e, tid) in sorted(mu.items())},
        "n_examples": len(rows), "n_failed": len(failures),
        "assembled": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "initial_structure_rule": "closest pair at the sum of Slater atomic radii (see esnet_tf/dft/prototypes.py)",
        "relaxation": {"eos": "isotropic EOS scan (steps of eos_step), parabola vertex, single point there",
                       "optimizer": "isotropic EOS scan as for eos, then ASE BFGS on positions and cell "
                                    "(FrechetCellFilter) "
                                    "from its vertex, GPAW stress plus an isotropic Pulay correction calibrated "
                                    f"against the fixed-cutoff energy, fmax {OPTIMIZER.fmax} eV/A, at most "
                                    f"{OPTIMIZER.steps} steps, k-mesh of the initial cell held; single point at the "
                                    "result",
                       "optimizer_settings": asdict(OPTIMIZER)},
        "computed_utc": _date_range(done),
        "summary": summarize(rows),
    }
    write_text(data_dir / "provenance.json", json.dumps(prov, indent=1))
    return prov
