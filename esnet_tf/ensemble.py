"""Deep ensembles of ESNet: one Keras model over several trained members (mean and spread, eV/atom).

    from esnet_tf.ensemble import build_ensemble
    ensemble = build_ensemble([load_model(p) for p in member_paths], std_scale=1.0)
    out = ensemble.predict_on_batch(inputs)
    out["formation_energy_per_atom"], out["formation_energy_per_atom_std"]   # (N, 1) eV/atom each

With `interval_scale=q` (`fit_interval_scale`: the split-conformal quantile of |error| / σ on
held-out rows) it has two more outputs, formation_energy_per_atom_lower / _upper = mean ∓ q σ
(eV/atom): the calibrated interval (90 % by default).

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
from typing import Any

import keras
import numpy as np

from esnet_tf.isdos import ENERGY_INPUTS, INPUT_NAMES, OUTPUT_NAME

#: second output of an ensemble: the standard deviation over the members (eV/atom)
STD_OUTPUT_NAME = f"{OUTPUT_NAME}_std"
#: the calibrated interval's bounds (eV/atom), outputs of ensembles built with an `interval_scale`
LOWER_OUTPUT_NAME = f"{OUTPUT_NAME}_lower"
UPPER_OUTPUT_NAME = f"{OUTPUT_NAME}_upper"
#: the interval's nominal coverage of `fit_interval_scale`
DEFAULT_COVERAGE = 0.9


@keras.saving.register_keras_serializable(package="esnet_tf")
class EnsembleMeanStd(keras.layers.Layer):
    """Members' predictions, a list of (N, 1) tensors (eV/atom) -> one (N, 1) statistic over them.

    `statistic="mean"`: the mean; `statistic="std"`: the sample standard deviation over the
    members (ddof = 1) times `std_scale`; `"lower"` / `"upper"`: mean ∓ `interval_scale` × that std
    (the calibrated interval). (One instance per output: a layer with one output keeps the
    functional graph and the SavedModel signature simple.)
    """

    STATISTICS = ("mean", "std", "lower", "upper")

    def __init__(self, statistic: str = "mean", std_scale: float = 1.0, interval_scale: float = 1.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if statistic not in self.STATISTICS:
            raise ValueError(f"statistic must be one of {self.STATISTICS}, got {statistic!r}")
        if not std_scale > 0:
            raise ValueError(f"std_scale must be > 0, got {std_scale}")
        if not interval_scale > 0:
            raise ValueError(f"interval_scale must be > 0, got {interval_scale}")
        self.statistic = statistic
        self.std_scale = float(std_scale)
        self.interval_scale = float(interval_scale)

    def call(self, inputs: Sequence) -> Any:
        stacked = keras.ops.concatenate([keras.ops.cast(x, "float32") for x in inputs], axis=-1)
        n = len(inputs)
        mean = keras.ops.mean(stacked, axis=-1, keepdims=True)
        if self.statistic == "mean":
            return mean
        if n < 2:
            return keras.ops.zeros_like(mean)
        var = keras.ops.sum(keras.ops.square(stacked - mean), axis=-1, keepdims=True) / (n - 1)
        std = keras.ops.sqrt(var) * self.std_scale
        if self.statistic == "std":
            return std
        half = std * self.interval_scale
        return mean - half if self.statistic == "lower" else mean + half

    def compute_output_shape(self, input_shape: Sequence) -> tuple:
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "statistic": self.statistic, "std_scale": self.std_scale,
                "interval_scale": self.interval_scale}


def build_ensemble(members: Sequence, *, std_scale: float = 1.0, interval_scale: float | None = None,
                   name: str = "esnet_ensemble") -> keras.Model:
    """A `keras.Model` over trained ESNet `members` (>= 2) with outputs mean and std (eV/atom), and with
    `interval_scale` (a multiple of the scaled std, `fit_interval_scale`) the interval's lower and upper
    bounds (eV/atom).

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
    outputs = {OUTPUT_NAME: mean, STD_OUTPUT_NAME: std}
    if interval_scale is not None:
        for stat, key in (("lower", LOWER_OUTPUT_NAME), ("upper", UPPER_OUTPUT_NAME)):
            outputs[key] = EnsembleMeanStd(stat, std_scale=std_scale, interval_scale=interval_scale,
                                           name=f"ensemble_{stat}")(outs)
    return keras.Model(inputs, outputs, name=name)


def member_predictions(model: keras.Model, inputs: dict, batch_size: int = 256) -> np.ndarray:
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


# ---------------------------------------------------------------- σ recalibration and calibration metrics

#: fraction of a Gaussian within ±1σ and ±2σ
IDEAL_GAUSSIAN = {"within_1_sigma": 0.683, "within_2_sigma": 0.954}


def fit_std_scale(truth: np.ndarray, members: np.ndarray, *, floor: float = 1e-6) -> float:
    """Variance-scaling factor s of the members' sample std (ddof = 1), fitted on held-out rows.

    truth: (N,) eV/atom; members: (N, M) each member's prediction (eV/atom), M >= 2. Returns
    s = sqrt(mean(z^2)) with z = (truth - mean) / max(raw std, `floor`): the maximum-likelihood
    scale of a Gaussian N(mean, (s x raw std)^2), so that the scaled σ has mean squared z-score 1
    on these rows. `build_ensemble(..., std_scale=s)` applies it.
    """
    truth = np.asarray(truth, np.float64).reshape(-1)
    members = np.asarray(members, np.float64)
    if members.ndim != 2 or members.shape[1] < 2 or members.shape[0] != len(truth) or not len(truth):
        raise ValueError(f"members must be (N, M >= 2) predictions for N = {len(truth)} truths, got {members.shape}")
    z = (truth - members.mean(axis=1)) / np.maximum(members.std(axis=1, ddof=1), floor)
    return float(np.sqrt(np.mean(z ** 2)))


def fit_interval_scale(truth: np.ndarray, mean: np.ndarray, std: np.ndarray,
                       coverage: float = DEFAULT_COVERAGE) -> float:
    """Split-conformal multiplier q of σ for a `coverage` interval mean ± q σ, from held-out rows.

    truth, mean, std: (N,) eV/atom on rows used neither for training nor for early stopping. The
    nonconformity score is |truth - mean| / σ; q is its ceil((N + 1) coverage)-th smallest value
    (the finite-sample conformal quantile: for exchangeable new rows the interval covers with
    probability >= `coverage`). Raises ValueError when N is too small for that rank (N + 1 >
    N / (1 - coverage)), or on σ <= 0.
    """
    truth = np.asarray(truth, np.float64).reshape(-1)
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    if not (len(truth) == len(mean) == len(std)) or not len(truth):
        raise ValueError(f"truth, mean and std must have one equal length > 0, got {len(truth)}, {len(mean)}, "
                         f"{len(std)}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    if not np.all(std > 0):
        raise ValueError("every sigma must be > 0")
    scores = np.sort(np.abs(truth - mean) / std)
    rank = int(np.ceil((len(scores) + 1) * coverage))
    if rank > len(scores):
        raise ValueError(f"{len(scores)} held-out rows are too few for a {coverage:.0%} conformal interval "
                         f"(need >= {int(np.ceil(coverage / (1 - coverage)))})")
    return float(scores[rank - 1])


def interval_coverage(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of rows with lower <= truth <= upper (all eV/atom)."""
    truth = np.asarray(truth, np.float64).reshape(-1)
    return float(np.mean((np.asarray(lower).reshape(-1) <= truth) & (truth <= np.asarray(upper).reshape(-1))))


def miscalibration_area(z: np.ndarray, n_levels: int = 101) -> float:
    """Area between the observed and the expected coverage of centred Gaussian intervals.

    For each expected coverage p in linspace(0, 1, n_levels), the observed coverage is the fraction
    of |z| <= Φ^-1((1 + p) / 2); the area is the trapezoidal integral of |observed - p| over p: 0 for
    z distributed as N(0, 1), 0.5 at most (σ far too large, or far too small).
    """
    from scipy.stats import norm

    z = np.abs(np.asarray(z, np.float64).reshape(-1))
    p = np.linspace(0.0, 1.0, n_levels)
    with np.errstate(over="ignore"):
        bounds = norm.ppf((1.0 + p) / 2.0)  # 0 ... inf
    observed = (z[None, :] <= bounds[:, None]).mean(axis=1)
    gap = np.abs(observed - p)
    return float(np.sum((gap[1:] + gap[:-1]) / 2.0 * np.diff(p)))


def calibration_metrics(truth: np.ndarray, pred: np.ndarray, std: np.ndarray) -> dict:
    """How well σ (eV/atom) describes the errors |pred - truth| (eV/atom) on some rows.

    within_1_sigma / within_2_sigma: fractions with |error| <= σ, 2σ (Gaussian: 0.683, 0.954);
    spearman_abs_error_vs_sigma (+ its p-value): rank correlation of |error| and σ (does σ rank the
    errors?; None when either is constant); mean_squared_z: mean of (error / σ)^2 (1 for a calibrated
    Gaussian σ; > 1: σ too small);
    miscalibration_area (`miscalibration_area` of z = error / σ); mean_sigma (eV/atom).
    """
    from scipy.stats import spearmanr

    err = np.asarray(pred, np.float64).reshape(-1) - np.asarray(truth, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    if len(std) != len(err) or not len(err):
        raise ValueError(f"{len(err)} errors but {len(std)} sigmas")
    if not np.all(std > 0):
        raise ValueError("every sigma must be > 0")
    abs_err = np.abs(err)
    z = err / std
    rank_defined = len(err) > 2 and np.ptp(abs_err) > 0 and np.ptp(std) > 0  # else Spearman is undefined (None)
    rho = spearmanr(abs_err, std) if rank_defined else None
    return {"within_1_sigma": float(np.mean(abs_err <= std)), "within_2_sigma": float(np.mean(abs_err <= 2 * std)),
            "spearman_abs_error_vs_sigma": float(rho.statistic) if rho is not None else None,
            "spearman_p_value": float(rho.pvalue) if rho is not None else None,
            "mean_squared_z": float(np.mean(z ** 2)), "miscalibration_area": miscalibration_area(z),
            "mean_sigma": float(std.mean()), "ideal_gaussian": dict(IDEAL_GAUSSIAN)}
