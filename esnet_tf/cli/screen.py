"""`esnet screen`: stability screening and DFT-cost analysis (flags -> `ScreenConfig` -> `esnet_tf.screening`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from esnet_tf.atomic import OVERWRITE_HELP, refuse_existing
from esnet_tf.errors import UserError
from esnet_tf.screening import (MODES, PRED_COL, STD_COL, ScreenConfig, candidates_from_rows, costs_from_labels,
                                load_references, merge_truths, read_csv_rows, screen, write_outputs)


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
                        help="take formation_energy_per_atom / e_above_hull (eV/atom) by id from this labels.csv")
    parser.add_argument("--costs", metavar="CSV",
                        help="DFT wall times by id: a labels.csv with is_wall_time_s, relax_wall_time_s (s); "
                        "default: the predictions' own columns, else unit cost per relaxation")
    parser.add_argument("--mode", choices=MODES, default="ehull",
                        help="ehull: stable if predicted E_hull <= threshold; formation-energy: stable if "
                        "predicted formation energy < threshold")
    parser.add_argument("--threshold", type=float, default=0.0, metavar="EV",
                        help="stability threshold (eV/atom)")
    parser.add_argument("--margin", type=float, default=0.0, metavar="EV",
                        help="relax candidates whose score <= threshold + margin (eV/atom)")
    parser.add_argument("--uncertainty-weight", type=float, default=0.0, metavar="K",
                        help=f"score = prediction - K x {STD_COL} (eV/atom column in the predictions)")
    parser.add_argument("--rank-by", choices=("mean", "lower"), default="mean",
                        help="rank (and decide) by the prediction, or by the calibrated 90 %% interval's lower bound "
                        "(column predicted_formation_energy_per_atom_lower of a calibrated ensemble's `esnet predict`)")
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
    parser.add_argument("--overwrite", action="store_true",
                        help=OVERWRITE_HELP.format("candidates.csv, metrics.json and the PNGs in --out"))


def config_from_args(args: argparse.Namespace) -> ScreenConfig:
    """The flags as a `ScreenConfig`."""
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    return ScreenConfig(mode=args.mode, threshold=args.threshold, margin=args.margin,
                        uncertainty_weight=args.uncertainty_weight, candidates_in_hull=args.candidates_in_hull,
                        keep_overlapping_references=args.keep_overlapping_references,
                        target_recall=args.target_recall, rank_by=args.rank_by)


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    """`esnet screen`: write candidates.csv, metrics.json and plots to --out."""
    from pathlib import Path

    from esnet_tf.screening.io import OUTPUT_FILES

    config = config_from_args(args)
    refuse_existing([Path(args.out) / name for name in OUTPUT_FILES], args.overwrite)
    if args.elemental_references and not args.references:
        raise UserError("--elemental-references needs --references")
    rows = read_csv_rows(args.predictions, ("id", PRED_COL))
    if args.truths:
        rows = merge_truths(rows, args.truths)
    refs = load_references(args.references, args.elemental_references) if args.references else None
    costs = costs_from_labels(args.costs) if args.costs else None
    candidates = candidates_from_rows(rows, with_std=bool(config.uncertainty_weight), source=args.predictions)
    res = screen(candidates, refs, config, costs=costs, progress=True)
    statuses = res.table["status"]
    bad = [i for i, s in enumerate(statuses) if s != "ok"]
    if bad and args.strict:
        i = bad[0]
        raise UserError(f"{args.predictions}: {len(bad)} candidate(s) not screened, e.g. {str(res.table['id'][i])!r}: "
                        f"{statuses[i]} ({res.table['reason'][i]})")
    files = write_outputs(res, args.out)
    m = res.metrics
    if bad:
        counts = {k: v for k, v in m["status_counts"].items() if k != "ok"}
        i = bad[0]
        print(f"warning: {len(bad)} of {len(statuses)} candidates not ok {counts}: "
              f"{m['n_missing_prediction']} with a truth but no usable prediction count as predicted unstable, "
              f"{len(statuses) - m['n_candidates']} without a truth are not in the metrics; e.g. "
              f"{str(res.table['id'][i])!r}: {res.table['reason'][i]}; see status/reason in {files[0]}",
              file=sys.stderr)
    print(f"{m['n_candidates']} candidates ({m['mode']}): precision {_f(m['precision'])}, recall "
          f"{_f(m['recall'])}, F1 {_f(m['f1'])}, accuracy {_f(m['accuracy'])}, DAF {_f(m['daf'])}, "
          f"MAE {_f(m.get('mae'))} eV/atom")
    nd = m.get("needs_dft")
    if nd is not None:
        w, wo = nd["with_flag"], nd["without_flag"]
        print(f"needs DFT: {nd['n_flagged']} candidate(s) flagged outside the model's domain, "
              f"{nd['n_flagged_predicted_stable']} of the {nd['n_predicted_stable']} predicted stable (column "
              f"needs_dft); flagged not counted as stable: precision {_f(w['precision'])}, recall {_f(w['recall'])}; "
              f"counted: precision {_f(wo['precision'])}, recall {_f(wo['recall'])}")
    if "cost" in m:
        pt, tr = m["cost"]["at_model_threshold"], m["cost"]["at_target_recall"]
        print(f"cost ({m['cost']['source']}): at the threshold {pt['n_relaxed']} relaxed, recall "
              f"{_f(pt['recall'])}, cost reduction {pt['cost_reduction']:.1%}")
        if tr is not None:
            print(f"at recall >= {tr['target_recall']:.0%}: {tr['n_relaxed']} relaxed, cost reduction "
                  f"{tr['cost_reduction']:.1%}")
    print("wrote " + ", ".join(str(p) for p in files))
    return 0
