"""Training ESNet inside one study unit: on given rows only, predictions for the test rows (eV/atom).

`fit_esnet` trains with `esnet_tf.train.train` on the arrays themselves (validation = 10 % of the
training rows' chemical systems, `esnet_tf.data.select_split`; early stopping) and predicts with
`esnet_tf.predict.Predictor`; `tune_esnet` runs a KerasTuner random search on the training rows only
and returns the chosen config. Runs live in the unit's work folder, which the unit removes.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: train / validation / test fractions of the training rows' chemical systems (no test: the unit's own)
INNER_SPLIT = (0.9, 0.1, 0.0)

#: random-search trials per tuned unit, each of max(1, epochs // 4) epochs
TUNE_TRIALS = 6


def inner_split(arrays: dict, seed: int) -> tuple[dict, dict]:
    """(train, validation) rows of `arrays` by chemical system (`INNER_SPLIT`, split seed `seed`), with the
    labels rounded to 6 decimals (eV/atom) as a labels CSV holds them."""
    from esnet_tf.data import select_split

    rows = dict(arrays)
    rows["formation_energy_per_atom"] = np.round(np.asarray(arrays["formation_energy_per_atom"], np.float64), 6)
    return select_split(rows, "train", INNER_SPLIT, seed), select_split(rows, "validation", INNER_SPLIT, seed)


def fit_esnet(train_arrays: dict, test_arrays: dict, work: Path, config: Any, epochs: int, seed: int,
              batch_size: int, split_seed: int | None = None) -> tuple[np.ndarray, dict]:
    """Train on `train_arrays` (validation = 10 % of their chemical systems, split seed `split_seed`,
    default `seed`; early stopping after max(10, epochs // 2)); predictions (eV/atom) for
    `test_arrays` and the training summary. `config`: 'small', 'paper', an ESNetConfig JSON path, or
    an `ESNetConfig`. `work` is emptied first (a unit killed mid-training starts over)."""
    from esnet_tf.predict import Predictor
    from esnet_tf.train import TrainConfig, train

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    fit_rows, val_rows = inner_split(train_arrays, seed if split_seed is None else split_seed)
    settings = TrainConfig(config=config, epochs=epochs, seed=seed, batch_size=batch_size,
                           early_stopping_patience=max(10, epochs // 2), lr_patience=max(5, epochs // 4),
                           backups=False)  # a killed unit starts over anyway; saves ~14 % of a unit
    summary = train(settings, work / "run", train_data=fit_rows, validation_data=val_rows, verbose=0)
    pred = Predictor(work / "run" / "best.keras")
    from esnet_tf.isdos import ENERGY_INPUTS

    batch = {k: test_arrays[k] for k in ("dos_up", "dos_down", "composition", "id", *ENERGY_INPUTS)
             if k in test_arrays}  # the energy inputs for a model that takes them
    out = np.asarray(pred.predict(batch, source=str(work))).reshape(-1).astype(float)
    keep = {k: summary.get(k) for k in ("epochs_run", "best_epoch", "best_val_loss", "best_val_mae_ev_per_atom")}
    return out, keep


def tune_esnet(train_arrays: dict, work: Path, epochs: int, seed: int, batch_size: int, space: Path,
               trials: int = TUNE_TRIALS) -> tuple[str, dict]:
    """KerasTuner random search (`trials` trials of max(1, epochs // 4) epochs) over `space` on
    `train_arrays` only, with fit_esnet's validation split (`inner_split`, split seed = `seed`) as
    the objective; (the chosen config's JSON path, notes)."""
    from esnet_tf.atomic import write_text
    from esnet_tf.tuning.search import TuneConfig, tune

    if work.exists():
        shutil.rmtree(work)  # a unit killed mid-search starts over
    work.mkdir(parents=True)
    fit_rows, val_rows = inner_split(train_arrays, seed)
    settings = TuneConfig(tuner="random", max_trials=trials, epochs=max(1, epochs // 4), batch_size=batch_size,
                          seed=seed, search_space=str(space))
    with contextlib.redirect_stdout(io.StringIO()):  # the tuner's tables: the unit prints one line
        summary = tune(settings, work, "search", train_data=fit_rows, validation_data=val_rows, retrain_epochs=0,
                       export_dir=None, verbose=0)
    best = summary["best_trials"][0]
    path = work / "chosen.json"
    write_text(path, json.dumps(best["config"]))
    return str(path), {"n_trials": summary["n_trials"], "trial_epochs": settings.epochs,
                       "best_trial_val_mae_ev_per_atom": best["val_mae_ev_per_atom"],
                       "hyperparameters": best["hyperparameters"], "params": best["params"]}
