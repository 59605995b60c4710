"""`esnet evaluate`: metrics (eV/atom) and parity plot of a saved model on one split (flags -> `evaluate`)."""
from __future__ import annotations

import argparse
from typing import Any

from esnet_tf.atomic import OVERWRITE_HELP, refuse_existing
from esnet_tf.cli.train import fractions_arg
from esnet_tf.trust import TRUST_FLAG, TRUST_HELP

#: the files `esnet evaluate` writes in --out (nothing else there is touched)
OUTPUTS = ("metrics.json", "predictions.csv", "parity.png")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `esnet evaluate` (energies in eV/atom)."""
    p.add_argument("--model", required=True, help=".keras file or SavedModel dir")
    p.add_argument("--dataset", required=True,
                   help="features .npz (with --labels), dir with labels.csv, or TFDS name/dir")
    p.add_argument("--labels", help="labels CSV for .npz features (id, formation_energy_per_atom in eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--split", default="test", help="train, validation, test or all")
    p.add_argument("--split-fractions", type=fractions_arg,
                   help="train,validation,test fractions of chemical systems for .npz / labels-dir datasets "
                   "(as given to `esnet train`)")
    p.add_argument("--split-seed", type=int, default=0, help="chemical-system split seed (as given to `esnet train`)")
    p.add_argument("--threshold", type=float, default=0.0, help="stable means formation energy < threshold (eV/atom)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call")
    p.add_argument("--out", default="eval", help="output directory (metrics.json, predictions.csv, parity.png)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(", ".join(OUTPUTS)))
    p.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)


def run(args: argparse.Namespace) -> int:
    """`esnet evaluate`: write metrics.json, predictions.csv and parity.png to --out."""
    from pathlib import Path

    from esnet_tf.evaluate import evaluate

    refuse_existing([Path(args.out) / name for name in OUTPUTS], args.overwrite)
    m = evaluate(args.model, args.dataset, args.split, args.out, threshold=args.threshold,
                 batch_size=args.batch_size, labels=args.labels, data_dir=args.data_dir,
                 split_fractions=args.split_fractions, split_seed=args.split_seed,
                 trust_model_code=args.trust_model_code)

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"{args.split}: n={m['n']}  MAE={fmt(m['mae'])}  RMSE={fmt(m['rmse'])} eV/atom  R2={fmt(m['r2'])}  "
          f"precision={fmt(m['precision'])} recall={fmt(m['recall'])} F1={fmt(m['f1'])} "
          f"(stable: E_f < {args.threshold} eV/atom) -> {args.out}/metrics.json, parity.png")
    return 0
