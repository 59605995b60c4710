"""`esnet export --model M.keras --out DIR --name NAME --version N` -> TF Serving `DIR/NAME/N/`.

`--members A.keras B.keras ...` instead of `--model` exports their deep ensemble (mean and std).
"""
from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Export a trained .keras ESNet as a TF Serving SavedModel DIR/NAME/VERSION/ (signature "
                     "serving_default: dos_up, dos_down (None, n_points, 9) states/eV/atom, composition (None, 118) "
                     "-> formation_energy_per_atom (None, 1) eV/atom), with warmup requests from real IS-DOS; "
                     "the SavedModel is reloaded and checked against the .keras model before it is moved into place.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="trained .keras model (e.g. runs/<run>/best.keras)")
    what.add_argument("--members", nargs="+", metavar="M.keras", help="two or more trained .keras members: export "
                      "their deep ensemble (outputs formation_energy_per_atom = mean and formation_energy_per_atom_std "
                      "= sample std over the members, eV/atom), also saved as DIR/NAME/model.keras")
    p.add_argument("--std-scale", type=float, default=1.0, help="ensemble only: factor on the members' std "
                   "(recalibration, e.g. fitted on validation data; 1 = raw)")
    p.add_argument("--out", default="saved_models", help="TF Serving model base directory")
    p.add_argument("--name", default="esnet", help="model name (directory and REST path /v1/models/<name>)")
    p.add_argument("--version", type=int, default=1, help="model version (integer directory)")
    p.add_argument("--warmup-data", help="real examples for the warmup file: features .npz, a labels directory or "
                   "DFT files (comma-separated); default: warmup_examples.npz beside the model, else the "
                   "embedded demo data")
    p.add_argument("--n-warmup", type=int, default=4, help="number of warmup requests (0 = no warmup file)")
    p.add_argument("--no-warmup", action="store_true", help="write no warmup file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR/NAME/VERSION (only after the "
                   "new one loaded and answered)")


def run(args: argparse.Namespace) -> int:
    from esnet_tf.errors import UserError
    from esnet_tf.export import SIGNATURE, export, export_ensemble
    from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME

    if args.n_warmup < 0:
        raise UserError(f"--n-warmup must be >= 0, got {args.n_warmup}")
    n_warmup = 0 if args.no_warmup else args.n_warmup
    if args.members:
        if not args.std_scale > 0:
            raise UserError(f"--std-scale must be > 0, got {args.std_scale}")
        result = export_ensemble(args.members, args.out, args.name, args.version, std_scale=args.std_scale,
                                 warmup_data=args.warmup_data, n_warmup=n_warmup, overwrite=args.overwrite)
        args.model = result["keras"]
    else:
        result = export(args.model, args.out, args.name, args.version, warmup_data=args.warmup_data,
                        n_warmup=n_warmup, overwrite=args.overwrite)
    check = (f"; {result['n_warmup']} warmup request(s) from {result['warmup_source']}" if result["n_warmup"]
             else "; no warmup file")
    print(f"exported {args.model} -> {result['path']} (signature {SIGNATURE}: {', '.join(result.get('inputs', INPUT_NAMES))} -> "
          f"{', '.join(result.get('outputs', [OUTPUT_NAME]))}){check}; SavedModel vs .keras max |diff| "
          f"{result['max_abs_diff']:.2g} eV/atom")
    if result["note"]:
        print(f"note: {result['note']}")
    return 0
