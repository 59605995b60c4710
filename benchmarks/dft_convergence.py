"""Convergence check of the demo DFT settings: formation energies at a higher cutoff and k-density.

    python benchmarks/dft_convergence.py [--workers 1] [--out datasets/is_dos/demo/convergence.json]
    python benchmarks/dft_convergence.py --kpt-density 3.0 --out benchmarks/results/dft_convergence_k3.0.json

Single points at the initial (radii-rule) geometries of five compounds and their elemental
references, at the demo settings and at +100 eV cutoff and k-point density 6.0 / Å^-1; reports the change
of each formation energy (eV/atom). Target: |change| < 0.020 eV/atom.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from esnet_tf.dft.prototypes import DIMER_BONDS, molecule_in_box, prototype_structure
from esnet_tf.dft.runner import run_tasks
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task

COMPOUNDS = {"NaCl": ("rocksalt", ["Na", "Cl"]), "MgO": ("rocksalt", ["Mg", "O"]),
             "GaAs": ("zincblende", ["Ga", "As"]), "NiAl": ("cscl", ["Ni", "Al"]),
             "Cu3Au": ("l12", ["Cu", "Au"])}
REFERENCES = {"Na": "bcc", "Mg": "fcc", "Ga": "fcc", "As": "sc", "Ni": "fcc", "Al": "fcc", "Cu": "fcc", "Au": "fcc"}


def tasks_for(st: DFTSettings) -> list[Task]:
    tasks = [Task(f"{n}", prototype_structure(p, sp), st) for n, (p, sp) in COMPOUNDS.items()]
    tasks += [Task(f"{el}", prototype_structure(p, [el]), st) for el, p in REFERENCES.items()]
    tasks += [Task(f"{g}2", molecule_in_box(g, DIMER_BONDS[g], st.molecule_box), st, kind="molecule")
              for g in ("O", "Cl")]
    return tasks


def formation_energies(outcomes) -> dict[str, float]:
    e = {o.task_id: o.result["is_energy"] / o.result["n_atoms"] for o in outcomes if o.result}
    mu = {el: e[el] for el in REFERENCES} | {"O": e["O2"], "Cl": e["Cl2"]}
    out = {}
    for o in outcomes:
        if o.task_id in COMPOUNDS and o.result:
            comp = o.result["composition"]
            n = sum(comp.values())
            out[o.task_id] = e[o.task_id] - sum(c * mu[el] for el, c in comp.items()) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/esnet_dft_convergence")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "datasets/is_dos/demo/convergence.json"))
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--ecut", type=float, default=DFTSettings.ecut, help="cutoff under test, eV")
    ap.add_argument("--kpt-density", type=float, default=DFTSettings.kpt_density, help="k-density under test, /Å^-1")
    ap.add_argument("--high-ecut", type=float, default=None, help="reference cutoff (default +100 eV of the demo's)")
    ap.add_argument("--high-kpt-density", type=float, default=6.0, help="reference k-density, /Å^-1")
    args = ap.parse_args()
    demo = DFTSettings()
    base = replace(demo, ecut=args.ecut, kpt_density=args.kpt_density)
    high = replace(demo, ecut=args.high_ecut or demo.ecut + 100,
                   kpt_density=args.high_kpt_density)
    res = {}
    for name, st in (("base", base), ("high", high)):
        outs = run_tasks(tasks_for(st), Path(args.cache) / name, workers=args.workers, nice=args.nice)
        failed = [o.task_id for o in outs if o.status == "failed"]
        if failed:
            raise SystemExit(f"failed: {failed}")
        res[name] = {"settings": st.to_dict(), "formation_energy_per_atom": formation_energies(outs)}
    delta = {k: res["high"]["formation_energy_per_atom"][k] - v for k, v in res["base"]["formation_energy_per_atom"].items()}
    res["change_eV_per_atom"] = delta
    res["max_abs_change_eV_per_atom"] = max(abs(v) for v in delta.values())
    res["passes_20meV"] = res["max_abs_change_eV_per_atom"] < 0.020
    Path(args.out).write_text(json.dumps(res, indent=1))
    for k, v in delta.items():
        print(f"{k:6s} base {res['base']['formation_energy_per_atom'][k]:+.4f}  high "
              f"{res['high']['formation_energy_per_atom'][k]:+.4f}  change {v * 1000:+.1f} meV/atom")
    print(f"max |change| = {res['max_abs_change_eV_per_atom'] * 1000:.1f} meV/atom -> {args.out}")


if __name__ == "__main__":
    main()
