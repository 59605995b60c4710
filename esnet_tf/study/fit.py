"""Training ESNet inside one study unit: on given rows only, predictions for the test rows (eV/atom).

`fit_esnet` trains with `esnet_tf.train` (validation = 10 % of the training rows' chemical systems,
early stopping) and predicts with `esnet_tf.predict.Predictor`; `tune_esnet` runs a KerasTuner
random search on the training rows only and returns the chosen config. Each writes its inputs as a
temporary features .npz + labels CSV inside the unit's work folder, which the unit removes.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.study.data import save_npz, write_labels

#: random-search trials per tuned unit, each of max(1, epochs // 4) epochs
TUNE_TRIALS = 6


def fit_esnet(train_arrays: dict, test_arrays: dict, work: Path, config: Any, epochs: int, seed: int,
              batch_size: int, split_seed: int | None = None) -> tuple[np.ndarray, dict]:
    """Train on `train_arrays` (validation = 10 % of their chemical systems, split seed `split_seed`,
    default `seed`; early stopping after max(10, epochs // 2)); predictions (eV/atom) for
    `test_arrays` and the training summary. `config`: 'small', 'paper', an ESNetConfig JSON path, or
    an `ESNetConfig`.
    `work` is emptied first (a unit killed mid-training starts over)."""
    from esnet_tf.predict import Predictor
    from esnet_tf.train import TrainConfig, train

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    idx = np.arange(len(train_arrays["id"]))
    npz = save_npz(train_arrays, idx, work / "train.npz")
    labels = write_labels(train_arrays, idx, work / "labels.csv")
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    settings = TrainConfig(dataset=str(npz), labels=str(labels), config=config, epochs=epochs, seed=seed,
                           batch_size=batch_size, split_fractions=(0.9, 0.1, 0.0),
                           split_seed=seed if split_seed is None else split_seed,
                           early_stopping_patience=max(10, epochs // 2), lr_patience=max(5, epochs // 4),
                           backups=False)  # a killed unit starts over anyway; saves ~14 % of a unit
    summary = train(settings, work / "run", verbose=0)
    pred = Predictor(work / "run" / "best.keras")
    batch = {k: test_arrays[k] for k in ("dos_up", "dos_down", "composition", "id")}
    out = np.asarray(pred.predict(batch, source=str(work))).reshape(-1).astype(float)
    keep = {k: summary.get(k) for k in ("epochs_run", "best_epoch", "best_val_loss", "best_val_mae_ev_per_atom")}
    return out, keep


def tune_esnet(train_arrays: dict, work: Path, epochs: int, seed: int, batch_size: int, space: Path,
               trials: int = TUNE_TRIALS) -> tuple[str, dict]:
    """KerasTuner random search (`trials` trials of max(1, epochs // 4) epochs) over `space` on
    `train_arrays` only, with fit_esnet's validation split (10 % of their chemical systems, split
    seed = `seed`) as the objective; (the chosen config's JSON path, notes)."""
    from esnet_tf.atomic import write_text
    from esnet_tf.tuning.search import TuneConfig, tune

    if work.exists():
        shutil.rmtree(work)  # a unit killed mid-search starts over
    work.mkdir(parents=True)
    idx = np.arange(len(train_arrays["id"]))
    settings = TuneConfig(dataset=str(save_npz(train_arrays, idx, work / "train.npz")),
                          labels=str(write_labels(train_arrays, idx, work / "labels.csv")),
                          split_fractions=(0.9, 0.1, 0.0), split_seed=seed, tuner="random", max_trials=trials,
                          epochs=max(1, epochs // 4), batch_size=batch_size, seed=seed, search_space=str(space))
    with contextlib.redirect_stdout(io.StringIO()):  # the tuner's tables: the unit prints one line
        summary = tune(settings, work, "search", retrain_epochs=0, export_dir=None, verbose=0)
    best = summary["best_trials"][0]
    path = work / "chosen.json"
    write_text(path, json.dumps(best["config"]))
    return str(path), {"n_trials": summary["n_trials"], "trial_epochs": settings.epochs,
                       "best_trial_val_mae_ev_per_atom": best["val_mae_ev_per_atom"],
                       "hyperparameters": best["hyperparameters"], "params": best["params"]}
