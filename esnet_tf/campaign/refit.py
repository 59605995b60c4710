"""Refitting the model on what a campaign has relaxed: an ESNet fine-tune (`CampaignConfig(refit="fine-tune")`).

    tune = ESNetFineTune("best.keras", inputs, epochs=10)    # inputs: IS-DOS arrays in pool order
    run_campaign(pool, CampaignConfig(strategy="lcb", refit="fine-tune"), out, relaxer=relax, refitter=tune)

Each round starts again from the original model and fine-tunes it on *every* candidate relaxed so
far (IS-DOS -> relaxed formation energy, eV/atom), so the predictions of a round depend only on
what has been relaxed, and a resumed campaign computes the same refit as an uninterrupted one
(up to TensorFlow's floating-point nondeterminism). The std of the original predictions is kept.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from esnet_tf.campaign.pool import Pool, Predictions
from esnet_tf.errors import UserError
from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME


class ESNetFineTune:
    """A refitter: fine-tune a single-model `.keras` ESNet on the relaxed candidates, re-predict the pool.

    inputs: `dos_up`, `dos_down` (N, n_points, 9), `composition` (N, 118) in the pool's order;
    epochs, learning_rate (Adam), batch_size: the fine-tune; std: the original std to keep (eV/atom).
    """

    def __init__(self, model: str | Path, inputs: Mapping[str, np.ndarray], *, epochs: int = 10,
                 learning_rate: float = 1e-4, batch_size: int = 16, seed: int = 0, source: str = "esnet",
                 std: np.ndarray | None = None) -> None:
        if epochs < 1:
            raise UserError(f"fine-tune epochs must be >= 1, got {epochs}")
        missing = [k for k in INPUT_NAMES if k not in inputs]
        if missing:
            raise UserError(f"fine-tune: the IS-DOS inputs lack {missing}")
        self.model_path, self.inputs = Path(model), {k: np.asarray(inputs[k], np.float32) for k in INPUT_NAMES}
        if self.model_path.suffix != ".keras":
            raise UserError(f"{model}: fine-tuning needs a .keras model (a SavedModel cannot be trained)")
        self.epochs, self.learning_rate, self.batch_size, self.seed = epochs, learning_rate, batch_size, seed
        self.source, self.std = source, std

    def __call__(self, pool: Pool, relaxed: np.ndarray, ef: np.ndarray) -> dict[str, Predictions]:
        import keras

        from esnet_tf.model import compile_esnet, load_model

        n = len(self.inputs["composition"])
        if n != pool.n:
            raise UserError(f"fine-tune: {n} IS-DOS inputs for a pool of {pool.n} candidates")
        keras.utils.set_random_seed(self.seed)
        model = load_model(self.model_path)
        if len(model.outputs) != 1:
            raise UserError(f"{self.model_path}: fine-tuning takes a single model, not an ensemble")
        compile_esnet(model, learning_rate=self.learning_rate)
        x = {k: v[relaxed] for k, v in self.inputs.items()}
        model.fit(x, {OUTPUT_NAME: np.asarray(ef, np.float32)}, epochs=self.epochs,
                  batch_size=min(self.batch_size, len(relaxed)), shuffle=True, verbose=0)
        y = model.predict(self.inputs, batch_size=256, verbose=0)
        y = y[OUTPUT_NAME] if isinstance(y, dict) else y
        return {self.source: Predictions(np.asarray(y, float).reshape(-1), self.std,
                                         f"{self.model_path} fine-tuned on {len(relaxed)} relaxed")}
