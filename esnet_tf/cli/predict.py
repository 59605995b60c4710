"""`esnet predict MODEL INPUT... --out preds.csv`: formation energies (eV/atom) from a saved ESNet."""
from __future__ import annotations

import argparse
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Predict relaxed formation energies (eV/atom) from IS-DOS with a saved ESNet and write "
                     "a CSV: id, formula, predicted_formation_energy_per_atom and, where known, the truths "
                     "formation_energy_per_atom, e_above_hull (eV/atom).")
    p.add_argument("model", metavar="MODEL", help=".keras file, SavedModel dir, or TF Serving model dir "
                   "(highest version used)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DFT files/dirs (vasprun.xml[.gz], DOSCAR, MP JSON, "
                   "*.gpawdos.npz), .npz features of `esnet featurize`, or a dir with labels.csv")
    p.add_argument("--out", default="preds.csv", help="output CSV (energies in eV/atom)")
    p.add_argument("--labels", help="optional labels CSV (id, formation_energy_per_atom, e_above_hull; eV/atom) "
                   "to add the truths")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call")


def run(args: argparse.Namespace) -> int:
    from esnet_tf.predict import predict_files, write_predictions

    arrays, preds, predictor, failures = predict_files(args.model, args.inputs, labels=args.labels,
                                                       batch_size=args.batch_size)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    out = write_predictions(args.out, arrays, preds)
    print(f"{len(preds)} prediction(s) (eV/atom) with {predictor.kind} model {predictor.path} -> {out}; "
          f"{len(failures)} input(s) failed")
    return 1 if failures else 0
