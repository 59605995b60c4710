"""ESNet (Mok et al., J. Mater. Chem. A 2023) with the Keras 3 functional API (DESIGN.md section 4).

    dos_up (None, 1500, 9) -> InputNormalization -> SpinFeaturizer --+
    dos_down (None, 1500, 9) -> InputNormalization -> SpinFeaturizer -+-> concat (channels)
        -> Conv1D(512, 3)-BN-ReLU -> GlobalAveragePooling1D ------------+
    composition (None, 118) -> Dense(64, relu) --------------------------+-> concat
        -> Dense(128, relu) -> Dense(64, relu) -> Dense(1) = formation_energy_per_atom (eV/atom)

Each input first passes a ShapeCheck (wrong shapes fail loudly in every saved form).

Energy inputs (`ESNetConfig.energy_inputs`, DESIGN.md section 1 "Energy inputs"): each named scalar
energy (None, 1) eV/atom, e.g. is_formation_energy_per_atom, passes a ShapeCheck that also refuses
NaN, is standardised inside the model (an InputNormalization fitted on the training split, as the
DOS is) and joins the pooled DOS features and the composition branch before the head:

    is_formation_energy_per_atom (None, 1) -> InputNormalization --+-> concat -> head

`target="relaxation_energy"`: the head's last Dense has a softplus, so it predicts the relaxation
energy ΔE >= 0, and the output is E_f(IS) - ΔE (a keras Subtract of the raw input and ΔE), so a
prediction never exceeds the IS formation energy. `target="uip_correction"`: the output is the
universal potential's formation energy plus a learned correction (a keras Add of the raw
uip_formation_energy_per_atom input and a Dense(1) that starts at zero, so the untrained model is
the potential). The output name and units do not change.

SpinFeaturizer = stem Conv1D(64, 20, stride 2)-BN-ReLU-AvgPool(2), then 4 stages of 2 residual
CBAM blocks of widths 64, 128, 256, 512 with AvgPool(2) between stages. The two spins have
their own weights. `ESNetConfig.paper()` has ~9.75 M parameters; `ESNetConfig.small()` is the
same topology, narrower, for CPU runs.

    from esnet_tf import ESNetConfig, build_esnet
    model = build_esnet(ESNetConfig.small())
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.isdos import (ENERGY_INPUTS, INPUT_NAMES, IS_FORMATION_ENERGY, N_ELEMENTS, N_ORBITALS,  # noqa: F401
                            OUTPUT_NAME, PAPER_GRID)

#: what the head predicts: the relaxed formation energy directly, the relaxation energy
#: ΔE = E_f(IS) - E_f(relaxed) >= 0 (output E_f(IS) - ΔE), or a correction to the universal potential's
#: formation energy (output E_f(UIP) + correction)
TARGETS = ("formation_energy", "relaxation_energy", "uip_correction")
#: the energy input that `target="uip_correction"` corrects (eV/atom)
UIP_FORMATION_ENERGY = "uip_formation_energy_per_atom"
#: initial bias of the relaxation head's softplus: softplus(-2.25) = 0.10 eV/atom, the order of the demo
#: data's median relaxation energy (softplus(0) = 0.69 eV/atom would start far too high)
RELAXATION_BIAS_INIT = -2.25


@dataclass(frozen=True)
class ESNetConfig:
    """Architecture hyper-parameters of ESNet (data, not code). Lengths in energy-grid points."""

    n_points: int = PAPER_GRID.n_points
    n_orbitals: int = N_ORBITALS
    n_elements: int = N_ELEMENTS
    stem_filters: int = 64
    stem_kernel: int = 20
    stem_stride: int = 2
    pool_size: int = 2
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks_per_stage: int = 2
    kernel_size: int = 3
    attention_ratio: int = 8
    spatial_kernel: int = 7
    merge_filters: int = 512
    merge_kernel: int = 3
    composition_units: int = 64
    head_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    bn_momentum: float = 0.99  # BatchNormalization moving-average momentum
    use_attention: bool = True  # CBAM in every residual block; False is the no-attention ablation
    #: the composition branch also sees the fraction-weighted mean and mean square of standardised
    #: pymatgen element properties (`element_property_features`), through fixed (non-trainable) weights
    element_properties: bool = False
    #: named scalar energy inputs (`isdos.ENERGY_INPUTS`, eV/atom each) entering the head beside the pooled
    #: DOS features and the composition branch; () is the paper's model (three inputs)
    energy_inputs: tuple[str, ...] = ()
    #: `TARGETS`: "formation_energy" (the head predicts E_f), "relaxation_energy" (it predicts ΔE >= 0 and the
    #: output is E_f(IS) - ΔE; needs "is_formation_energy_per_atom" in `energy_inputs`) or "uip_correction"
    #: (output E_f(UIP) + correction; needs "uip_formation_energy_per_atom")
    target: str = "formation_energy"
    name: str = field(default="paper", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_widths", tuple(int(w) for w in self.stage_widths))
        object.__setattr__(self, "head_units", tuple(int(u) for u in self.head_units))
        if isinstance(self.energy_inputs, str):
            raise ValueError(f"energy_inputs must be a list of names, got the string {self.energy_inputs!r}")
        object.__setattr__(self, "energy_inputs", tuple(str(e) for e in self.energy_inputs))
        unknown = [e for e in self.energy_inputs if e not in ENERGY_INPUTS]
        if unknown or len(set(self.energy_inputs)) != len(self.energy_inputs):
            raise ValueError(f"energy_inputs {list(self.energy_inputs)}: each must be one of {list(ENERGY_INPUTS)}, "
                             "at most once")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        if self.target == "relaxation_energy" and IS_FORMATION_ENERGY not in self.energy_inputs:
            raise ValueError(f"target 'relaxation_energy' predicts E_f(IS) - ΔE: add {IS_FORMATION_ENERGY!r} "
                             "to energy_inputs")
        if self.target == "uip_correction" and UIP_FORMATION_ENERGY not in self.energy_inputs:
            raise ValueError(f"target 'uip_correction' predicts E_f(UIP) + correction: add "
                             f"{UIP_FORMATION_ENERGY!r} to energy_inputs")
        if not self.stage_widths or min(self.stage_widths) < 1 or self.blocks_per_stage < 1:
            raise ValueError(f"invalid ESNetConfig: stage_widths={self.stage_widths}, "
                             f"blocks_per_stage={self.blocks_per_stage}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def paper(cls) -> "ESNetConfig":
        """The paper's ESNet: widths 64-128-256-512, ~9.75 M parameters."""
        return cls(name="paper")

    @classmethod
    def small(cls) -> "ESNetConfig":
        """Same topology, narrower (~0.1 M parameters): trains on 2 CPU cores in minutes."""
        return cls(stem_filters=16, stage_widths=(16, 24, 32, 48), merge_filters=48,
                   composition_units=32, head_units=(64, 32), attention_ratio=4, name="small")

    @classmethod
    def named(cls, name: str) -> "ESNetConfig":
        """'paper', 'small' or the path of a JSON file written by `to_dict`."""
        if name in ("paper", "small"):
            return getattr(cls, name)()
        path = Path(name)
        if path.is_file():
            return cls.from_dict(json.loads(path.read_text()))
        raise ValueError(f"unknown config {name!r}: use 'paper', 'small' or a JSON file of ESNetConfig fields")

    def replace(self, **changes: Any) -> "ESNetConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stage_widths"] = list(self.stage_widths)
        d["head_units"] = list(self.head_units)
        d["energy_inputs"] = list(self.energy_inputs)
        return d

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input names: the IS-DOS inputs, then the energy inputs."""
        return INPUT_NAMES + self.energy_inputs

    @classmethod
    def from_dict(cls, d: dict) -> "ESNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ESNetConfig fields {unknown}")
        return cls(**d)


def element_property_features() -> np.ndarray:
    """(118, P) float32: the element properties of `baselines.element_property_table` (imputed where
    pymatgen has none), each standardised to mean 0, std 1 over Z = 1..103. Multiplied by atomic
    fractions they give fraction-weighted means (the Magpie-style statistics of the baselines)."""
    from esnet_tf.baselines import element_property_table

    table, _ = element_property_table()
    ref = table[:103]
    return ((table - ref.mean(axis=0)) / np.where(ref.std(axis=0) > 0, ref.std(axis=0), 1.0)).astype(np.float32)


def build_esnet(config: ESNetConfig | None = None, *, normalization: dict | None = None,
                name: str | None = None):
    """Uncompiled ESNet `keras.Model`.

    Inputs (dict): dos_up, dos_down float32 (None, n_points, 9) states/eV/atom; composition
    float32 (None, 118) atomic fractions; one float32 (None, 1) eV/atom per `config.energy_inputs`.
    Output (dict): formation_energy_per_atom (None, 1) in eV/atom. `normalization`: optional
    statistics from `dos_statistics` to store in the model's InputNormalization layers (else
    identity until `set_normalization`).
    """
    import keras
    from keras import layers

    from esnet_tf.layers import InputNormalization, ShapeCheck, SpinFeaturizer

    c = config or ESNetConfig.paper()
    inputs = {
        "dos_up": keras.Input((c.n_points, c.n_orbitals), name="dos_up", dtype="float32"),
        "dos_down": keras.Input((c.n_points, c.n_orbitals), name="dos_down", dtype="float32"),
        "composition": keras.Input((c.n_elements,), name="composition", dtype="float32"),
    }
    for e in c.energy_inputs:
        inputs[e] = keras.Input((1,), name=e, dtype="float32")
    checked = {k: ShapeCheck(k, require_finite=k in c.energy_inputs, name=f"check_{k}")(v) for k, v in inputs.items()}
    spins = []
    for spin in ("up", "down"):
        x = InputNormalization(name=f"normalize_{spin}")(checked[f"dos_{spin}"])
        x = SpinFeaturizer(c.stem_filters, c.stem_kernel, c.stem_stride, c.pool_size, c.stage_widths,
                           c.blocks_per_stage, c.kernel_size, c.attention_ratio, c.spatial_kernel,
                           c.bn_momentum, c.use_attention, name=f"spin_{spin}")(x)
        spins.append(x)
    x = layers.Concatenate(axis=-1, name="spin_concat")(spins)
    x = layers.Conv1D(c.merge_filters, c.merge_kernel, padding="same", name="merge_conv")(x)
    x = layers.BatchNormalization(momentum=c.bn_momentum, name="merge_bn")(x)
    x = layers.ReLU(name="merge_relu")(x)
    x = layers.GlobalAveragePooling1D(name="global_pool")(x)
    comp_in = checked["composition"]
    if c.element_properties:
        table = element_property_features()
        stats = [layers.Dense(table.shape[1], use_bias=False, trainable=False, name=f"element_property_{kind}")(comp_in)
                 for kind in ("mean", "mean_square")]
        comp_in = layers.Concatenate(name="composition_features")([comp_in, *stats])
    comp = layers.Dense(c.composition_units, activation="relu", name="composition_dense")(comp_in)
    energies = [InputNormalization(name=f"normalize_{e}")(checked[e]) for e in c.energy_inputs]
    x = layers.Concatenate(name="features")([x, comp, *energies])
    for i, units in enumerate(c.head_units):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i + 1}")(x)
        if c.dropout:
            x = layers.Dropout(c.dropout, name=f"head_dropout{i + 1}")(x)
    if c.target == "relaxation_energy":
        delta = layers.Dense(1, activation="softplus", name="relaxation_energy",
                             bias_initializer=keras.initializers.Constant(RELAXATION_BIAS_INIT))(x)
        out = layers.Subtract(name=OUTPUT_NAME)([checked[IS_FORMATION_ENERGY], delta])
    elif c.target == "uip_correction":
        correction = layers.Dense(1, name="uip_correction", kernel_initializer="zeros")(x)
        out = layers.Add(name=OUTPUT_NAME)([checked[UIP_FORMATION_ENERGY], correction])
    else:
        out = layers.Dense(1, name=OUTPUT_NAME)(x)
    model = keras.Model(inputs=inputs, outputs={OUTPUT_NAME: out}, name=name or f"esnet_{c.name}")
    if c.element_properties:
        model.get_layer("element_property_mean").set_weights([table])
        model.get_layer("element_property_mean_square").set_weights([table ** 2])
    if normalization is not None:
        set_normalization(model, normalization)
    return model


def dos_statistics(batches) -> dict:
    """Per-channel mean and std (states/eV/atom) of dos_up and dos_down over examples and energies,
    and mean and std (eV/atom) of every energy input (`isdos.ENERGY_INPUTS`) the batches hold, over
    its known (finite) values; an energy with no known value gets no statistics.

    `batches`: iterable of dicts holding at least 'dos_up' and 'dos_down' arrays (B, n_points, 9)
    (numpy or tensors). Streams (float64 sums), so it works on datasets larger than memory.
    """
    sums: dict[str, list] = {}
    for batch in batches:
        for key in ("dos_up", "dos_down", *(e for e in ENERGY_INPUTS if e in batch)):
            a = np.asarray(batch[key], dtype=np.float64)
            a = a.reshape(-1, a.shape[-1]) if key.startswith("dos_") else a.reshape(-1, 1)
            if not key.startswith("dos_"):
                a = a[np.isfinite(a[:, 0])]
            s = sums.setdefault(key, [0, np.zeros(a.shape[-1]), np.zeros(a.shape[-1])])
            s[0] += a.shape[0]
            s[1] += a.sum(axis=0)
            s[2] += (a * a).sum(axis=0)
    if not sums or sums["dos_up"][0] == 0:
        raise ValueError("no training examples to fit the input normalisation on")
    out = {}
    for key, (n, s1, s2) in sums.items():
        if n == 0:
            continue
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        out[key] = {"mean": mean.tolist(), "std": np.sqrt(var).tolist()}
    return out


def energy_inputs_of(model) -> tuple[str, ...]:
    """The energy inputs a built ESNet (or ensemble) takes, in its input order; () for the paper's model."""
    return tuple(t.name for t in model.inputs if t.name in ENERGY_INPUTS)


def input_names_of(model) -> tuple[str, ...]:
    """All inputs a built ESNet (or ensemble) takes: `INPUT_NAMES`, then its energy inputs."""
    return INPUT_NAMES + energy_inputs_of(model)


def set_normalization(model, stats: dict) -> None:
    """Store `dos_statistics` output in the model's `normalize_up` / `normalize_down` layers and the
    `normalize_<energy>` layer of each energy input (whose statistics must then be in `stats`)."""
    for spin in ("up", "down"):
        s = stats[f"dos_{spin}"]
        model.get_layer(f"normalize_{spin}").set_statistics(s["mean"], s["std"])
    for name in energy_inputs_of(model):
        if name not in stats:
            raise ValueError(f"the model takes the energy input {name!r} but the training data hold no known "
                             f"value of it (no normalisation statistics)")
        model.get_layer(f"normalize_{name}").set_statistics(stats[name]["mean"], stats[name]["std"])


def load_model(path: str | Path):
    """Load a `.keras` ESNet (registers the custom layers first)."""
    import keras

    import zipfile

    import esnet_tf.layers  # noqa: F401  (registers the serializable layers)
    from esnet_tf.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model not found")
    if not zipfile.is_zipfile(path):  # Keras says "File not found" for a truncated archive
        raise UserError(f"{path}: not a readable .keras file (truncated or corrupt: a .keras model is a zip "
                        "archive); use a complete copy, e.g. the run directory's best.keras")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: cannot load the .keras model ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None


def deflate_keras(path: str | Path) -> Path:
    """Recompress a `.keras` archive in place with deflate (Keras stores it uncompressed; the HDF5
    weights of an ensemble shrink about 2x). Keras loads either form; the result is renamed into place."""
    import zipfile

    from esnet_tf.atomic import atomic_path

    path = Path(path)
    with zipfile.ZipFile(path) as src, atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info.filename))
    return path


#: losses on the formation energy (eV/atom) that `compile_esnet` accepts
LOSSES = ("log_cosh", "mae", "mse", "huber")


def compile_esnet(model, learning_rate: float = 1.5e-3, loss: str = "log_cosh") -> None:
    """Compile as `esnet train` and `esnet tune` do: Adam(learning_rate), `loss`, metric 'mae' (eV/atom)."""
    import keras

    losses = {"log_cosh": keras.losses.LogCosh, "mae": keras.losses.MeanAbsoluteError,
              "mse": keras.losses.MeanSquaredError, "huber": keras.losses.Huber}
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss={OUTPUT_NAME: losses[loss]()},
                  metrics={OUTPUT_NAME: [keras.metrics.MeanAbsoluteError(name="mae")]})
    # Adam's slot variables, created now (eagerly) rather than lazily inside the first traced train
    # step, where each is lifted out of the graph: the small model's first fit takes 13 s instead of 24 s
    model.optimizer.build(model.trainable_variables)
