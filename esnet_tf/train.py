"""Training: fit ESNet on the train split, select the model on the validation split.

    from esnet_tf.train import TrainConfig, train
    config = TrainConfig(dataset="features.npz", labels="labels.csv", config="small", epochs=50)
    summary = train(config, "runs/esnet")          # eV/atom throughout

    # or examples given directly (dicts of numpy arrays, or unbatched tf.data.Datasets of example dicts)
    summary = train(TrainConfig(config="small", epochs=50), "runs/arrays",
                    train_data={"dos_up": up, "dos_down": down, "composition": comp,
                                "formation_energy_per_atom": y},
                    validation_data={...same keys...})

`TrainConfig` is the one place for training settings (defaults: the authors', Adam 1.5e-3,
batch 64, log-cosh, ReduceLROnPlateau 0.5 / 15, EarlyStopping 35 on val_loss, up to 300 epochs).
The `esnet train` command (`esnet_tf.cli.train`) turns its flags into one; the run rules (lock,
no overwrite unless asked, identity of a resumed run) live in `train` itself.

Run directory:
    config.json        model config, training settings ("training": `TrainConfig.to_dict()`),
                       dataset, normalisation statistics
    history.csv        one row per completed epoch (loss, mae, val_loss, val_mae, learning_rate)
    logs/              TensorBoard logs
    best.keras         the model with the lowest val_loss so far
    warmup_examples.npz  a few real validation examples (used by `esnet export` for warmup)
    summary.json       written when training ends (best epoch, epochs run, sizes, wall time)
    backup/            the backup while training (SIGKILL-safe, `esnet_tf.compat`); `resume=True`
                       continues from it, with the callbacks' state (early stopping, LR schedule)

With `strategy="mirrored"|"multi-worker"` (esnet_tf.distribute, docs/distributed.md) only the chief
writes this directory; the batch size stays the global batch. The test split is never read here.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from esnet_tf.data import DataConfig, check_split_fractions, parse_split_fractions  # noqa: F401  (re-exported)
from esnet_tf.distribute import STRATEGIES
from esnet_tf.errors import UserError
from esnet_tf.isdos import INPUT_NAMES
from esnet_tf.model import LOSSES, compile_esnet
from esnet_tf.precision import PRECISIONS

BACKUP = "backup"
STATE_FILE = "callback_state.json"
#: what a previous run leaves in a run directory besides config.json (removed by `clear_run`)
#: ModelCheckpoint writes here; `PromoteBest` renames it onto best.keras once complete
BEST_STAGING = ".best.staged.keras"
RUN_OUTPUTS = (BACKUP, "logs", "history.csv", "best.keras", BEST_STAGING, "summary.json", "warmup_examples.npz",
               "precision_train.json")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig(DataConfig):
    """Training settings of one `train` run (every field is an `esnet train` flag of the same name).

    The data fields (dataset, labels, data_dir, split_fractions, split_seed) come from
    `esnet_tf.data.DataConfig`. Energies in eV/atom; epochs and patiences in epochs; batch sizes
    and buffers in examples. Invalid values raise `UserError` naming the field, its flag and the fix.
    """

    config: str | dict = "paper"    #: ESNet config: 'paper', 'small', a JSON file, or an ESNetConfig dict
    epochs: int = 300               #: maximum epochs
    batch_size: int = 64            #: examples per (global) batch
    learning_rate: float = 1.5e-3   #: Adam learning rate
    loss: str = "log_cosh"          #: loss on eV/atom, one of model.LOSSES
    lr_factor: float = 0.5          #: ReduceLROnPlateau factor on val_loss, in (0, 1)
    lr_patience: int = 15           #: ReduceLROnPlateau patience, epochs
    min_lr: float = 0.0             #: lower bound of the learning rate
    early_stopping_patience: int = 35  #: EarlyStopping patience on val_loss, epochs
    seed: int = 0                   #: random seed (weights, shuffling)
    cache: str = "memory"           #: tf.data cache: 'memory', 'none', or a file prefix
    shuffle_buffer: int = 10_000    #: shuffle buffer, examples
    dropout: float | None = None    #: dropout after the dense head layers (None: the config's)
    bn_momentum: float | None = None  #: BatchNormalization momentum (None: the config's)
    strategy: str = "default"       #: tf.distribute strategy: default, mirrored, multi-worker
    sync_batchnorm: bool = True     #: with several replicas, BatchNorm on global-batch statistics
    precision: str = "float32"      #: compute precision: auto, float32, bfloat16, mixed
    backups: bool = True            #: per-epoch backup (for --resume) and best.keras at each improvement;
    #: False keeps the best weights in memory and writes best.keras once at the end (a killed run
    #: starts over; ~14 % faster for short runs such as the units of benchmarks/accuracy.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.config, os.PathLike):
            object.__setattr__(self, "config", os.fspath(self.config))
        self.validate()

    def validate(self) -> None:
        """Raise `UserError` (naming the field, its flag and the fix) for an invalid value."""
        def bad(name: str, rule: str) -> UserError:
            return UserError(f"{_flag(name)} {rule}, got {getattr(self, name)!r} (training setting {name!r})")

        for name in ("epochs", "batch_size", "shuffle_buffer"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("lr_patience", "early_stopping_patience", "seed", "split_seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "must be an integer >= 0")
        if not _is_number(self.learning_rate) or not self.learning_rate > 0:
            raise bad("learning_rate", "must be a number > 0")
        if not _is_number(self.lr_factor) or not 0 < self.lr_factor < 1:
            raise bad("lr_factor", "must be in (0, 1) (the learning rate is multiplied by it)")
        if not _is_number(self.min_lr) or not self.min_lr >= 0:
            raise bad("min_lr", "must be a number >= 0")
        if self.dropout is not None and (not _is_number(self.dropout) or not 0 <= self.dropout < 1):
            raise bad("dropout", "must be in [0, 1)")
        if self.bn_momentum is not None and (not _is_number(self.bn_momentum) or not 0 <= self.bn_momentum < 1):
            raise bad("bn_momentum", "must be in [0, 1)")
        if self.loss not in LOSSES:
            raise bad("loss", f"must be one of {', '.join(LOSSES)}")
        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if not isinstance(self.sync_batchnorm, bool):
            raise bad("sync_batchnorm", "must be true or false (--sync-batchnorm / --no-sync-batchnorm)")
        if not isinstance(self.backups, bool):
            raise bad("backups", "must be true or false (--backups / --no-backups)")
        if not isinstance(self.cache, str) or not self.cache:
            raise bad("cache", "must be 'memory', 'none' or a file prefix")
        if not (isinstance(self.config, dict) or (isinstance(self.config, str) and self.config)):
            raise bad("config", "must be paper, small, a JSON file of ESNetConfig fields, or such a dict")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready settings: the "training" entry of a run's config.json."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.split_fractions is not None:
            d["split_fractions"] = list(self.split_fractions)
        if isinstance(self.config, dict):
            d["config"] = dict(self.config)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Settings of `to_dict` (or a run's stored "training" entry). Unknown keys are ignored and
        None stands for the default, as in the runs written before this class existed."""
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in d.items() if k in known and not (v is None and getattr(defaults, k) is not None)}
        return cls(**given)

    def esnet_config(self):
        """The `ESNetConfig` of `config`, with the `dropout` / `bn_momentum` overrides applied."""
        from esnet_tf.model import ESNetConfig

        try:
            config = ESNetConfig.named(self.config) if isinstance(self.config, str) \
                else ESNetConfig.from_dict(self.config)
            changes = {k: getattr(self, k) for k in ("dropout", "bn_momentum") if getattr(self, k) is not None}
            return config.replace(**changes) if changes else config
        except (ValueError, TypeError) as exc:
            raise UserError(f"--config {self.config if isinstance(self.config, str) else '<dict>'}: {exc}") from None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)




# ---------------------------------------------------------------- run directory

#: settings that define the model and its data: a resumed run must keep them (its backup would not fit)
IDENTITY_FIELDS = ("dataset", "labels", "data_dir", "config", "dropout", "bn_momentum", "split_fractions",
                   "split_seed")
#: the hidden directory beside RUN_DIR where `overwrite=True` writes the new run until it is complete
OVERWRITE_STAGING = ".{name}.overwrite"
#: marks a staging directory as written by `train` (only such a directory is ever removed)
STAGING_MARK = ".esnet-train-staging"


def stored_settings(run_dir: str | Path) -> dict | None:
    """The "training" entry of `run_dir`/config.json (None without one)."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()).get("training") if path.is_file() else None


def stored_config(run_dir: str | Path) -> TrainConfig | None:
    """The `TrainConfig` a run in `run_dir` was started with (None without one): resume with it."""
    stored = stored_settings(run_dir)
    return TrainConfig.from_dict(stored) if stored else None


def backup_epoch(run_dir: str | Path) -> int | None:
    """Epochs completed according to the backup in `run_dir` (None without a backup)."""
    meta = Path(run_dir) / BACKUP / "training_metadata.json"
    if not meta.is_file():
        return None
    return int(json.loads(meta.read_text())["epoch"])


def run_finished(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a finished run (summary.json and no backup left)."""
    return (Path(run_dir) / "summary.json").is_file() and backup_epoch(run_dir) is None


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run (finished or not): its config.json."""
    return (Path(run_dir) / "config.json").is_file()


def clear_run(run_dir: str | Path) -> None:
    """Remove the outputs of a previous run from `run_dir` (`RUN_OUTPUTS` and config.json only)."""
    for name in (*RUN_OUTPUTS, "config.json"):
        target = Path(run_dir) / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink(missing_ok=True)


def check_same_run(config: TrainConfig, run_dir: str | Path, fingerprint: str | None = None) -> None:
    """Refuse to resume the run in `run_dir` with settings (`IDENTITY_FIELDS`) or data (`fingerprint`,
    of `esnet_tf.data.train_and_validation`) other than its own: one-line `UserError`."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    if stored.get("training"):
        old = TrainConfig.from_dict(stored["training"])
        for name in IDENTITY_FIELDS:
            if getattr(config, name) != getattr(old, name):
                flag = _flag(name)
                raise UserError(f"{run_dir}: this run was trained with {flag} {getattr(old, name)!r}, not "
                                f"{getattr(config, name)!r}; resume it without {flag} (or with its stored value), "
                                "or start a new run (another run directory, or overwrite)")
    was = (stored.get("data") or {}).get("fingerprint")
    if fingerprint is not None and was is not None and was != fingerprint:
        raise UserError(f"{run_dir}: the train/validation examples differ from the ones this run was trained on "
                        f"(fingerprint {fingerprint[:12]}, stored {was[:12]}); resume it with the same data, or "
                        "start a new run (another run directory, or overwrite)")


def _staging_dir(run_dir: Path) -> Path:
    return run_dir.parent / OVERWRITE_STAGING.format(name=run_dir.name)


def _fresh_staging(run_dir: Path) -> Path:
    """An empty staging directory for `overwrite` (a stale one of a killed overwrite is removed,
    but only if it carries `STAGING_MARK`)."""
    staging = _staging_dir(run_dir)
    if staging.exists():
        if not (staging / STAGING_MARK).is_file() or staging.is_symlink():
            raise UserError(f"{staging}: exists and was not written by esnet train; move it away to overwrite "
                            f"{run_dir}")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / STAGING_MARK).write_text(f"new run for {run_dir.name}, written by pid {os.getpid()}\n")
    return staging


def _replace_run(staging: Path, run_dir: Path) -> None:
    """Move the complete new run in `staging` into `run_dir`: the old run's own outputs
    (`RUN_OUTPUTS`, config.json) are moved aside first and removed after; any other file in
    `run_dir` (not written by `train`) stays."""
    (staging / STAGING_MARK).unlink()
    old = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".replaced", dir=run_dir.parent))
    for name in (*RUN_OUTPUTS, "config.json"):
        if (run_dir / name).exists() or (run_dir / name).is_symlink():
            os.replace(run_dir / name, old / name)
    for entry in sorted(staging.iterdir()):
        os.replace(entry, run_dir / entry.name)
    staging.rmdir()
    shutil.rmtree(old, ignore_errors=True)


def _report_interrupted_replacement(run_dir: Path) -> list[Path]:
    """Name (on stderr) every `.RUN.*.replaced` directory beside `run_dir`: a replacement (`overwrite`) that was
    killed between moving the old run's outputs aside and removing them. They are kept, never removed here:
    the user decides (returns them)."""
    left = sorted(p for p in run_dir.parent.glob(f".{run_dir.name}.*.replaced") if p.is_dir() and not p.is_symlink())
    for p in left:
        print(f"{p}: the outputs of a run of {run_dir} that an interrupted --overwrite moved aside; "
              f"{run_dir} may hold the new run only in part: check it, then remove {p}", file=sys.stderr)
    return left


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ---------------------------------------------------------------- training

def _with_precision(model, precision: str, model_config=None, run_dir: Path | None = None, batch_size: int = 64):
    """(`model` under the dtype policy of `precision` (esnet_tf.precision), XLA on?); float32 returns it as is.

    'auto' measures float32 against float32 with XLA (and mixed bf16 on a CPU with native bf16)
    training steps of `model_config` on this machine (cached; `precision.choose_precision`) and
    writes the choice and its timings to `run_dir/precision_train.json`; under a distribution
    strategy it keeps the static CPU-flag rule (no XLA).
    """
    import tensorflow as tf

    from esnet_tf.precision import choose_precision, describe, resolve_policy, with_policy

    if precision == "auto" and model_config is not None and not tf.distribute.has_strategy():
        choice = choose_precision(model_config, "train", batch_size=batch_size, run_dir=run_dir)
        policy, xla = choice["policy"], choice["xla"]
        timing = ", ".join(f"{k} {v:.2f} s" for k, v in choice.get("best_s", {}).items())
        print(f"precision auto -> {choice['candidate']} ({choice['reason']}{'; cached' if choice['cached'] else ''}"
              f"{'; best step ' + timing if timing else ''})")
    else:
        policy, xla = resolve_policy(precision), False
    if policy == "float32":
        return model, xla
    print(describe(policy))
    return with_policy(model, policy), xla


def _make_callbacks(run_dir: Path, config: TrainConfig, verbose: int, restore_dir: Path | None = None):
    """Keras callbacks writing into `run_dir`; backups are restored from `restore_dir` (default
    `run_dir`; a non-chief worker writes to a temporary dir but restores from the chief's)."""
    import keras

    from esnet_tf import compat

    restore_dir = Path(restore_dir or run_dir)

    class TrainingStateKeeper(keras.callbacks.Callback):
        """Persist the state of EarlyStopping / ReduceLROnPlateau / ModelCheckpoint with each epoch.

        BackupAndRestore restores weights, optimizer and epoch only; this restores the rest, so a
        resumed run stops (and lowers the learning rate) exactly when an uninterrupted one would.
        Must come after those callbacks (their on_train_begin resets what is restored here) and
        before the backup (the state of epoch e is written before the backup says e is done).
        The start epoch is known in `on_train_begin` only if the model was restored earlier;
        otherwise (the backup restores after this callback's `on_train_begin`) the state is
        restored at the first `on_epoch_begin`, whose epoch is the start epoch.
        """

        def __init__(self, path: Path, tracked: dict, restore_path: Path | None = None) -> None:
            super().__init__()
            self.path = path
            self.restore_path = restore_path or path
            self.tracked = tracked  # name -> (callback, attribute names)
            self._restored = False

        def _snapshot(self) -> dict:
            return {name: {a: _jsonable(getattr(cb, a, None)) for a in attrs} for name, (cb, attrs) in self.tracked.items()}

        def _restore(self, start: int) -> None:
            self._restored = True
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

        def on_train_begin(self, logs=None) -> None:
            self._restored = False
            start = compat.initial_epoch(self.model)
            if start:
                self._restore(start)

        def on_epoch_begin(self, epoch, logs=None) -> None:
            if not self._restored:
                self._restore(int(epoch))

        def on_epoch_end(self, epoch, logs=None) -> None:
            saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
            saved = {k: v for k, v in saved.items() if int(k) >= epoch}  # keep the previous epoch
            saved[str(epoch + 1)] = self._snapshot()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            os.replace(tmp, self.path)

    class PromoteBest(keras.callbacks.Callback):
        """Move the checkpoint's new best model onto best.keras atomically (os.replace): a kill or a
        full disk while Keras writes it leaves the previous best.keras whole."""

        def __init__(self, written: Path, target: Path) -> None:
            super().__init__()
            self.written, self.target = written, target

        def on_epoch_end(self, epoch, logs=None) -> None:
            if self.written.is_file():
                os.replace(self.written, self.target)

    class BestInMemory(keras.callbacks.Callback):
        """Without backups: keep the weights of the best val_loss so far in memory (as
        ModelCheckpoint(save_best_only=True) would save them) and write them to best.keras once,
        atomically, when training ends. The optimizer state saved with them is the last epoch's."""

        def __init__(self, staged: Path, target: Path) -> None:
            super().__init__()
            self.staged, self.target = staged, target
            self.best, self.weights = np.inf, None

        def on_epoch_end(self, epoch, logs=None) -> None:
            current = (logs or {}).get("val_loss")
            if current is not None and np.less(float(current), self.best):  # NaN never improves
                self.best, self.weights = float(current), [np.copy(w) for w in self.model.get_weights()]

        def on_train_end(self, logs=None) -> None:
            if self.weights is None:
                return
            last = self.model.get_weights()
            self.model.set_weights(self.weights)
            self.model.save(str(self.staged))
            os.replace(self.staged, self.target)
            self.model.set_weights(last)  # the model object stays as fit left it

    staged = run_dir / BEST_STAGING
    staged.unlink(missing_ok=True)  # a half-written one of a killed run
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                            verbose=1 if verbose else 0)
    reducer = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_factor,
                                                patience=config.lr_patience, min_lr=config.min_lr,
                                                verbose=1 if verbose else 0)
    logs = [keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, profile_batch=0)]
    if not config.backups:
        return [stopper, reducer, *logs, BestInMemory(staged, run_dir / "best.keras")]
    checkpoint = keras.callbacks.ModelCheckpoint(str(staged), monitor="val_loss", save_best_only=True, verbose=0)
    promote = PromoteBest(staged, run_dir / "best.keras")
    backup_dir = run_dir / BACKUP
    backup_dir.mkdir(parents=True, exist_ok=True)
    keeper = TrainingStateKeeper(backup_dir / STATE_FILE, {
        "checkpoint": (checkpoint, ("best",)),
        "early_stopping": (stopper, ("wait", "best", "best_epoch", "stopped_epoch")),
        "reduce_lr": (reducer, ("wait", "best", "cooldown_counter")),
    }, restore_dir / BACKUP / STATE_FILE)
    backup = compat.AtomicBackupAndRestore(backup_dir, restore_dir=restore_dir / BACKUP, save_freq="epoch",
                                           delete_checkpoint=True)
    return [
        checkpoint, promote, stopper, reducer, *logs,
        keeper,
        # last: the weights backup of epoch e is written after everything else of epoch e
        backup,
    ]


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value  # json writes a non-finite float as Infinity / NaN, and reads it back


def _trim_history(path: Path, epochs: int) -> None:
    """Keep the rows of epochs < `epochs` (rows written after the last backup are redone)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(float(r[0])) < epochs]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


def write_warmup_examples(ds, path: Path, n: int = 4, input_names: Sequence[str] = INPUT_NAMES) -> int:
    """Save up to `n` real examples (the model inputs + id, formula) for `esnet export` warmup requests."""
    from esnet_tf.data import iterate_numpy

    path = Path(path)
    for batch in iterate_numpy(ds.take(n), n):
        k = len(batch["dos_up"])
        extra = {"id": batch.get("id", np.array([str(i) for i in range(k)])),
                 "formula": batch.get("formula", np.full(k, "", dtype=str))}
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **{name: batch[name] for name in input_names}, **extra)
        os.replace(tmp, path)
        return k
    return 0


def train(config: TrainConfig, run_dir: str | Path, *, train_data: Any = None, validation_data: Any = None,
          resume: bool = False, overwrite: bool = False, verbose: int = 2) -> dict:
    """Train per `config` into `run_dir`; returns the summary dict (also in summary.json).

    Data: `config.dataset` (a dataset spec, see `esnet_tf.data`), or the examples given directly as
    `train_data` and `validation_data`: each a dict of numpy arrays (dos_up, dos_down (N, n_points, 9)
    states/eV/atom, composition (N, 118), formation_energy_per_atom (N,) eV/atom; optional id, formula,
    named scalar energy inputs; `esnet_tf.data.example_arrays`) or an unbatched `tf.data.Dataset` of
    such example dicts. Model selection uses the validation examples only.

    Run rules (the `esnet train` command relies on them): the run directory is locked for the
    run (a second writer gets a one-line `UserError`); a directory that already holds a run
    (config.json) is refused unless `resume` or `overwrite`. `resume` continues the interrupted
    run from its last completed epoch (weights, optimizer, epoch and the callbacks' state) and
    refuses settings (`IDENTITY_FIELDS`) or data (fingerprint) other than the run's; a finished run
    returns its stored summary ("already_finished": True). `overwrite` loads and checks everything
    and trains the new run in a hidden directory beside `run_dir`; only when it is complete are the
    old run's own outputs replaced (files in `run_dir` that `train` did not write stay).
    `config.strategy` picks the tf.distribute strategy (esnet_tf.distribute); under multi-worker
    only the chief writes `run_dir`, the others a temporary dir removed at the end.
    `verbose`: Keras progress, 0 silent, 1 bar, 2 one line per epoch.
    """
    from esnet_tf import distribute
    from esnet_tf.atomic import exclusive

    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, not {type(config).__name__} "
                        "(a settings dict: TrainConfig.from_dict(settings))")
    direct = train_data is not None or validation_data is not None
    if direct and config.dataset:
        raise UserError(f"give either config.dataset ({config.dataset}) or train_data/validation_data, not both")
    if direct and (train_data is None or validation_data is None):
        raise UserError("train_data and validation_data go together (model selection needs validation examples)")
    if not direct and not config.dataset:
        raise UserError("--dataset is required (an .npz with --labels, a labels directory, or a TFDS name)")
    if resume and overwrite:
        raise UserError("resume (--resume) and overwrite (--overwrite) exclude each other: continue the run, "
                        "or replace it")
    if verbose not in (0, 1, 2):
        raise UserError(f"--verbose must be 0, 1 or 2, got {verbose!r}")
    shared_dir = Path(run_dir)
    if not distribute.env_is_chief(config.strategy):  # a non-chief worker never locks or writes the run dir
        restore = _staging_dir(shared_dir) if overwrite else shared_dir
        return _train_with_strategy(config, shared_dir, restore, train_data, validation_data, resume=resume,
                                    verbose=verbose)
    with exclusive(shared_dir, "run directory"):  # a second training into the same run is refused
        _report_interrupted_replacement(shared_dir)
        if holds_run(shared_dir) and not (resume or overwrite):
            raise UserError(f"{shared_dir} already holds a run; resume it (--resume), replace it once the new run "
                            "is complete (--overwrite), or choose another run directory")
        if resume and holds_run(shared_dir):
            check_same_run(config, shared_dir)
            if run_finished(shared_dir):
                print(f"{shared_dir}: this run already finished (summary.json); nothing to resume")
                summary = json.loads((shared_dir / "summary.json").read_text())
                return {**summary, "already_finished": True}
        if overwrite and holds_run(shared_dir):
            staging = _fresh_staging(shared_dir)
            try:
                summary = _train_with_strategy(config, staging, staging, train_data, validation_data, resume=False,
                                               verbose=verbose, final_dir=shared_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # ours; the old run is untouched
                raise
            _replace_run(staging, shared_dir)
            print(f"{shared_dir}: the previous run was replaced by the new one")
            return summary
        return _train_with_strategy(config, shared_dir, shared_dir, train_data, validation_data, resume=resume,
                                    verbose=verbose)


def _train_with_strategy(config: TrainConfig, shared_dir: Path, restore_dir: Path, train_data, validation_data, *,
                         resume: bool, verbose: int, final_dir: Path | None = None) -> dict:
    """Make the strategy, then `_train` in this process's directory (the chief: `shared_dir`)."""
    from esnet_tf import distribute

    strategy = distribute.make_strategy(config.strategy)  # before any other TF op
    own_dir = distribute.worker_dir(shared_dir, strategy)
    if own_dir != shared_dir:
        print(f"non-chief worker: writing to the temporary {own_dir} (removed at the end); the chief writes "
              f"{final_dir or shared_dir}")
    try:
        return _train(config, own_dir, restore_dir, strategy, train_data, validation_data, resume=resume,
                      verbose=verbose, final_dir=final_dir or shared_dir)
    except Exception as exc:
        lost = distribute.lost_worker_message(exc, strategy, final_dir or shared_dir)
        if lost:
            raise UserError(lost) from exc
        raise
    finally:
        distribute.remove_worker_dir(own_dir, shared_dir)


def _train(config: TrainConfig, run_dir: Path, shared_dir: Path, strategy, train_data, validation_data, *,
           resume: bool, verbose: int, final_dir: Path) -> dict:
    """`train` in the directory this process writes (`run_dir`); backups are read from `shared_dir`;
    `final_dir` is where the run ends up (the summary names its best.keras)."""
    import keras

    from esnet_tf import compat, data, distribute
    from esnet_tf.model import build_esnet

    run_dir = Path(run_dir)
    t0 = time.time()
    model_config = config.esnet_config()
    input_names = data.model_input_names(model_config)
    keras.utils.set_random_seed(int(config.seed))

    split_opts = config.split_options()
    loaded = data.train_and_validation(config.dataset, split_opts, "model selection", train_data=train_data,
                                       validation_data=validation_data, input_names=input_names)
    train_ds, val_ds, n_train, n_val, stats = loaded[:5]
    spec = loaded.source
    print(f"train: {n_train} examples, validation: {n_val} examples ({spec}); config {model_config.name}")
    if resume:
        check_same_run(config, shared_dir, loaded.fingerprint)
    run_dir.mkdir(parents=True, exist_ok=True)

    start = backup_epoch(shared_dir) if resume and config.backups else None
    if resume and not config.backups:
        print("this run keeps no backups (--no-backups): it starts over from epoch 0")
    if not resume or not (run_dir / "config.json").is_file():
        _write_json(run_dir / "config.json",
                    {"model": model_config.to_dict(), "training": config.to_dict(), "normalization": stats,
                     "data": {"n_train": n_train, "n_validation": n_val, "source": spec,
                              "fingerprint": loaded.fingerprint}})
    if start is None:
        (run_dir / "history.csv").unlink(missing_ok=True)
    else:
        _trim_history(run_dir / "history.csv", start)
        print(f"resuming from epoch {start} (epochs 0..{start - 1} done)")

    replicas = int(strategy.num_replicas_in_sync)
    with strategy.scope():  # variables (model, optimizer, metrics) mirrored over the replicas
        model = build_esnet(model_config, normalization=stats)
        model, xla = _with_precision(model, config.precision, model_config, run_dir, int(config.batch_size))
        if replicas > 1 and config.sync_batchnorm:
            distribute.synchronize_batchnorm(model)
        compile_esnet(model, config.learning_rate, config.loss)
        model.jit_compile = xla  # XLA train step where `auto` measured it faster (not saved with the model)
    seed, batch = int(config.seed), int(config.batch_size)
    val_cache = "memory" if config.cache == "memory" else "none"
    workers = distribute.num_workers(strategy)
    per_worker_input = workers > 1 and config.dataset is not None \
        and not (data.is_npz_spec(spec) or data.is_labels_dir(spec))
    distribute.check_batches({"train": n_train, "validation": n_val}, batch, strategy, per_worker_input)
    if per_worker_input:  # TFDS: each worker reads its own sub-split
        pipe_train = distribute.tfds_per_worker(strategy, spec, "train", n_train, batch, shuffle=True, seed=seed,
                                                cache=config.cache, shuffle_buffer=config.shuffle_buffer,
                                                split_options=split_opts)
        pipe_val = distribute.tfds_per_worker(strategy, spec, "validation", n_val, batch, shuffle=False, seed=seed,
                                              cache=val_cache, shuffle_buffer=1, split_options=split_opts)
    else:
        pipe_train = data.training_pipeline(train_ds, batch, seed=seed, cache=config.cache,
                                            shuffle_buffer=config.shuffle_buffer, input_names=input_names)
        pipe_val = data.training_pipeline(val_ds, batch, shuffle=False, cache=val_cache, input_names=input_names)
        if workers > 1:  # same seeded global batches on every worker; each keeps its slice
            pipe_train, pipe_val = distribute.shard_by_data(pipe_train), distribute.shard_by_data(pipe_val)
    if not (run_dir / "warmup_examples.npz").is_file():
        write_warmup_examples(val_ds, run_dir / "warmup_examples.npz", input_names=input_names)

    throughput = distribute.throughput_callback(n_train)
    callbacks = [throughput] + _make_callbacks(run_dir, config, verbose, restore_dir=shared_dir)
    with compat.fit_scope(model, strategy):
        history = model.fit(pipe_train, validation_data=pipe_val, epochs=int(config.epochs),
                            shuffle=False, callbacks=callbacks, verbose=verbose)  # the pipeline shuffles
    rows = _read_history(run_dir / "history.csv")
    val = [r["val_loss"] for r in rows]
    best = int(np.argmin(val)) if val else None
    summary = {
        "epochs_run": len(rows), "best_epoch": best, "best_val_loss": val[best] if val else None,
        "best_val_mae_ev_per_atom": rows[best].get("val_mae") if val else None,
        "stopped_early": bool(rows) and len(rows) < int(config.epochs),
        "n_train": n_train, "n_validation": n_val, "config": model_config.name,
        "params": int(model.count_params()), "wall_time_s_this_session": time.time() - t0,
        "best_model": str(Path(final_dir) / "best.keras"), "history_keys": sorted(history.history),
        "strategy": config.strategy, "replicas": replicas, "workers": workers,
        "chief": distribute.is_chief(strategy), "train_samples_per_s": throughput.samples_per_s(),
        "data_fingerprint": loaded.fingerprint,
    }
    _write_json(run_dir / "summary.json", summary)
    return summary


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
