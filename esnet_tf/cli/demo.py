"""`esnet demo --out DIR`: the whole pipeline on the embedded demo dataset, with no network."""
from __future__ import annotations

import argparse
from pathlib import Path

from esnet_tf.demo import DEMO_OUTPUTS


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the whole ESNet pipeline on the embedded demo dataset (GPAW IS-DOS of cubic prototypes): "
        "build the TFDS dataset, train the model (by default the configuration of the shipped IS-energy model: "
        "IS-DOS + the IS formation energy, relaxation-energy target), evaluate on the test split (MAE in eV/atom, "
        "parity plot), export a TF Serving SavedModel, and screen the test split for stability (precision, recall, "
        "DFT cost saved). Point it at your own calculations with --manual-dir DIR (DIR/labels.csv with id, "
        "path, formation_energy_per_atom in eV/atom, optional e_above_hull, is_wall_time_s, "
        "relax_wall_time_s; paths to vasprun.xml, DOSCAR, MP CompleteDos JSON or *.gpawdos.npz files).")
    p.add_argument("--out", default="demo_out", help="directory for every artefact")
    p.add_argument("--manual-dir", default=None, help="your own data instead of the demo (see above)")
    p.add_argument("--config", default="is_relax", help="model config: is_relax (the shipped IS-energy model's: "
                   "IS-DOS + is_formation_energy_per_atom, relaxation-energy target, element properties; your "
                   "--manual-dir data then needs that column or GPAW calculations of `esnet dft`), small, paper "
                   "(IS-DOS only), or a JSON file")
    p.add_argument("--epochs", type=int, default=40, help="maximum training epochs (early stopping on validation)")
    p.add_argument("--early-stopping-patience", type=int, default=20, help="epochs without validation improvement")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threshold", type=float, default=0.0, help="stability threshold on E_hull, eV/atom")
    p.add_argument("--fresh", action="store_true",
                   help="redo every step instead of reusing what is built: after the other arguments are checked, "
                   "remove the demo's own outputs in --out (" + ", ".join(DEMO_OUTPUTS) + "); other files there "
                   "are left alone")


def run(args: argparse.Namespace) -> int:
    from esnet_tf.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=Path(args.out), manual_dir=Path(args.manual_dir) if args.manual_dir else None,
                        config=args.config, epochs=args.epochs, early_stopping_patience=args.early_stopping_patience,
                        batch_size=args.batch_size, seed=args.seed, threshold=args.threshold, fresh=args.fresh))
    return 0
