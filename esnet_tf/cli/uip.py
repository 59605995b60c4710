"""`esnet uip`: relax structures with a universal interatomic potential (CHGNet; extra `uip`).

    esnet uip relax STRUCTURE... --out uip.csv [--workers 2]    # CIF, POSCAR, pymatgen JSON
    esnet uip relax --demo --out uip_chgnet.csv                   # the demo's 472 initial structures
    esnet uip evaluate [--uip CSV] [--folds 5 --seeds 0 1 2]      # MAE against the demo's DFT E_f
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from esnet_tf.atomic import OVERWRITE_HELP, refuse_existing, refuse_other_tasks
from esnet_tf.errors import UserError


def configure_parser(p: argparse.ArgumentParser) -> None:
    from esnet_tf import uip

    p.description = ("Relax structures with a universal interatomic potential (CHGNet or SevenNet, pretrained "
                     "weights shipped in their wheels; installed by the extra esnet-tf[uip]) and report the relaxed "
                     "energy (eV/atom) and formation energy (eV/atom) against the potential's own elemental "
                     "references, without DFT. Results are cached per structure + model version.")
    sub = p.add_subparsers(dest="uip_command", metavar="ACTION", required=True)
    q = sub.add_parser("relax", help="relax structures; write a CSV (eV/atom, s) and a JSON of settings",
                       description="Relax structures (FIRE on positions and cell) and write OUT (columns id, "
                       "formula, uip_energy_per_atom [eV/atom], uip_formation_energy_per_atom [eV/atom; empty "
                       "where an element has no reference: N, O, F, Cl need fitted references, see --references], "
                       "steps, wall_time_s [s], cpu_time_s [s], converged, stop_reason, model, model_version, error) "
                       "and OUT "
                       "with suffix .json (model, versions, settings, elemental references).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("structures", nargs="*", metavar="FILE", help="CIF, POSCAR, or pymatgen Structure JSON files")
    q.add_argument("--demo", action="store_true", help="the demo's initial structures (the task.json of every "
                   "row of its labels.csv); elemental references from its elemental crystals")
    q.add_argument("--labels", default=None, help="with --demo: another labels.csv made by `esnet dft`")
    q.add_argument("--out", required=True, help="output CSV (written atomically)")
    q.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_HELP.format("the --out CSV and its JSON") + " when it holds the results of other "
                   "structures, settings or --references. A rerun whose structures include every one of the "
                   "existing output (same settings and --references) rewrites it without it (failed relaxations "
                   "are tried again, the rest come from the cache)")
    q.add_argument("--cache", default=None, help="cache directory (one JSON per structure + model + settings; "
                   "default $XDG_CACHE_HOME/esnet-tf/uip or ~/.cache/esnet-tf/uip)")
    q.add_argument("--model", default="chgnet", choices=sorted(uip.MODELS), help="the potential: CHGNet, or "
                   "SevenNet (both in the extra uip)")
    q.add_argument("--model-version", default="", help="weights shipped with the potential (default: its first): "
                   + "; ".join(f"{m}: {', '.join(v)}" for m, (_, v) in sorted(uip.MODELS.items())))
    q.add_argument("--fmax", type=float, default=0.05, help="force (and cell-stress) convergence threshold, eV/Å")
    q.add_argument("--max-steps", type=int, default=500, help="FIRE step limit per structure")
    q.add_argument("--timeout", type=float, default=300.0, help="wall-time limit per structure, s")
    q.add_argument("--workers", type=int, default=1, help="processes, each running torch on one thread")
    q.add_argument("--references", default=None, metavar="JSON",
                   help="chemical potentials in eV/atom ({\"O\": -4.9, ...}, or the JSON this command writes); "
                   "they add to / override the potential's elemental references (without --demo: those of the "
                   "demo's elemental crystals). Fitted N/O/F/Cl values come from esnet_tf.uip.fit_gas_references "
                   "on training rows only")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = sub.add_parser("evaluate", help="MAE (eV/atom) of the potential's formation energies against DFT",
                       description="MAE (eV/atom) of the potential's relaxed formation energies against the DFT "
                       "formation_energy_per_atom of a labels.csv: on the rows whose elements all have crystalline "
                       "references (no fitting), and on all rows with N/O/F/Cl references fitted on the training "
                       "folds of a grouped k-fold (by chemical system) and applied to the test fold.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--uip", default=None, help="a CSV of `esnet uip relax` (default: the demo's uip_chgnet.csv), "
                   "with its JSON beside it")
    q.add_argument("--labels", default=None, help="labels.csv with the DFT formation energies (default: the demo's)")
    q.add_argument("--folds", type=int, default=5, help="grouped folds")
    q.add_argument("--seeds", type=int, nargs="+", default=[0], help="fold seeds (esnet_tf.splits.kfold_of)")
    q.add_argument("--out", default=None, help="also write the metrics as JSON here")


def run(args: argparse.Namespace) -> int:
    from esnet_tf import uip

    if args.uip_command == "evaluate":
        return _evaluate(args)
    if not args.structures and not args.demo:
        raise UserError("give structure files (CIF, POSCAR, pymatgen JSON) or --demo")
    if args.labels and not args.demo:
        raise UserError("--labels goes with --demo (it names the labels.csv whose initial structures are relaxed)")
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out}: give a .csv file name (the settings go beside it as {out.stem}.json)")
    uip.require_uip(args.model)
    config = uip.UIPConfig(model=args.model, model_version=args.model_version, fmax=args.fmax,
                           max_steps=args.max_steps, timeout_s=args.timeout, workers=args.workers)
    extra_mu = uip.read_references(args.references) if args.references else {}
    structures = []
    if args.demo:
        structures += uip.demo_structures(args.labels)
    if args.structures:
        structures += uip.read_inputs(args.structures)
    _check_output(out, structures, config, extra_mu, args.overwrite)
    results = uip.relax_structures(structures, config, cache_dir=args.cache, progress=not args.no_progress)
    refs = uip.elemental_references(results)
    if not args.demo:
        base = uip.demo_references(config, cache_dir=args.cache, progress=not args.no_progress)
        refs = {**base, **{el: v for el, v in refs.items()
                           if el not in base or v["energy_per_atom"] < base[el]["energy_per_atom"]}}
    mu = {el: float(v["energy_per_atom"]) for el, v in refs.items()}
    mu.update(extra_mu)
    uip.write_csv(results, out, mu)
    meta_extra = {"fitted_mu": {el: v for el, v in extra_mu.items() if el not in refs} or None,
                  "source": "demo initial structures (task.json of each labels.csv row)" if args.demo and
                  not args.structures else "structure files" + (" and demo initial structures" if args.demo else "")}
    uip.write_metadata(results, out.with_suffix(".json"), config, refs,
                       {**{k: v for k, v in meta_extra.items() if v}, TASK_LIST: _task_list(results, extra_mu)})
    failed = [r for r in results if r.error]
    n_conv = sum(r.converged for r in results)
    n_cached = sum(r.cached for r in results)
    print(f"esnet uip: {len(results)} structures ({n_cached} from the cache), {n_conv} converged, "
          f"{len(failed)} failed -> {out}")
    if failed:
        print(f"esnet uip: error: {len(failed)} relaxation(s) failed (their rows in {out} have an empty energy and "
              f"an `error`): " + "; ".join(f"{r.id}: {r.error}" for r in failed[:3]), file=sys.stderr)
        return 1
    return 0


#: the key of the JSON beside the CSV that records what the output was made from (checked on a rerun)
TASK_LIST = "task_list"


def _task_list(results: list, given_references: dict[str, float]) -> dict:
    """What an `esnet uip relax` output was made from: [id, cache key] per structure (the key: structure +
    potential + settings, `esnet_tf.uip.cache_key`) and the --references chemical potentials (eV/atom)."""
    return {"structures": [[r.id, r.key] for r in results], "references": dict(sorted(given_references.items()))}


def _check_output(out: Path, structures: list, config, given_references: dict[str, float], overwrite: bool) -> None:
    """Before any relaxation: an existing --out (CSV or its JSON) is rewritten only by a run that contains every
    structure it holds, with the same settings and --references, or with --overwrite; else one line."""
    from esnet_tf import uip

    meta = out.with_suffix(".json")
    if overwrite:
        return
    record = None
    if meta.is_file():
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))[TASK_LIST]
            record = ([(i, k) for i, k in doc["structures"]], doc["references"])
            if not all(isinstance(i, str) and isinstance(k, str) for i, k in record[0]):
                record = None
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
            record = None
    if record is None:  # no record of what it was made from (an older version, or not this command's)
        refuse_existing([out, meta], False)
        return
    replaced = f"{out.name} and {meta.name}"
    if record[1] != dict(sorted(given_references.items())):
        raise UserError(f"{out}: holds results made with other --references ({meta.name}: {record[1] or 'none'}): "
                        f"pass --overwrite to replace {replaced}, or choose another --out")
    version = uip.package_version(config.model)
    refuse_other_tasks(out, record[0], [(i, uip.cache_key(s, config, version)) for i, s in structures], False,
                       replaced)


def _evaluate(args: argparse.Namespace) -> int:
    from pymatgen.core import Composition

    from esnet_tf import uip
    from esnet_tf.atomic import write_text
    from esnet_tf.labels import read_labels
    from esnet_tf.resources import demo_labels

    if args.folds < 2:
        raise UserError(f"--folds {args.folds}: give at least 2")
    table = uip.read_table(args.uip)
    labels = Path(args.labels) if args.labels else demo_labels()
    rows = [r for r in read_labels(labels, path_column=None, required_columns=("formula",)) if r.id in table.energies]
    if not rows:
        raise UserError(f"{labels}: no row shares an id with {args.uip or uip.demo_uip_csv()}")
    dft = {r.id: r.formation_energy_per_atom for r in rows}
    chemsys = {r.id: Composition(r.formula).chemical_system for r in rows}
    table.energies = {i: e for i, e in table.energies.items() if i in dft}
    m = uip.evaluate(table, dft, chemsys, folds=args.folds, seeds=args.seeds)
    c, g = m["crystalline_only"], m["grouped_kfold"]
    print(f"{table.meta.get('model')} {table.meta.get('model_version')} (package {table.meta.get('package_version')}) "
          f"vs DFT formation_energy_per_atom of {labels}")
    print(f"  rows with crystalline references only: n = {c['n']}, MAE = {c['mae']:.4f} eV/atom")
    for s in g["per_seed"]:
        print(f"  all rows, {args.folds}-fold grouped fit of {'/'.join(uip.GAS_ELEMENTS)} (seed {s['seed']}): "
              f"n = {s['n']} ({s['n_missing']} without a prediction), MAE = {s['mae']:.4f} eV/atom; rows with fitted "
              f"elements: n = {s['n_rows_with_fitted_elements']}, MAE = {s['mae_rows_with_fitted_elements']:.4f}")
    if args.out:
        write_text(args.out, json.dumps(_finite(m), indent=1) + "\n")
    return 0


def _finite(x):
    """NaN -> null, so the JSON is standard."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x
