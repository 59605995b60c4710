"""Shipped (pretrained) models: list them, load one by name, predict with a domain check.

    import esnet_tf
    esnet_tf.list_models()                                    # what ships (ModelInfo rows)
    model = esnet_tf.load_model("ESNet-GPAWDemo-2026.12-EFormPerAtom")   # or a path
    table = model.predict(["run1/vasprun.xml.gz", example])   # paths, ISDOSExamples, one or many
    table["predicted_formation_energy_per_atom"], table.units  # eV/atom
    table["domain"]                                           # '' inside the training domain, else why
    table["predicted_formation_energy_per_atom_lower"]        # the calibrated 90 % interval (models that have it)

A shipped model is a folder `ESNet-<Data>-<YYYY.MM>-<Target>/` of `esnet_tf.saved_models`
(`resources.saved_models_dir()`) with `model.json` (metadata, metrics), `README.md`,
`model.keras`, `domain.json` (`esnet_tf.domain.Domain`), `splits.json` (ids and truths of the
train / validation / test rows it was trained and evaluated on) and TF Serving versions
`<VERSION>/`. `load_model` takes a shipped name, a shipped folder, a `.keras` file or a SavedModel
(directory); a model without a `domain.json` predicts with an empty domain column. SavedModels
that esnet-tf neither ships nor exported need `trust_model_code=True` (`esnet_tf.trust`).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.isdos import DOMAIN_COLUMN, PREDICTION_COLUMN, PREDICTION_STD_COLUMN, ISDOSExample

if TYPE_CHECKING:
    import keras
    import pandas

    from esnet_tf.uip import UIPInputs

#: what `predict` takes: a path, an ISDOSExample, a sequence of them, or an arrays dict
Inputs = Union[str, Path, ISDOSExample, Sequence[Union[str, Path, ISDOSExample]], Mapping[str, np.ndarray]]

#: shipped-model names: ESNet-<Data>-<YYYY.MM>-<Target>
NAME_PATTERN = re.compile(r"^ESNet-[A-Za-z0-9]+-\d{4}\.\d{2}-[A-Za-z0-9]+$")
METADATA_FILE = "model.json"
LOWER_COLUMN, UPPER_COLUMN = f"{PREDICTION_COLUMN}_lower", f"{PREDICTION_COLUMN}_upper"
UNITS = {PREDICTION_COLUMN: "eV/atom", PREDICTION_STD_COLUMN: "eV/atom", LOWER_COLUMN: "eV/atom",
         UPPER_COLUMN: "eV/atom", "formation_energy_per_atom": "eV/atom",
         "e_above_hull": "eV/atom", DOMAIN_COLUMN: "text ('' = inside the training domain)", "id": "", "formula": ""}


#: the shipped model trained on the IS energy (`scripts/train_pretrained.py --recipe is_relax`)
IS_RELAX_MODEL = "ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy"


def is_relax_config():
    """The ESNetConfig of the study's `esnet_is_relax_elements` (its best ESNet row): `small` plus the IS
    formation energy (eV/atom) as an input, the relaxation-energy target (output E_f(IS) - ΔE, eV/atom)
    and element-property means in the composition branch. The shipped IS-energy model and `esnet demo`
    train it."""
    from esnet_tf.isdos import IS_FORMATION_ENERGY
    from esnet_tf.model import ESNetConfig

    return ESNetConfig.small().replace(energy_inputs=(IS_FORMATION_ENERGY,), target="relaxation_energy",
                                       element_properties=True)


#: the shipped model that corrects the universal potential's formation energy
#: (`scripts/train_pretrained.py --recipe uip_correction_pool`); it takes `esnet predict ... --uip CSV`
UIP_MODEL = "ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromUIP"


def uip_correction_config():
    """The ESNetConfig of the study's `esnet_uip_correction`: `small` plus the IS and the potential's (CHGNet)
    formation energies (eV/atom) as inputs, the `uip_correction` target (output E_f(UIP) + correction, eV/atom)
    and element-property means in the composition branch."""
    from esnet_tf.isdos import IS_FORMATION_ENERGY
    from esnet_tf.model import UIP_FORMATION_ENERGY, ESNetConfig

    return ESNetConfig.small().replace(energy_inputs=(IS_FORMATION_ENERGY, UIP_FORMATION_ENERGY),
                                       target="uip_correction", element_properties=True)


@dataclass(frozen=True)
class ModelInfo:
    """One shipped model: name, folder and the headline numbers of its model.json (eV/atom)."""

    name: str
    path: Path
    data: str
    n_members: int
    test_mae: float
    test_rmse: float
    test_f1: float
    size_mb: float
    metadata: dict = field(default_factory=dict, repr=False)


def _folder_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def read_metadata(folder: str | Path) -> dict:
    """The model.json of a shipped model folder ({} without one)."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); reinstall esnet-tf or re-ship the model") from None


def list_models(root: str | Path | None = None) -> list[ModelInfo]:
    """Shipped models in `root` (default: the installed `esnet_tf.saved_models`), sorted by name."""
    from esnet_tf.resources import saved_models_dir

    root = Path(root) if root is not None else saved_models_dir()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file()):
        meta = read_metadata(folder)
        test = meta.get("metrics", {}).get("test", {})
        out.append(ModelInfo(name=folder.name, path=folder, data=meta.get("data", {}).get("description", ""),
                             n_members=int(meta.get("n_members", 1)), test_mae=float(test.get("mae", math.nan)),
                             test_rmse=float(test.get("rmse", math.nan)), test_f1=float(test.get("f1", math.nan)),
                             size_mb=_folder_size_mb(folder), metadata=meta))
    return out


def resolve(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """The file or folder a model reference means: an existing path, else a shipped model's folder.

    Raises `UserError` naming the shipped models when it is neither.
    """
    from esnet_tf.resources import saved_models_dir

    path = Path(name_or_path)
    if path.exists():
        return path
    root = Path(root) if root is not None else saved_models_dir()
    folder = root / str(name_or_path)
    if "/" not in str(name_or_path) and (folder / METADATA_FILE).is_file():
        return folder
    names = [m.name for m in list_models(root)]
    raise UserError(f"{name_or_path}: no such model file and no shipped model of that name; shipped: "
                    f"{', '.join(names) or 'none'} (`esnet models` lists them)")


def model_file(folder: Path) -> Path:
    """What a shipped folder is loaded from: its model.keras, else the folder (highest SavedModel version)."""
    keras_file = folder / "model.keras"
    return keras_file if keras_file.is_file() else folder


@dataclass
class PredictionTable:
    """Predictions, one row per input: columns of numpy arrays with `units` (eV/atom).

    Columns: id, formula, predicted_formation_energy_per_atom, (ensembles)
    predicted_formation_energy_per_atom_std, (ensembles with a calibrated interval) its _lower and
    _upper bounds, domain ('' inside the training domain, else why), and
    the truths formation_energy_per_atom, e_above_hull where known. `failures`: inputs that could
    not be featurized (one line each).
    """

    columns: dict[str, np.ndarray]
    model: str
    failures: list[str] = field(default_factory=list)

    @property
    def units(self) -> dict[str, str]:
        return {k: UNITS.get(k, "") for k in self.columns}

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns[column]

    def rows(self) -> list[dict]:
        """One dict per row (numbers as floats, NaN where unknown)."""
        keys = list(self.columns)
        return [{k: self.columns[k][i].item() if hasattr(self.columns[k][i], "item") else self.columns[k][i]
                 for k in keys} for i in range(len(self))]

    def out_of_domain(self) -> np.ndarray:
        """Row indices whose domain column is not empty."""
        return np.flatnonzero([bool(d) for d in self.columns.get(DOMAIN_COLUMN, [""] * len(self))])

    def to_pandas(self) -> pandas.DataFrame:
        """A pandas DataFrame (units in `df.attrs["units"]`)."""
        import pandas as pd

        df = pd.DataFrame(self.columns)
        df.attrs["units"] = self.units
        df.attrs["model"] = self.model
        return df

    def to_csv(self, path: str | Path) -> Path:
        """The predictions CSV of `esnet predict` (DESIGN.md section 6), written atomically."""
        from esnet_tf.predict import write_predictions

        return write_predictions(path, self.columns, self.columns[PREDICTION_COLUMN],
                                 std=self.columns.get(PREDICTION_STD_COLUMN),
                                 domain=self.columns.get(DOMAIN_COLUMN), lower=self.columns.get(LOWER_COLUMN),
                                 upper=self.columns.get(UPPER_COLUMN))


def _as_arrays(inputs, grid=None) -> tuple[dict, list[str]]:
    """Arrays (inputs, id, formula, code, truths) of paths / ISDOSExamples / an arrays dict;
    paths are featurized on `grid` (the model's), and `.npz` features on another grid refused."""
    from esnet_tf.data import LABEL_KEYS, stack_examples
    from esnet_tf.predict import load_inputs

    if isinstance(inputs, dict):
        return inputs, []
    if isinstance(inputs, (str, Path, ISDOSExample)):
        inputs = [inputs]
    parts, failures = [], []
    for item in inputs:
        if isinstance(item, ISDOSExample):
            part = stack_examples([item])
        elif isinstance(item, (str, Path)):
            part, fails = load_inputs([str(item)], grid=grid)
            failures += fails
            if not part:
                continue
        else:
            raise UserError(f"cannot predict a {type(item).__name__}: pass file paths, ISDOSExamples, or an "
                            "arrays dict (dos_up, dos_down, composition)")
        parts.append(part)
    if not parts:
        return {}, failures
    keys = ("dos_up", "dos_down", "composition", "id", "formula", "code", *LABEL_KEYS)
    out = {k: np.concatenate([np.asarray(p.get(k, np.full(len(p["id"]), "" if k in ("code", "formula") else np.nan)))
                              for p in parts]) for k in keys}
    from esnet_tf.isdos import ENERGY_INPUTS

    for k in ENERGY_INPUTS:  # the energy inputs the parts bring (eV/atom, (N, 1)); NaN where a part has none
        if any(k in p for p in parts):
            out[k] = np.concatenate([np.asarray(p[k], np.float32).reshape(-1, 1) if k in p
                                     else np.full((len(p["id"]), 1), np.nan, np.float32) for p in parts])
    return out, failures


class ESNetModel:
    """A loaded ESNet (single or ensemble) with its training domain (`domain`, None if unknown).

    `predict(inputs)` -> `PredictionTable` (eV/atom). `info` is the shipped model.json ({} for a
    model that is not shipped).
    """

    def __init__(self, reference: str | Path, *, root: str | Path | None = None,
                 trust_model_code: bool = False) -> None:
        from esnet_tf.domain import find_domain
        from esnet_tf.predict import Predictor

        path = resolve(reference, root)
        self.name = path.name if (path / METADATA_FILE).is_file() else str(reference)
        self.path = path
        self.info = read_metadata(path if path.is_dir() else path.parent)
        self.predictor = Predictor(model_file(path) if path.is_dir() else path, trust_model_code=trust_model_code)
        self.domain = find_domain(path)

    @property
    def is_ensemble(self) -> bool:
        return self.predictor.has_std

    @property
    def keras_model(self) -> keras.Model:
        """The underlying keras.Model (for `.keras` models; a SavedModel loads as a TF object)."""
        return self.predictor.model

    def __repr__(self) -> str:
        return f"ESNetModel({self.name!r}, ensemble={self.is_ensemble}, domain={'yes' if self.domain else 'no'})"

    @property
    def takes_uip(self) -> bool:
        """True for a model that takes the potential's (CHGNet) formation energy, `uip_formation_energy_per_atom`."""
        from esnet_tf.uip import UIP_INPUT

        return UIP_INPUT in self.predictor.energy_inputs

    def uip_inputs(self, path: str | Path | None) -> UIPInputs | None:
        """The `esnet uip relax` CSV `path` read for this model (`esnet_tf.uip.UIPInputs`, with the CHGNet
        references of its model.json), None for a model that takes no UIP energy. One-line `UserError`: the
        model takes it and `path` is None (naming the command that makes the CSV), or `path` is given to a model
        that does not take it."""
        from esnet_tf.uip import UIP_INPUT, UIP_RELAX_HINT, UIPInputs

        if not self.takes_uip:
            if path is not None:
                raise UserError(f"--uip {path}: model {self.name} takes no {UIP_INPUT}; drop --uip (models that "
                                f"take it: {UIP_MODEL})")
            return None
        if path is None:
            raise UserError(f"model {self.name} takes CHGNet's formation energy ({UIP_INPUT}, eV/atom): relax the "
                            f"inputs' structures with `{UIP_RELAX_HINT}` (same ids as the inputs) and pass "
                            "--uip uip.csv")
        record = self.info.get("uip")
        if not record:
            raise UserError(f"model {self.name}: no CHGNet references recorded (model.json `uip`); load it by its "
                            "shipped name or folder, which holds them")
        return UIPInputs(path, record, self.name)

    def with_uip(self, arrays: dict, uip: UIPInputs | None) -> dict:
        """`arrays` plus `uip_formation_energy_per_atom` (eV/atom, (N, 1)) of their ids from `uip` (unchanged
        when `uip` is None)."""
        from esnet_tf.uip import UIP_INPUT

        if uip is None:
            return arrays
        n = len(arrays["id"])
        formulas = np.asarray(arrays.get("formula", np.full(n, ""))).astype(str)
        return {**arrays, UIP_INPUT: uip.formation_energies(np.asarray(arrays["id"]).astype(str), formulas)}

    def predict(self, inputs: Inputs, *, batch_size: int = 256, strict: bool = False,
                uip: str | Path | UIPInputs | None = None) -> PredictionTable:
        """Predict `inputs` (a path, an ISDOSExample, a sequence of them, or an arrays dict).

        With `strict`, inputs outside the training domain raise `UserError` (naming them). `uip`: for a model
        that takes CHGNet's formation energy, the CSV of `esnet uip relax` on the inputs' structures (rows
        matched by id; the formation energy from the model's own references), unless an arrays dict holds it.
        """
        from esnet_tf.predict import model_grid
        from esnet_tf.uip import UIP_INPUT, UIPInputs

        arrays, failures = _as_arrays(inputs, model_grid(self.predictor.n_points))
        if not arrays:
            raise UserError("no input could be featurized: " + "; ".join(failures) if failures else "no inputs")
        if self.takes_uip or uip is not None:
            if not (uip is None and UIP_INPUT in arrays):
                arrays = self.with_uip(arrays, uip if isinstance(uip, UIPInputs) else self.uip_inputs(uip))
        return self.predict_arrays(arrays, batch_size=batch_size, strict=strict, failures=failures)

    def predict_arrays(self, arrays: dict, *, batch_size: int = 256, strict: bool = False,
                       failures: Sequence[str] = ()) -> PredictionTable:
        """`predict` on stacked arrays (dos_up, dos_down, composition, id; optional formula, code, truths)."""
        from esnet_tf.predict import LOWER_OUTPUT_NAME, OUTPUT_NAME, STD_OUTPUT_NAME, UPPER_OUTPUT_NAME

        n = len(arrays["dos_up"])
        if strict and self.domain is not None:  # refuse before predicting what the inputs alone put outside
            check_strict(arrays, self.domain.check(arrays), self.name)
        out = self.predictor.predict_outputs(arrays, batch_size, source=self.name)
        std = out.get(STD_OUTPUT_NAME)
        domain = self.domain.check(arrays, std) if self.domain is not None else None
        if strict and domain is not None:  # the σ rule
            check_strict(arrays, domain, self.name)
        cols: dict[str, np.ndarray] = {
            "id": np.asarray(arrays.get("id", np.arange(n).astype(str))).astype(str),
            "formula": np.asarray(arrays.get("formula", np.full(n, ""))).astype(str),
            PREDICTION_COLUMN: out[OUTPUT_NAME].astype(np.float64)}
        if std is not None:
            cols[PREDICTION_STD_COLUMN] = std.astype(np.float64)
        if LOWER_OUTPUT_NAME in out:
            cols[LOWER_COLUMN] = out[LOWER_OUTPUT_NAME].astype(np.float64)
            cols[UPPER_COLUMN] = out[UPPER_OUTPUT_NAME].astype(np.float64)
        if domain is not None:
            cols[DOMAIN_COLUMN] = np.asarray(domain, dtype=object)
        for k in ("formation_energy_per_atom", "e_above_hull"):
            if k in arrays and np.isfinite(np.asarray(arrays[k], float)).any():
                cols[k] = np.asarray(arrays[k], np.float64)
        return PredictionTable(cols, self.name, list(failures))


def check_strict(arrays: dict, domain: np.ndarray, model: str) -> None:
    """`UserError` naming the rows outside the training domain (the `--strict` refusal)."""
    bad = [i for i, d in enumerate(domain) if d]
    if bad:
        ids = np.asarray(arrays.get("id", np.arange(len(domain)).astype(str))).astype(str)
        shown = "; ".join(f"{ids[i]}: {domain[i]}" for i in bad[:3])
        shown += f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{len(bad)} of {len(domain)} input(s) outside the training domain of {model} (--strict): "
                        f"{shown}; drop --strict to predict them with a 'domain' column")


def load_model(name_or_path: str | Path, *, root: str | Path | None = None,
               trust_model_code: bool = False) -> ESNetModel:
    """A shipped model by name (`esnet models` lists them), or a `.keras` / SavedModel path.

    A SavedModel loads only when it is shipped or was exported by esnet-tf (`esnet_tf.trust`); any
    other is refused with one line unless `trust_model_code=True`, which runs that model's code
    (TensorFlow: running an untrusted model is equivalent to running untrusted code). `.keras`
    files load in Keras's safe mode; a malicious or broken one raises one `UserError` line.
    """
    return ESNetModel(name_or_path, root=root, trust_model_code=trust_model_code)


def predict_formation_energy(model: str | Path | ESNetModel, inputs: Inputs, *, batch_size: int = 256,
                             strict: bool = False) -> PredictionTable:
    """Formation energies (eV/atom) of `inputs` (paths, ISDOSExamples, one or many) with `model`."""
    if not isinstance(model, ESNetModel):
        model = load_model(model)
    return model.predict(inputs, batch_size=batch_size, strict=strict)


def load_split_arrays(name_or_path: str | Path, split: str, *, root: str | Path | None = None,
                      data_dir: str | Path | None = None) -> dict:
    """The rows of `split` ('train', 'validation', 'test') a shipped model was evaluated on, featurized
    from the demo dataset (or `data_dir`) and the pool (rows whose `dataset` is 'pool') by the ids and
    with the truths of its splits.json (and, for a model that takes it, the CHGNet formation energy it was
    given, eV/atom)."""
    from esnet_tf import resources
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import labels_by_id

    folder = resolve(name_or_path, root)
    splits_file = folder / "splits.json"
    if not splits_file.is_file():
        raise UserError(f"{folder}: no splits.json (only shipped models record their splits)")
    rows = json.loads(splits_file.read_text())["splits"][split]
    dirs = {"demo": Path(data_dir) if data_dir is not None else resources.demo_dir(), "pool": resources.pool_dir()}
    files = {}
    for dataset in sorted({r.get("dataset") or "demo" for r in rows}):
        if dataset not in dirs:
            raise UserError(f"{splits_file}: unknown dataset {dataset!r} (known: demo, pool)")
        files[dataset] = labels_by_id(dirs[dataset] / "labels.csv", path_column="path", require_energy=False)
    missing = [r["id"] for r in rows if r["id"] not in files[r.get("dataset") or "demo"]]
    if missing:
        raise UserError(f"the datasets' labels.csv lack {len(missing)} id(s) of {folder.name}'s {split} split "
                        f"(e.g. {missing[0]}); pass the dataset it was trained on")
    examples = [featurize(files[r.get("dataset") or "demo"][r["id"]].file, id=r["id"]) for r in rows]
    arrays = stack_examples(examples)
    arrays["formation_energy_per_atom"] = np.array([r["formation_energy_per_atom"] for r in rows], np.float32)
    arrays["e_above_hull"] = np.array([np.nan if r.get("e_above_hull") is None else r["e_above_hull"]
                                       for r in rows], np.float32)
    from esnet_tf.uip import UIP_INPUT

    if rows and all(r.get(UIP_INPUT) is not None for r in rows):  # the CHGNet E_f the model was given (eV/atom)
        arrays[UIP_INPUT] = np.array([[r[UIP_INPUT]] for r in rows], np.float32)
    return arrays
