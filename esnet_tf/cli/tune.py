"""`esnet tune`: flags -> `esnet_tf.tuning.search.TuneConfig` -> `esnet_tf.tuning.search.tune`.

Parsing imports no TensorFlow or KerasTuner.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from esnet_tf.cli.train import fractions_arg
from esnet_tf.tuning.search import TOP, TUNERS, TuneConfig

#: the defaults shown in --help
_D = TuneConfig()


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("KerasTuner search over the ESNet architecture (stem, stages, widths, CBAM on/off, "
                     "head, dropout) and learning rate / loss. Objective: validation MAE (eV/atom). A rerun "
                     "with the same --directory/--project-name continues the search.")
    p.add_argument("--dataset", required=True, help="features .npz (with --labels), a directory with labels.csv "
                   "+ calculation files, or a TFDS dataset name/dir (e.g. is_dos)")
    p.add_argument("--labels", help="labels CSV for .npz features: id, formation_energy_per_atom (eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir (for TFDS datasets)")
    p.add_argument("--split-fractions", type=fractions_arg, help="train,validation,test fractions of chemical systems "
                   "for .npz / labels-directory datasets [default 0.8,0.1,0.1]")
    p.add_argument("--split-seed", type=int, default=_D.split_seed, help="seed of the chemical-system split")
    p.add_argument("--tuner", choices=TUNERS, default=_D.tuner, help="search algorithm")
    p.add_argument("--max-trials", type=int, default=_D.max_trials, help="maximum number of trials "
                   "(model configurations); Hyperband also stops when its brackets are done. Raise it and "
                   "rerun to extend a finished search")
    p.add_argument("--epochs", type=int, default=_D.epochs, help="training epochs per trial "
                   "(Hyperband: the largest budget, max_epochs)")
    p.add_argument("--hyperband-factor", type=int, default=_D.hyperband_factor,
                   help="Hyperband reduction factor (keeps 1/factor of the trials per round)")
    p.add_argument("--batch-size", type=int, default=_D.batch_size, help="examples per batch")
    p.add_argument("--seed", type=int, default=_D.seed, help="random seed (tuner, weights, shuffling)")
    p.add_argument("--search-space", help="search-space JSON file (see docs/tuning.md) [default: the packaged "
                   "tuning/search_space.json]")
    p.add_argument("--directory", default="tuning_runs", help="directory holding the tuning projects")
    p.add_argument("--project-name", default="esnet_tune", help="project (subdirectory of --directory)")
    p.add_argument("--overwrite", action="store_true", help="start a new search in place of the project's: the "
                   "data and settings are checked first, the old project is set aside (put back if the new search "
                   "fails) and removed only once the new one completes; files a user put in the project are kept "
                   "(without it a rerun continues the stored search, and other settings are refused)")
    p.add_argument("--top", type=int, default=TOP, help="rows of the best-trials table")
    p.add_argument("--retrain-epochs", type=int, help="epochs to retrain the best trial with `esnet train` "
                   "(checkpoint on val_loss, the authors' LR schedule / early stopping); 0 keeps the best "
                   "trial's own weights [default: --epochs]")
    p.add_argument("--export-dir", default="saved_models", help="TF Serving model base directory")
    p.add_argument("--export-name", help="model name of the export [default: --project-name]")
    p.add_argument("--export-version", type=int, help="version directory [default: the next free integer]")
    p.add_argument("--no-export", action="store_true", help="do not export a SavedModel")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras progress: 0 silent, 1 bar, 2 one line "
                   "per epoch [default: 1 on a terminal, else 2]")


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    """The `TuneConfig` of the parsed flags."""
    return TuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TuneConfig)})


def run(args: argparse.Namespace) -> int:
    from esnet_tf.tuning.search import tune

    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    summary = tune(config_from_args(args), args.directory, args.project_name, overwrite=args.overwrite,
                   retrain_epochs=args.retrain_epochs, export_dir=None if args.no_export else args.export_dir,
                   export_name=args.export_name, export_version=args.export_version, top=args.top, verbose=verbose)
    if summary.get("role") == "worker":
        return 0
    best = summary["best_trials"][0]
    print(f"best trial {best['trial_id']}: val MAE {best['val_mae_ev_per_atom']:.4g} eV/atom "
          f"({summary['n_trials']} trials) -> {summary['best_model']['path']}")
    return 0
