"""`esnet train`: flags -> `esnet_tf.train.TrainConfig` -> `esnet_tf.train.train`.

On `--resume` the run's stored settings apply unless a flag gives them again; the run rules
(lock, refusal of an existing run, identity of a resumed run, a safe `--overwrite`) are
`esnet_tf.train.train`'s. Parsing imports no TensorFlow.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from esnet_tf.errors import UserError
from esnet_tf.train import TrainConfig, parse_split_fractions

#: the defaults shown in --help
_D = TrainConfig()


def fractions_arg(text: str) -> tuple[float, float, float]:
    """argparse type of --split-fractions: 'train,validation,test' fractions summing to 1."""
    try:
        return parse_split_fractions(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_parser(p: argparse.ArgumentParser) -> None:
    from esnet_tf.distribute import STRATEGIES
    from esnet_tf.model import LOSSES
    from esnet_tf.precision import PRECISIONS

    p.description = ("Train ESNet (IS-DOS -> relaxed formation energy, eV/atom). Model selection on the "
                     "validation split only; defaults are the authors'. Writes a run directory with "
                     "config.json, history.csv, TensorBoard logs/ and best.keras.")
    p.add_argument("--dataset", help="features .npz (with --labels), a directory with labels.csv + calculation "
                   "files, or a TFDS dataset name/dir (e.g. is_dos)")
    p.add_argument("--labels", help="labels CSV for .npz features: id, formation_energy_per_atom (eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir (for TFDS datasets)")
    p.add_argument("--config", help="model config: paper (~9.7 M params), small (CPU), or a JSON file "
                   f"[default {_D.config}]")
    p.add_argument("--epochs", type=int, help=f"maximum epochs [default {_D.epochs}]")
    p.add_argument("--batch-size", type=int, help=f"examples per batch [default {_D.batch_size}]")
    p.add_argument("--learning-rate", type=float, help=f"Adam learning rate [default {_D.learning_rate}]")
    p.add_argument("--loss", choices=LOSSES, help=f"loss on eV/atom [default {_D.loss}]")
    p.add_argument("--lr-factor", type=float, help="ReduceLROnPlateau factor on val_loss "
                   f"[default {_D.lr_factor}]")
    p.add_argument("--lr-patience", type=int, help=f"ReduceLROnPlateau patience, epochs [default {_D.lr_patience}]")
    p.add_argument("--min-lr", type=float, help=f"lower bound of the learning rate [default {_D.min_lr}]")
    p.add_argument("--early-stopping-patience", type=int, help="EarlyStopping patience on val_loss, epochs "
                   f"[default {_D.early_stopping_patience}]")
    p.add_argument("--seed", type=int, help=f"random seed (weights, shuffling) [default {_D.seed}]")
    p.add_argument("--cache", help="tf.data cache: memory, none, or a file prefix [default memory]")
    p.add_argument("--shuffle-buffer", type=int, help=f"shuffle buffer, examples [default {_D.shuffle_buffer}]")
    p.add_argument("--dropout", type=float, help="dropout after the dense head layers (overrides the config)")
    p.add_argument("--bn-momentum", type=float, help="BatchNormalization momentum (overrides the config)")
    p.add_argument("--split-fractions", type=fractions_arg, help="train,validation,test fractions of chemical "
                   "systems for .npz / labels-directory datasets [default 0.8,0.1,0.1]")
    p.add_argument("--split-seed", type=int, help="seed of the chemical-system split for .npz / labels-directory "
                   "datasets [default 0]")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy: default (one device), mirrored (all local GPUs, else the CPU), "
                   "multi-worker (MultiWorkerMirroredStrategy from TF_CONFIG; see docs/distributed.md). "
                   "--batch-size stays the global batch (per replica: batch / replicas) [default default]")
    p.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="with several replicas, BatchNormalization uses the statistics of the global batch "
                   "(as one process would) instead of each replica's [default: on]")
    p.add_argument("--backups", action=argparse.BooleanOptionalAction, default=None,
                   help="write a backup every epoch (for --resume) and best.keras at each improvement; "
                   "--no-backups keeps the best weights in memory and writes best.keras once at the end "
                   "(faster for short runs; a killed run starts over) [default: on]")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="compute precision (variables and loss stay float32): auto = measured once per CPU model "
                   "(cached) among float32, float32 with XLA and, on a CPU with native bf16 (AVX512_BF16/AMX), "
                   "bfloat16; float32 unless another is faster by 3 %%; float16 mixed precision on a GPU; see "
                   "docs/performance.md [default float32]")
    p.add_argument("--run-dir", default="runs/esnet", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir from its "
                   "last completed epoch (its stored settings apply unless given again)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir: the new "
                   "run is checked and trained beside it and replaces the old run's outputs only once complete "
                   "(other files in --run-dir stay)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras progress: 0 silent, 1 bar, "
                   "2 one line per epoch [default: 1 on a terminal, else 2]")


def config_from_args(args: argparse.Namespace, stored: dict | None = None) -> TrainConfig:
    """The `TrainConfig` of the flags: defaults, then a resumed run's stored settings (`stored`),
    then every flag given on the command line (argparse leaves the others at None)."""
    base = TrainConfig.from_dict(stored) if stored else TrainConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    config = dataclasses.replace(base, **given)
    if not config.dataset:
        raise UserError("--dataset is required (an .npz with --labels, a labels directory, or a TFDS name)")
    return config


def _raise_interrupt(signum, frame):  # SIGTERM -> KeyboardInterrupt: the CLI exits 130, backup kept
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from esnet_tf.train import stored_settings, train

    run_dir = Path(args.run_dir)
    stored = stored_settings(run_dir) if args.resume else None  # flags not given again keep the run's settings
    config = config_from_args(args, stored)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    summary = train(config, run_dir, resume=args.resume, overwrite=args.overwrite, verbose=verbose)
    if summary.get("already_finished"):
        return 0
    if not summary.get("chief", True):
        print(f"done (non-chief worker; the chief wrote {run_dir})")
        return 0
    print(f"done: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
          f"(val_loss {summary['best_val_loss']:.4g}, val MAE {summary['best_val_mae_ev_per_atom']:.4g} eV/atom) "
          f"-> {summary['best_model']}")
    return 0
