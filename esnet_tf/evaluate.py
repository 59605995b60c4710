"""Evaluate a saved ESNet on one split: regression and stability metrics, predictions, parity plot.

Writes to `out`: metrics.json (MAE, RMSE, R^2 in eV/atom; precision, recall, F1, accuracy, DAF and
the counts tp, fp, fn, tn for "formation energy < threshold", from the one stability-metrics function
`esnet_tf.screening.metrics.threshold_metrics`), predictions.csv and parity.png. The metrics and the parity
plot are the ones `esnet screen` uses (`esnet_tf.screening.metrics` / `.plots`): a NaN prediction
is predicted unstable and stays in the classification denominators (Matbench Discovery). This is
the only command that reads the test split. The CLI is `esnet_tf.cli.evaluate`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.atomic import write_text
from esnet_tf.errors import UserError
from esnet_tf.screening.metrics import regression_metrics, threshold_metrics
from esnet_tf.screening.plots import parity_plot

__all__ = ["CLASSIFICATION_KEYS", "evaluate", "regression_metrics"]

#: the stability metrics of metrics.json: `esnet_tf.screening.metrics.threshold_metrics`' keys
CLASSIFICATION_KEYS = ("precision", "recall", "f1", "accuracy", "prevalence", "daf", "tp", "fp", "fn", "tn")


def evaluate(model: str | Path, dataset: str, split: str = "test", out: str | Path = "eval", *,
             threshold: float = 0.0, batch_size: int = 256, labels: str | None = None,
             data_dir: str | None = None, split_fractions: Sequence[float] | None = None,
             split_seed: int = 0, trust_model_code: bool = False) -> dict[str, Any]:
    """Predict one split with a saved model; write metrics.json, predictions.csv, parity.png to `out`.

    model: .keras file or SavedModel dir. dataset: features .npz (with `labels`), a directory with a
    labels.csv, or a TFDS name / dir (`data_dir`). threshold: stable means E_f < threshold (eV/atom).
    split_fractions / split_seed: the chemical-system split of .npz / labels-dir datasets, as in
    training. trust_model_code: load a SavedModel that esnet-tf neither ships nor exported
    (`esnet_tf.trust`; it runs that model's code). Returns the metrics (energies in eV/atom).
    """
    from esnet_tf import data
    from esnet_tf.isdos import OUTPUT_NAME
    from esnet_tf.predict import Predictor, write_predictions

    if batch_size < 1:
        raise UserError(f"batch size must be a positive number of examples, got {batch_size}")
    predictor = Predictor(model, trust_model_code=trust_model_code)
    fractions = tuple(float(f) for f in split_fractions) if split_fractions is not None else None
    ds = data.load_split(dataset, split, labels=labels, data_dir=data_dir, split_fractions=fractions,
                         split_seed=split_seed)
    keys = ("id", "formula", OUTPUT_NAME, "e_above_hull")
    collected: dict[str, list] = {k: [] for k in (*keys, "pred")}
    source = f"{dataset} [{split}]"
    for batch in data.iterate_numpy(ds, batch_size):
        collected["pred"].append(predictor.predict(batch, batch_size, source=source))
        for k in keys:
            collected[k].append(np.asarray(batch[k]))
    if not collected["pred"]:
        raise UserError(f"{dataset}: the {split} split is empty")
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    known = np.isfinite(arrays[OUTPUT_NAME].astype(float))
    if not known.any():
        raise UserError(f"{source}: no formation_energy_per_atom truths to evaluate against")
    y, p = arrays[OUTPUT_NAME][known].astype(float), np.asarray(arrays["pred"], float)[known]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stability = threshold_metrics(y, p, threshold)
    metrics = {"model": str(predictor.path), "dataset": str(dataset), "split": split, "units": "eV/atom",
               **regression_metrics(y, p), "n": int(len(y)), "n_missing_prediction": int(np.sum(~np.isfinite(p))),
               "threshold_ev_per_atom": threshold, **{k: stability[k] for k in CLASSIFICATION_KEYS},
               "n_without_truth": int((~known).sum())}
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_predictions(out / "predictions.csv", arrays, arrays["pred"])
    mae = metrics["mae"]
    parity_plot(y, p, out / "parity.png", quantity="formation energy", threshold=threshold,
                title=f"{Path(str(dataset)).name} {split}: n={len(y)}, "
                + (f"MAE={mae:.3f} eV/atom" if mae is not None else "no finite predictions"))
    return metrics
