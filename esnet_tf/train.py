"""`esnet train`: fit ESNet on the train split, select the model on the validation split.

Run directory (`--run-dir`):
    config.json        model config, training settings, dataset, normalisation statistics
    history.csv        one row per completed epoch (loss, mae, val_loss, val_mae, learning_rate)
    logs/              TensorBoard logs
    best.keras         the model with the lowest val_loss so far
    warmup_examples.npz  a few real validation examples (used by `esnet export` for warmup)
    summary.json       written when training ends (best epoch, epochs run, sizes, wall time)
    backup/            BackupAndRestore state while training; `--resume` continues from it

With `--strategy mirrored|multi-worker` (esnet_tf.distribute, docs/distributed.md) only the chief
writes this directory; the batch size stays the global batch.

The test split is never read here. Defaults are the authors' (Adam 1.5e-3, batch 64, log-cosh,
ReduceLROnPlateau 0.5 / 15, EarlyStopping 35 on val_loss, up to 300 epochs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from esnet_tf.model import LOSSES, compile_esnet
from esnet_tf.errors import UserError

#: training settings and their defaults (the authors'); every one is a CLI flag
DEFAULTS: dict = {
    "dataset": None, "labels": None, "data_dir": None, "config": "paper", "epochs": 300,
    "batch_size": 64, "learning_rate": 1.5e-3, "loss": "log_cosh", "lr_factor": 0.5,
    "lr_patience": 15, "min_lr": 0.0, "early_stopping_patience": 35, "seed": 0,
    "cache": "memory", "shuffle_buffer": 10_000, "dropout": None, "bn_momentum": None,
    "split_fractions": None, "split_seed": 0, "strategy": "default", "sync_batchnorm": True,
    "precision": "float32",
}
BACKUP = "backup"
STATE_FILE = "callback_state.json"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Train ESNet (IS-DOS -> relaxed formation energy, eV/atom). Model selection on the "
                     "validation split only; defaults are the authors'. Writes a run directory with "
                     "config.json, history.csv, TensorBoard logs/ and best.keras.")
    p.add_argument("--dataset", help="features .npz (with --labels), a directory with labels.csv + calculation "
                   "files, or a TFDS dataset name/dir (e.g. is_dos)")
    p.add_argument("--labels", help="labels CSV for .npz features: id, formation_energy_per_atom (eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir (for TFDS datasets)")
    p.add_argument("--config", help="model config: paper (~9.7 M params), small (CPU), or a JSON file "
                   f"[default {DEFAULTS['config']}]")
    p.add_argument("--epochs", type=int, help=f"maximum epochs [default {DEFAULTS['epochs']}]")
    p.add_argument("--batch-size", type=int, help=f"examples per batch [default {DEFAULTS['batch_size']}]")
    p.add_argument("--learning-rate", type=float, help=f"Adam learning rate [default {DEFAULTS['learning_rate']}]")
    p.add_argument("--loss", choices=LOSSES, help=f"loss on eV/atom [default {DEFAULTS['loss']}]")
    p.add_argument("--lr-factor", type=float, help="ReduceLROnPlateau factor on val_loss "
                   f"[default {DEFAULTS['lr_factor']}]")
    p.add_argument("--lr-patience", type=int, help=f"ReduceLROnPlateau patience, epochs [default {DEFAULTS['lr_patience']}]")
    p.add_argument("--min-lr", type=float, help=f"lower bound of the learning rate [default {DEFAULTS['min_lr']}]")
    p.add_argument("--early-stopping-patience", type=int, help="EarlyStopping patience on val_loss, epochs "
                   f"[default {DEFAULTS['early_stopping_patience']}]")
    p.add_argument("--seed", type=int, help=f"random seed (weights, shuffling) [default {DEFAULTS['seed']}]")
    p.add_argument("--cache", help="tf.data cache: memory, none, or a file prefix [default memory]")
    p.add_argument("--shuffle-buffer", type=int, help=f"shuffle buffer, examples [default {DEFAULTS['shuffle_buffer']}]")
    p.add_argument("--dropout", type=float, help="dropout after the dense head layers (overrides the config)")
    p.add_argument("--bn-momentum", type=float, help="BatchNormalization momentum (overrides the config)")
    p.add_argument("--split-fractions", type=_fractions, help="train,validation,test fractions of chemical "
                   "systems for .npz / labels-directory datasets [default 0.8,0.1,0.1]")
    p.add_argument("--split-seed", type=int, help="seed of the chemical-system split for .npz / labels-directory "
                   "datasets [default 0]")
    p.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"),
                   help="tf.distribute strategy: default (one device), mirrored (all local GPUs, else the CPU), "
                   "multi-worker (MultiWorkerMirroredStrategy from TF_CONFIG; see docs/distributed.md). "
                   "--batch-size stays the global batch (per replica: batch / replicas) [default default]")
    p.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="with several replicas, BatchNormalization uses the statistics of the global batch "
                   "(as one process would) instead of each replica's [default: on]")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16", "mixed"),
                   help="compute precision (variables and loss stay float32): auto = bfloat16 on a CPU with "
                   "native bf16 (AVX512_BF16/AMX), float16 mixed precision on a GPU, else float32; see "
                   "benchmarks/README.md [default float32]")
    p.add_argument("--run-dir", default="runs/esnet", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir from its "
                   "last completed epoch (its stored settings apply unless given again)")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --run-dir holds a run")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras progress: 0 silent, 1 bar, "
                   "2 one line per epoch [default: 1 on a terminal, else 2]")


def _fractions(text: str) -> list[float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated fractions, e.g. 0.8,0.1,0.1")
    return parts


def split_options(settings: dict) -> dict:
    """Keyword arguments of `data.load_split` taken from the settings."""
    return {"labels": settings.get("labels"), "data_dir": settings.get("data_dir"),
            "split_fractions": settings.get("split_fractions"), "split_seed": int(settings.get("split_seed") or 0)}


def resolve_settings(args: argparse.Namespace, stored: dict | None) -> dict:
    """Defaults, then the stored settings of a resumed run, then flags given on the command line."""
    settings = dict(DEFAULTS)
    if stored:
        settings.update({k: v for k, v in stored.items() if k in DEFAULTS})
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if not settings["dataset"]:
        raise UserError("--dataset is required (an .npz with --labels, a labels directory, or a TFDS name)")
    if settings["loss"] not in LOSSES:
        raise UserError(f"unknown loss {settings['loss']!r}; use one of {', '.join(LOSSES)}")
    return settings


def model_config(settings: dict):
    """The ESNetConfig of the settings (named config plus --dropout / --bn-momentum overrides)."""
    from esnet_tf.model import ESNetConfig

    try:
        config = ESNetConfig.named(settings["config"]) if isinstance(settings["config"], str) \
            else ESNetConfig.from_dict(settings["config"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    changes = {k: settings[k] for k in ("dropout", "bn_momentum") if settings.get(k) is not None}
    return config.replace(**changes) if changes else config


def _with_precision(model, precision: str):
    """`model` under the dtype policy of `--precision` (esnet_tf.precision); float32 returns it as is."""
    from esnet_tf.precision import describe, resolve_policy, with_policy

    policy = resolve_policy(precision)
    if policy == "float32":
        return model
    print(describe(policy))
    return with_policy(model, policy)


def _make_callbacks(run_dir: Path, settings: dict, verbose: int, restore_dir: Path | None = None):
    """Keras callbacks writing into `run_dir`; backups are restored from `restore_dir` (default
    `run_dir`; a non-chief worker writes to a temporary dir but restores from the chief's)."""
    import keras

    restore_dir = Path(restore_dir or run_dir)

    class TrainingStateKeeper(keras.callbacks.Callback):
        """Persist the state of EarlyStopping / ReduceLROnPlateau / ModelCheckpoint with each epoch.

        BackupAndRestore restores weights, optimizer and epoch only; this restores the rest, so a
        resumed run stops (and lowers the learning rate) exactly when an uninterrupted one would.
        Must come after those callbacks (their on_train_begin resets what is restored here).
        """

        def __init__(self, path: Path, tracked: dict, restore_path: Path | None = None) -> None:
            super().__init__()
            self.path = path
            self.restore_path = restore_path or path
            self.tracked = tracked  # name -> (callback, attribute names)

        def _snapshot(self) -> dict:
            return {name: {a: _jsonable(getattr(cb, a, None)) for a in attrs} for name, (cb, attrs) in self.tracked.items()}

        def on_train_begin(self, logs=None) -> None:
            start = int(getattr(self.model, "_initial_epoch", 0) or 0)
            if start == 0 or not self.restore_path.is_file():
                return
            saved = json.loads(self.restore_path.read_text())
            state = saved.get(str(start))
            if state is None:  # killed between the two writes: use the closest earlier epoch
                earlier = [int(k) for k in saved if int(k) <= start]
                state = saved[str(max(earlier))] if earlier else None
            for name, values in (state or {}).items():
                cb = self.tracked[name][0]
                for attr, value in values.items():
                    if value is not None:
                        setattr(cb, attr, value)

        def on_epoch_end(self, epoch, logs=None) -> None:
            saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
            saved = {k: v for k, v in saved.items() if int(k) >= epoch}  # keep the previous epoch
            saved[str(epoch + 1)] = self._snapshot()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            os.replace(tmp, self.path)

    checkpoint = keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor="val_loss",
                                                 save_best_only=True, verbose=0)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings["early_stopping_patience"],
                                            verbose=1 if verbose else 0)
    reducer = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=settings["lr_factor"],
                                                patience=settings["lr_patience"], min_lr=settings["min_lr"],
                                                verbose=1 if verbose else 0)
    backup_dir = run_dir / BACKUP
    backup_dir.mkdir(parents=True, exist_ok=True)
    keeper = TrainingStateKeeper(backup_dir / STATE_FILE, {
        "checkpoint": (checkpoint, ("best",)),
        "early_stopping": (stopper, ("wait", "best", "best_epoch", "stopped_epoch")),
        "reduce_lr": (reducer, ("wait", "best", "cooldown_counter")),
    }, restore_dir / BACKUP / STATE_FILE)
    backup = _atomic_backup_class()(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
    backup.restore_dir = str(restore_dir / BACKUP)
    return [
        checkpoint, stopper, reducer,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, profile_batch=0),
        keeper,
        # last: the weights backup of epoch e is written after everything else of epoch e
        backup,
    ]


def _atomic_backup_class():
    """keras.callbacks.BackupAndRestore whose backup survives SIGKILL at any instant.

    Each epoch's weights go to a new file; the metadata naming it (and the epoch) is then
    replaced atomically, so it always points at a complete file. Older files are removed after.
    """
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            backup = Path(self.backup_dir)
            backup.mkdir(parents=True, exist_ok=True)
            name = f"epoch{self._current_epoch:05d}.weights.h5"
            self.model.save_weights(str(backup / name), overwrite=True)
            meta = backup / "training_metadata.json"
            tmp = backup / "training_metadata.json.tmp"
            tmp.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                       "weights": name}))
            os.replace(tmp, meta)
            for old in backup.glob("epoch*.weights.h5"):
                if old.name != name:
                    old.unlink(missing_ok=True)

        def _load_model(self) -> None:
            source = Path(getattr(self, "restore_dir", None) or self.backup_dir)  # the chief's backup
            meta = source / "training_metadata.json"
            if not meta.is_file():
                return
            info = json.loads(meta.read_text())
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(source / info["weights"]))
            self.model._initial_epoch = int(info["epoch"])

    return AtomicBackupAndRestore


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return value  # json writes Infinity, and reads it back
    return value


def _backup_epoch(run_dir: Path) -> int | None:
    meta = run_dir / BACKUP / "training_metadata.json"
    if not meta.is_file():
        return None
    return int(json.loads(meta.read_text())["epoch"])


def _trim_history(path: Path, epochs: int) -> None:
    """Keep the rows of epochs < `epochs` (rows written after the last backup are redone)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(float(r[0])) < epochs]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def write_warmup_examples(ds, path: Path, n: int = 4) -> int:
    """Save up to `n` real examples (inputs + id, formula) for `esnet export` warmup requests."""
    from esnet_tf.data import iterate_numpy

    for batch in iterate_numpy(ds.take(n), n):
        np.savez_compressed(path, dos_up=batch["dos_up"], dos_down=batch["dos_down"],
                            composition=batch["composition"], id=batch["id"], formula=batch["formula"])
        return len(batch["id"])
    return 0


def train(settings: dict, run_dir: str | Path, *, resume: bool = False, verbose: int = 2) -> dict:
    """Train per `settings` (see DEFAULTS) into `run_dir`; returns the summary dict.

    With `resume`, continues the interrupted run stored in `run_dir` from its last completed epoch.
    `settings["strategy"]` picks the tf.distribute strategy (esnet_tf.distribute); under
    multi-worker only the chief writes `run_dir`, the others a temporary dir removed at the end.
    """
    from esnet_tf import distribute

    shared_dir = Path(run_dir)
    strategy = distribute.make_strategy(settings.get("strategy"))  # before any other TF op
    own_dir = distribute.worker_dir(shared_dir, strategy)
    if own_dir != shared_dir:
        print(f"non-chief worker: writing to the temporary {own_dir} (removed at the end); the chief writes {shared_dir}")
    try:
        return _train(settings, own_dir, shared_dir, strategy, resume=resume, verbose=verbose)
    except Exception as exc:
        lost = distribute.lost_worker_message(exc, strategy, shared_dir)
        if lost:
            raise UserError(lost) from exc
        raise
    finally:
        distribute.remove_worker_dir(own_dir, shared_dir)


def _train(settings: dict, run_dir: Path, shared_dir: Path, strategy, *, resume: bool, verbose: int) -> dict:
    """`train` in the directory this process writes (`run_dir`); backups are read from `shared_dir`."""
    import keras

    from esnet_tf import data, distribute
    from esnet_tf.model import OUTPUT_NAME, build_esnet, set_normalization

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    config = model_config(settings)
    keras.utils.set_random_seed(int(settings["seed"]))

    spec = str(settings["dataset"])
    train_ds = data.load_split(spec, "train", **split_options(settings))
    val_ds = data.load_split(spec, "validation", **split_options(settings))
    n_train, stats = data.scan(train_ds, f"{spec} [train]", statistics=True)
    n_val, _ = data.scan(val_ds, f"{spec} [validation]")
    if n_val == 0:
        raise UserError(f"{spec}: the validation split is empty; model selection needs validation data")
    print(f"train: {n_train} examples, validation: {n_val} examples ({spec}); config {config.name}")

    start = _backup_epoch(shared_dir) if resume else None
    if not resume or not (run_dir / "config.json").is_file():
        (run_dir / "config.json").write_text(json.dumps(
            {"model": config.to_dict(), "training": settings, "normalization": stats,
             "data": {"n_train": n_train, "n_validation": n_val}}, indent=2))
    if start is None:
        (run_dir / "history.csv").unlink(missing_ok=True)
    else:
        _trim_history(run_dir / "history.csv", start)
        print(f"resuming from epoch {start} (epochs 0..{start - 1} done)")

    replicas = int(strategy.num_replicas_in_sync)
    with strategy.scope():  # variables (model, optimizer, metrics) mirrored over the replicas
        model = build_esnet(config, normalization=stats)
        model = _with_precision(model, settings.get("precision") or "float32")
        if replicas > 1 and settings.get("sync_batchnorm", True):
            distribute.synchronize_batchnorm(model)
        compile_esnet(model, settings["learning_rate"], settings["loss"])
    seed = int(settings["seed"])
    val_cache = "memory" if settings["cache"] == "memory" else "none"
    workers = distribute.num_workers(strategy)
    per_worker_input = workers > 1 and not (data.is_npz_spec(spec) or data.is_labels_dir(spec))
    distribute.check_batches({"train": n_train, "validation": n_val}, int(settings["batch_size"]), strategy,
                             per_worker_input)
    if per_worker_input:  # TFDS: each worker reads its own sub-split
        opts = split_options(settings)
        pipe_train = distribute.tfds_per_worker(strategy, spec, "train", n_train, settings["batch_size"],
                                                shuffle=True, seed=seed, cache=settings["cache"],
                                                shuffle_buffer=settings["shuffle_buffer"], split_options=opts)
        pipe_val = distribute.tfds_per_worker(strategy, spec, "validation", n_val, settings["batch_size"],
                                              shuffle=False, seed=seed, cache=val_cache, shuffle_buffer=1,
                                              split_options=opts)
    else:
        pipe_train = data.training_pipeline(train_ds, settings["batch_size"], seed=seed, cache=settings["cache"],
                                            shuffle_buffer=settings["shuffle_buffer"])
        pipe_val = data.training_pipeline(val_ds, settings["batch_size"], shuffle=False, cache=val_cache)
        if workers > 1:  # same seeded global batches on every worker; each keeps its slice
            pipe_train, pipe_val = distribute.shard_by_data(pipe_train), distribute.shard_by_data(pipe_val)
    if not (run_dir / "warmup_examples.npz").is_file():
        write_warmup_examples(val_ds, run_dir / "warmup_examples.npz")

    throughput = distribute.throughput_callback(n_train)
    callbacks = [throughput] + _make_callbacks(run_dir, settings, verbose, restore_dir=shared_dir)
    with distribute.fit_scope(model, strategy):
        history = model.fit(pipe_train, validation_data=pipe_val, epochs=int(settings["epochs"]),
                            callbacks=callbacks, verbose=verbose)
    rows = _read_history(run_dir / "history.csv")
    val = [r["val_loss"] for r in rows]
    best = int(np.argmin(val)) if val else None
    summary = {
        "epochs_run": len(rows), "best_epoch": best, "best_val_loss": val[best] if val else None,
        "best_val_mae_ev_per_atom": rows[best].get("val_mae") if val else None,
        "stopped_early": bool(rows) and len(rows) < int(settings["epochs"]),
        "n_train": n_train, "n_validation": n_val, "config": config.name,
        "params": int(model.count_params()), "wall_time_s_this_session": time.time() - t0,
        "best_model": str(shared_dir / "best.keras"), "history_keys": sorted(history.history),
        "strategy": settings.get("strategy") or "default", "replicas": replicas, "workers": workers,
        "chief": distribute.is_chief(strategy), "train_samples_per_s": throughput.samples_per_s(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _raise_interrupt(signum, frame):  # SIGTERM -> KeyboardInterrupt: the CLI exits 130, backup kept
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from esnet_tf.distribute import env_is_chief

    run_dir = Path(args.run_dir)
    stored = None
    if not env_is_chief(args.strategy):  # a non-chief worker never writes or clears the (shared) run dir
        if args.resume and (run_dir / "config.json").is_file():
            stored = json.loads((run_dir / "config.json").read_text()).get("training")
            if (run_dir / "summary.json").is_file() and _backup_epoch(run_dir) is None:
                print(f"{run_dir}: this run already finished (summary.json); nothing to resume")
                return 0
    elif (run_dir / "config.json").is_file():
        if args.resume:
            stored = json.loads((run_dir / "config.json").read_text()).get("training")
            if (run_dir / "summary.json").is_file() and _backup_epoch(run_dir) is None:
                print(f"{run_dir}: this run already finished (summary.json); nothing to resume")
                return 0
        elif not args.overwrite:
            raise UserError(f"{run_dir} already holds a run; use --resume to continue it, --overwrite "
                              "to start afresh, or another --run-dir")
        else:
            import shutil

            for name in ("backup", "logs", "history.csv", "best.keras", "summary.json", "warmup_examples.npz"):
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    settings = resolve_settings(args, stored)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    summary = train(settings, run_dir, resume=args.resume, verbose=verbose)
    if not summary.get("chief", True):
        print(f"done (non-chief worker; the chief wrote {run_dir})")
        return 0
    print(f"done: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
          f"(val_loss {summary['best_val_loss']:.4g}, val MAE {summary['best_val_mae_ev_per_atom']:.4g} eV/atom) "
          f"-> {summary['best_model']}")
    return 0
