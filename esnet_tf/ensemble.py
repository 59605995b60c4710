"""Deep ensembles of ESNet: one Keras model over several trained members (mean and spread, eV/atom).

    from esnet_tf.ensemble import build_ensemble
    ensemble = build_ensemble([load_model(p) for p in member_paths], std_scale=1.0)
    out = ensemble.predict_on_batch(inputs)
    out["formation_energy_per_atom"], out["formation_energy_per_atom_std"]   # (N, 1) eV/atom each

The ensemble is a functional `keras.Model` with the ESNet inputs (dos_up, dos_down, composition)
whose members are nested models; `EnsembleMeanStd` (a registered layer, no Lambda; one instance
per output) turns the members' (N, 1) outputs into the mean and the sample std (ddof = 1) times
`std_scale` (a variance-scaling recalibration factor fitted on the validation split; 1 = raw).
It round-trips through `.keras` (import this module, or use `esnet_tf.model.load_model` after
importing it) and exports with `esnet_tf.export.write_saved_model` like any ESNet, so
the SavedModel's `serving_default` returns both outputs (DESIGN.md section 5).
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from esnet_tf.isdos import ENERGY_INPUTS, INPUT_NAMES, OUTPUT_NAME

#: second output of an ensemble: the standard deviation over the members (eV/atom)
STD_OUTPUT_NAME = f"{OUTPUT_NAME}_std"


@keras.saving.register_keras_serializable(package="esnet_tf")
class EnsembleMeanStd(keras.layers.Layer):
    """Members' predictions, a list of (N, 1) tensors (eV/atom) -> one (N, 1) statistic over them.

    `statistic="mean"`: the mean; `statistic="std"`: the sample standard deviation over the
    members (ddof = 1) times `std_scale`. (Two instances, one per output: a layer with one output
    keeps the functional graph and the SavedModel signature simple.)
    """

    STATISTICS = ("mean", "std")

    def __init__(self, statistic: str = "mean", std_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if statistic not in self.STATISTICS:
            raise ValueError(f"statistic must be one of {self.STATISTICS}, got {statistic!r}")
        if not std_scale > 0:
            raise ValueError(f"std_scale must be > 0, got {std_scale}")
        self.statistic = statistic
        self.std_scale = float(std_scale)

    def call(self, inputs):
        stacked = keras.ops.concatenate([keras.ops.cast(x, "float32") for x in inputs], axis=-1)
        n = len(inputs)
        mean = keras.ops.mean(stacked, axis=-1, keepdims=True)
        if self.statistic == "mean":
            return mean
        if n < 2:
            return keras.ops.zeros_like(mean)
        var = keras.ops.sum(keras.ops.square(stacked - mean), axis=-1, keepdims=True) / (n - 1)
        return keras.ops.sqrt(var) * self.std_scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "statistic": self.statistic, "std_scale": self.std_scale}


def build_ensemble(members: Sequence, *, std_scale: float = 1.0, name: str = "esnet_ensemble"):
    """A `keras.Model` over trained ESNet `members` (>= 2) with outputs mean and std (eV/atom).

    Each member is wrapped as a nested model named `member_<i>` (the members' own names may
    coincide); inputs are the ESNet inputs of the first member (all must agree).
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = {t.name: t.shape for t in members[0].inputs}
    names = INPUT_NAMES + tuple(e for e in ENERGY_INPUTS if e in first)  # energy inputs: DESIGN.md section 1
    if sorted(first) != sorted(names):
        raise ValueError(f"members must take the ESNet inputs {list(INPUT_NAMES)} (plus energy inputs), "
                         f"got {sorted(first)}")
    inputs = {k: keras.Input(shape=tuple(first[k][1:]), name=k, dtype="float32") for k in names}
    outs = []
    for i, member in enumerate(members):
        shapes = {t.name: t.shape for t in member.inputs}
        if shapes != first:
            raise ValueError(f"member {i} takes inputs {shapes}, member 0 {first}")
        if len(member.outputs) != 1:
            raise ValueError(f"member {i} has {len(member.outputs)} outputs; members are single ESNet models")
        wrapped = keras.Model({t.name: t for t in member.inputs}, {OUTPUT_NAME: member.outputs[0]},
                              name=f"member_{i}")
        outs.append(wrapped(inputs)[OUTPUT_NAME])
    mean = EnsembleMeanStd("mean", name="ensemble_mean")(outs)
    std = EnsembleMeanStd("std", std_scale=std_scale, name="ensemble_std")(outs)
    return keras.Model(inputs, {OUTPUT_NAME: mean, STD_OUTPUT_NAME: std}, name=name)


def member_predictions(model, inputs: dict, batch_size: int = 256) -> np.ndarray:
    """Each member's formation energy (eV/atom), float32 (N, n_members), of an ensemble `model`."""
    members = [layer for layer in model.layers if layer.name.startswith("member_")]
    names = INPUT_NAMES + tuple(t.name for t in model.inputs if t.name in ENERGY_INPUTS)
    cols = []
    for m in members:
        parts = []
        for s in range(0, len(inputs["dos_up"]), batch_size):
            batch = {k: np.asarray(inputs[k][s:s + batch_size], np.float32) for k in names}
            out = m.predict_on_batch(batch)
            parts.append(np.asarray(out[OUTPUT_NAME] if isinstance(out, dict) else out).reshape(-1))
        cols.append(np.concatenate(parts) if parts else np.zeros(0, np.float32))
    return np.stack(cols, axis=1).astype(np.float32)
