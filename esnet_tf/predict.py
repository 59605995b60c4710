"""Formation energies (eV/atom) from a saved ESNet (`esnet predict MODEL INPUT... --out preds.csv`).

MODEL: a shipped model's name (`esnet models`), a `.keras` file, a SavedModel directory, or a TF
Serving model directory (`saved_models/<name>/`, the highest version is used). INPUT: raw DFT files
or directories (any format `esnet featurize` reads), `.npz` features, or a directory with
labels.csv + calculations. CSV columns: id, formula, predicted_formation_energy_per_atom, for
ensembles predicted_formation_energy_per_atom_std, for ensembles with a calibrated interval
predicted_formation_energy_per_atom_lower and _upper (its bounds, 90 % for the shipped models), for
models with a recorded training domain
`domain` ('' inside it, else why), and where known the truths formation_energy_per_atom,
e_above_hull (all eV/atom).
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.isdos import ENERGY_INPUTS, require_energies
from esnet_tf.isdos import (DOMAIN_COLUMN, INPUT_NAMES, OUTPUT_NAME, PAPER_GRID, PREDICTION_COLUMN,
                            PREDICTION_STD_COLUMN, EnergyGrid)
from esnet_tf.atomic import atomic_path, refuse_existing
from esnet_tf.errors import UserError

PRED_COLUMN = PREDICTION_COLUMN
#: second output of an ensemble model (eV/atom)
STD_OUTPUT_NAME = f"{OUTPUT_NAME}_std"
#: the calibrated interval's outputs of an ensemble that has them (eV/atom), and their CSV columns
LOWER_OUTPUT_NAME, UPPER_OUTPUT_NAME = f"{OUTPUT_NAME}_lower", f"{OUTPUT_NAME}_upper"
PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN = f"{PREDICTION_COLUMN}_lower", f"{PREDICTION_COLUMN}_upper"


def resolve_saved_model_dir(path: Path) -> Path | None:
    """The SavedModel directory of `path` (itself, or its highest numeric version), else None."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()] \
        if path.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


class Predictor:
    """A loaded ESNet (`.keras` or SavedModel) mapping raw IS-DOS arrays to eV/atom.

    `predict(inputs)` takes a dict with dos_up, dos_down (N, n_points, 9) and composition (N, 118)
    and returns float32 (N,) formation energies in eV/atom; `predict_with_std` also returns the
    ensemble's standard deviation (eV/atom; None for a single model, `has_std` False).
    """

    def __init__(self, path: str | Path, precision: str = "float32", *, trust_model_code: bool = False) -> None:
        """`precision` of a single `.keras` model's inference: float32 (default: the same numbers on
        every machine), bfloat16, or auto (measured once per machine, never slower than float32;
        within 5 meV/atom of float32). A SavedModel loads only when `esnet_tf.trust` trusts it
        (shipped, or exported by esnet-tf) or with `trust_model_code` (it runs the model's code)."""
        from esnet_tf.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.precision = precision
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: model not found")
        self.path = path
        saved = resolve_saved_model_dir(path) if path.is_dir() else None
        if path.suffix == ".keras" and path.is_file():
            import esnet_tf.ensemble  # noqa: F401  (registers the ensemble layer)
            from esnet_tf.trust import load_keras

            self.kind = "keras"
            self.model = load_keras(path)  # Keras safe mode; a hostile or broken archive: one line
            shapes = {t.name: t.shape for t in self.model.inputs}
            outputs = list(self.model.output) if isinstance(self.model.output, dict) else list(self.model.output_names)
        elif saved is not None:
            from esnet_tf.trust import load_saved_model

            self.kind = "saved_model"
            self.path = saved
            self.model = load_saved_model(saved, trust_model_code)  # refused unless trusted (esnet_tf.trust)
            if "serving_default" not in self.model.signatures:
                raise UserError(f"{saved}: SavedModel has no 'serving_default' signature")
            self.signature = self.model.signatures["serving_default"]
            specs = self.signature.structured_input_signature[1]
            shapes = {k: v.shape for k, v in specs.items()}
            outputs = list(self.signature.structured_outputs)
        else:
            raise UserError(f"{path}: not a .keras file or a SavedModel directory (saved_model.pb)")
        missing = [k for k in INPUT_NAMES if k not in shapes]
        if missing:
            raise UserError(f"{path}: model lacks inputs {missing}; is it an ESNet model?")
        self.energy_inputs = tuple(k for k in ENERGY_INPUTS if k in shapes)  # (None, 1) eV/atom each
        self.n_points = int(shapes["dos_up"][1])
        self.has_std = STD_OUTPUT_NAME in outputs
        self.has_interval = LOWER_OUTPUT_NAME in outputs and UPPER_OUTPUT_NAME in outputs

    def predict(self, inputs: dict, batch_size: int = 256, source: str = "") -> np.ndarray:
        """Formation energies (eV/atom), float32 (N,), for raw IS-DOS inputs (an ensemble's mean).

        Missing inputs, wrong shapes and NaN/inf values (naming the id) raise `UserError` first.
        A single `.keras` model runs through `esnet_tf.precision.inference_function` (the one fast
        inference path the benchmark times) in `self.precision`.
        """
        if self.kind == "keras" and not self.has_std:
            from esnet_tf.data import check_finite, check_shapes
            from esnet_tf.precision import INFERENCE_BATCH, inference_function

            check_shapes(inputs, self.n_points, source=source)
            check_finite(inputs, source)
            require_energies(inputs, self.energy_inputs, source)
            micro = min(batch_size, INFERENCE_BATCH)  # 64 measured faster per example than 256 (bf16 and f32)
            if getattr(self, "_fast", None) is None or self._fast.batch_size != micro:
                self._fast = inference_function(self.model, self.precision, batch_size=micro)[0]
                self._fast.batch_size = micro
            return self._fast(inputs)
        return self.predict_with_std(inputs, batch_size, source)[0]

    def predict_with_std(self, inputs: dict, batch_size: int = 256,
                         source: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, std) formation energies (eV/atom), float32 (N,) each; std None for a single model."""
        out = self.predict_outputs(inputs, batch_size, source)
        return out[OUTPUT_NAME], out.get(STD_OUTPUT_NAME)

    def predict_outputs(self, inputs: dict, batch_size: int = 256, source: str = "") -> dict[str, np.ndarray]:
        """Every output the model serves, float32 (N,) eV/atom each: the mean (`OUTPUT_NAME`) and, where the
        model has them, its std and the calibrated interval's lower / upper bounds."""
        from esnet_tf.data import check_finite, check_shapes

        check_shapes(inputs, self.n_points, source=source)
        check_finite(inputs, source)
        require_energies(inputs, self.energy_inputs, source)
        keys = [OUTPUT_NAME] + ([STD_OUTPUT_NAME] if self.has_std else []) \
            + ([LOWER_OUTPUT_NAME, UPPER_OUTPUT_NAME] if self.has_interval else [])
        parts: dict[str, list] = {k: [] for k in keys}
        n = len(inputs["dos_up"])
        for start in range(0, n, batch_size):
            batch = {k: np.asarray(inputs[k][start:start + batch_size], dtype=np.float32) for k in INPUT_NAMES}
            batch.update({k: np.asarray(inputs[k][start:start + batch_size], np.float32).reshape(-1, 1)
                          for k in self.energy_inputs})
            if self.kind == "keras":
                y = self.model.predict_on_batch(batch)
            else:
                import tensorflow as tf

                y = self.signature(**{k: tf.constant(v) for k, v in batch.items()})
            for k in keys:
                parts[k].append(np.asarray(y[k], dtype=np.float32).reshape(-1))
        return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}


def model_grid(n_points: int) -> EnergyGrid:
    """The energy grid a model with `n_points` takes: the IS-DOS window of the contract (E - E_F from
    -20 to 10 eV) at that resolution (models record only their number of points)."""
    return EnergyGrid(PAPER_GRID.e_min, PAPER_GRID.e_max, int(n_points))


def _check_npz_grid(spec: str, stored: np.ndarray | None, grid: EnergyGrid) -> None:
    """Refuse features whose stored energy axis is not `grid` (same length is not enough)."""
    if stored is None:
        return
    stored = np.asarray(stored, dtype=np.float64).reshape(-1)
    if stored.shape != (grid.n_points,) or not np.allclose(stored, grid.energies(), atol=1e-4):
        have = f"[{stored.min():g}, {stored.max():g}] eV, {len(stored)} points" if len(stored) else "empty"
        raise UserError(f"{spec}: features on E - E_F {have}, but the model takes [{grid.e_min:g}, {grid.e_max:g}] eV, "
                        f"{grid.n_points} points; re-featurize with `esnet featurize --e-min {grid.e_min:g} "
                        f"--e-max {grid.e_max:g} --n-points {grid.n_points}`")


#: an `esnet dft` calculation directory: the IS single point's IS-DOS beside the task / result records
DFT_IS_FILE = "is.gpawdos.npz"
DFT_CALC_MARKERS = ("task.json", "result.json")


def is_dft_calc_dir(path: str | Path) -> bool:
    """True for an `esnet dft` calculation directory (is.gpawdos.npz beside task.json or result.json)."""
    p = Path(path)
    return p.is_dir() and (p / DFT_IS_FILE).is_file() and any((p / m).is_file() for m in DFT_CALC_MARKERS)


def dft_calc_inputs(directory: str | Path) -> list[str] | None:
    """The inputs of a directory of `esnet dft` calculations, or None when it holds none.

    A calculation directory stands for its initial structure: its is.gpawdos.npz (the IS single point,
    with the IS energy), not rs.gpawdos.npz (the relaxed structure) nor the JSON records. `directory`
    may be one calculation or hold several (walked, symbolic links not followed); DFT files outside
    the calculation directories are kept as inputs of their own.
    """
    import os

    from esnet_tf.readers import source_kind

    root = Path(directory)
    if is_dft_calc_dir(root):
        return [str(root / DFT_IS_FILE)]
    calcs: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        if is_dft_calc_dir(here):
            calcs.append(str(here / DFT_IS_FILE))
            dirnames[:] = []
            continue
        others += [str(here / f) for f in sorted(filenames) if source_kind(here / f) is not None]
        for d in list(dirnames):
            sub = here / d
            if sub.is_symlink():
                dirnames.remove(d)
            elif not is_dft_calc_dir(sub) and source_kind(sub) is not None:
                others.append(str(sub))  # a VASP run directory: one input
                dirnames.remove(d)
    return calcs + others if calcs else None


def dft_files_of(spec: str) -> list[str]:
    """The DFT inputs an INPUT that is neither features nor a labels directory stands for: an `esnet dft`
    calculation directory (or a directory of them) gives its initial structures' files, anything
    else is itself (walked later by the featurizer); FileNotFoundError when it does not exist."""
    if not Path(spec).exists():
        raise FileNotFoundError(f"{spec}: input not found")
    calcs = dft_calc_inputs(spec) if Path(spec).is_dir() else None
    return calcs if calcs is not None else [spec]


def load_inputs(paths: Sequence[str], labels: str | None = None, grid: EnergyGrid | None = None, *,
                workers: int | None = None,
                references: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays (inputs, id, formula, code, truths) of every INPUT, and the failures (one line each).

    INPUT: `.npz` features of `esnet featurize`, a directory with labels.csv, or DFT files and
    directories (featurized here, on `grid`); an `esnet dft` calculation directory, or a directory of
    them, stands for the initial structures (`dft_calc_inputs`). Truths come from `labels` (a labels CSV) where given.
    `code` is the DFT code of each row ('' where unknown), for the domain check. With `grid`, an
    `.npz` whose stored energy axis differs is refused. DFT files are featurized on `workers`
    processes (`esnet_tf.featurize.featurize_paths`; None = automatic); `references` ({element:
    eV/atom}, `--references`) give the IS formation energy of DFT files whose code brings none (VASP,
    MP). Every file is read bounded (`esnet_tf.readers.limits`: only the arrays used, within the
    per-file limit).
    """
    from esnet_tf.data import LABEL_KEYS, is_labels_dir, load_dir_arrays, load_npz_arrays, stack_examples
    from esnet_tf.labels import labels_by_id
    from esnet_tf.featurize import ENERGY_ARRAYS, featurize_paths
    from esnet_tf.readers.limits import load_npz

    parts, raw = [], []
    for spec in paths:
        if spec.endswith(".npz") and not spec.endswith(".gpawdos.npz"):
            part = dict(load_npz_arrays(spec, labels, require_labels=False))
            d = load_npz(spec, ("code", "energies"))
            part["code"] = d["code"].astype(str) if "code" in d else np.full(len(part["id"]), "")
            if grid is not None:
                _check_npz_grid(spec, d.get("energies"), grid)
            parts.append(part)
        elif is_labels_dir(spec):
            part = dict(load_dir_arrays(spec, grid or PAPER_GRID))
            parts.append(part)
        else:
            raw += dft_files_of(spec)
    failures: list[str] = []
    if raw:
        examples, failures = featurize_paths(raw, grid or PAPER_GRID, workers=workers, references=references)
        if examples:
            truths = labels_by_id(labels, path_column=None, require_energy=False) if labels else None
            part = stack_examples(examples, truths)
            parts.append(part)
    if not parts:
        return {}, failures
    keys = ("dos_up", "dos_down", "composition", "id", "formula", "code", *LABEL_KEYS, *ENERGY_ARRAYS)
    for i, p in enumerate(parts):
        shapes = {k: np.shape(p[k])[1:] for k in ("dos_up", "dos_down", "composition")}
        if shapes != {k: np.shape(parts[0][k])[1:] for k in shapes}:
            raise UserError(f"{paths[i] if i < len(paths) else 'inputs'}: array shapes {shapes} differ from "
                              "the other inputs (features on another energy grid?)")
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}, failures


def write_predictions(path: str | Path, arrays: dict, predictions: np.ndarray, *, std: np.ndarray | None = None,
                      domain: Sequence[str] | None = None, lower: np.ndarray | None = None,
                      upper: np.ndarray | None = None) -> Path:
    """CSV of id, formula, predicted_formation_energy_per_atom [, its _std] [, _lower, _upper] [, domain]
    (+ known truths).

    Energies in eV/atom; `std` (ensembles) adds predicted_formation_energy_per_atom_std, `lower` and
    `upper` (ensembles with a calibrated interval) its _lower and _upper bounds, `domain` (models with a
    recorded training domain) the `domain` column ('' inside the domain, else why).
    """
    path = Path(path)
    truths = [k for k in ("formation_energy_per_atom", "e_above_hull")
              if k in arrays and np.isfinite(np.asarray(arrays[k], dtype=float)).any()]
    interval = lower is not None and upper is not None
    header = ["id", "formula", PRED_COLUMN] + ([PREDICTION_STD_COLUMN] if std is not None else []) \
        + ([PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN] if interval else []) \
        + ([DOMAIN_COLUMN] if domain is not None else []) + truths
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(len(predictions)):
            row = [arrays["id"][i], arrays["formula"][i] if "formula" in arrays else "", f"{predictions[i]:.6f}"]
            if std is not None:
                row.append(f"{std[i]:.6f}")
            if interval:
                row += [f"{lower[i]:.6f}", f"{upper[i]:.6f}"]
            if domain is not None:
                row.append(domain[i])
            for k in truths:
                v = float(arrays[k][i])
                row.append(f"{v:.6f}" if np.isfinite(v) else "")
            w.writerow(row)
    return path


def predict_files(model: str | Path, inputs: Sequence[str], *, labels: str | None = None,
                  batch_size: int = 256, workers: int | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, "Predictor", list[str]]:
    """Predict every INPUT with `model`: (arrays, predictions eV/atom, predictor, failures).

    `model`: a path or a shipped model's name. Raises UserError when no input could be featurized.
    (`esnet_tf.pretrained.ESNetModel.predict` adds the ensemble std and the domain column.)
    """
    from esnet_tf.pretrained import model_file, resolve

    if batch_size < 1:
        raise UserError(f"batch size must be a positive number of examples, got {batch_size}")
    predictor = Predictor(model_file(resolve(model)) if not Path(model).exists() else model)
    arrays, failures = load_inputs(inputs, labels, model_grid(predictor.n_points), workers=workers)
    if not arrays:
        raise UserError("no input could be featurized" if failures else "no inputs")
    return arrays, predictor.predict(arrays, batch_size), predictor, failures


# ---------------------------------------------------------------- `esnet predict`

@dataclass(frozen=True)
class PredictConfig:
    """What `esnet predict` does (each field is a flag of the same name; `predict_to_csv` runs it).

    `model`: a shipped model's name or a path (.keras, SavedModel, TF Serving model dir). `inputs`:
    DFT files/dirs, `.npz` features or labels directories. `out`: the predictions CSV (eV/atom).
    Invalid values raise `UserError` naming the flag and the fix.
    """

    model: str | None = None
    inputs: tuple[str, ...] = field(default_factory=tuple)
    out: str = "preds.csv"
    labels: str | None = None       #: labels CSV adding the truths (eV/atom)
    batch_size: int = 256           #: examples per model call
    workers: int | None = None      #: processes featurizing DFT files (None: automatic)
    precision: str = "float32"      #: inference precision of a single .keras model: float32, bfloat16, auto
    strict: bool = False            #: refuse inputs outside the model's training domain
    trust_model_code: bool = False  #: load a SavedModel esnet-tf neither ships nor exported (runs its code)
    references: str | None = None   #: elemental references (CSV element,energy_per_atom or MP entries JSON)
    #: for the IS formation energy of VASP / MP inputs (GPAW calculations of `esnet dft` bring their own)
    #: CSV of `esnet uip relax` on the inputs' structures (rows by id): CHGNet's formation energy, for models that
    #: take it (`uip_formation_energy_per_atom`, computed with the model's stored CHGNet references)
    uip: str | None = None
    overwrite: bool = False         #: replace an existing `out` (else it is refused before the model loads)
    #: Apache Beam pipeline options ('runner=DirectRunner,...'): run the prediction as a Beam pipeline
    beam_pipeline_options: str | None = None
    chunk_size: int = 512           #: inputs read / featurized per chunk (memory is flat in the pool size)

    def __post_init__(self) -> None:
        import os

        from esnet_tf.precision import PRECISIONS

        object.__setattr__(self, "inputs", tuple(os.fspath(p) for p in self.inputs))
        for name in ("model", "out", "labels", "references", "uip"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if not self.model:
            raise UserError("no MODEL given: esnet predict MODEL INPUT... (or --model NAME INPUT...); "
                            "`esnet models` lists the shipped ones")
        if not self.inputs:
            raise UserError(f"no INPUT given for model {self.model}: pass DFT files, .npz features or a labels "
                            "directory")
        if not self.out:
            raise UserError("--out must name the predictions CSV to write")
        if not _positive_int(self.batch_size):
            raise UserError(f"--batch-size must be a positive number of examples, got {self.batch_size}")
        if not _positive_int(self.chunk_size):
            raise UserError(f"--chunk-size must be a positive number of inputs, got {self.chunk_size}")
        if self.workers is not None and not _positive_int(self.workers):
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.beam_pipeline_options is not None and not str(self.beam_pipeline_options).strip():
            raise UserError("--beam-pipeline-options is empty: give e.g. 'runner=DirectRunner' (or drop the flag)")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def check_energy_inputs(arrays: dict, names: Sequence[str], model: str, references: str | None = None) -> None:
    """Refuse, in one line, inputs without a finite value of an energy input `names` the model takes:
    it names the rows, their DFT code and the fix (`--references FILE` for VASP / MP inputs)."""
    for name in names:
        values = np.asarray(arrays.get(name, np.full(len(arrays["id"]), np.nan)), np.float64).reshape(
            len(arrays["id"]), -1)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if not len(bad):
            continue
        ids = ", ".join(str(arrays["id"][i]) for i in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        codes = sorted({str(arrays["code"][i]).split(" ")[0] for i in bad if "code" in arrays} - {""})
        fix = ("the --references file lacks an element of theirs or does not match: give a reference for every "
               "element" if references else
               "pass --references FILE (CSV element,energy_per_atom, or an MP ComputedEntry JSON, of the same code "
               "and settings); GPAW calculations of `esnet dft` bring their own references")
        raise UserError(f"{len(bad)} of {len(arrays['id'])} input(s) ({ids}; code {'/'.join(codes) or 'unknown'}) "
                        f"have no {name} (eV/atom), which model {model} takes: {fix}")


def predict_to_csv(config: PredictConfig, *, after_commit: Callable[[int], None] | None = None
                   ) -> tuple[Any, Any, list[str]]:
    """Run `esnet predict`: load the model, then stream the inputs (`esnet_tf.stream`): chunks of
    `config.chunk_size` inputs read and featurized in worker processes while the model predicts the
    previous ones, rows written to `<out>.partial/` as they come; the same command after a stop resumes
    there. `config.out` is written (atomically) only when every input is done, so an existing one is
    complete; it is refused in one line unless `config.overwrite`, before anything loads. With
    `config.beam_pipeline_options` the same rows come from an Apache Beam pipeline
    (`esnet_tf.predict_beam`). `after_commit(rows written)` runs after each commit of the local
    path (the hook the tests stop a run with).

    Returns (the `esnet_tf.pretrained.PredictionTable` of the CSV's columns, the model, the failures:
    inputs that could not be featurized, one line each, also printed to stderr). No input featurized:
    `UserError`, no CSV.
    """
    from esnet_tf.pretrained import PredictionTable, load_model
    from esnet_tf.stream import Partial, finalize, plan_inputs, stream_predict

    if not isinstance(config, PredictConfig):
        raise TypeError(f"predict_to_csv() takes a PredictConfig, not {type(config).__name__}")
    refuse_existing([config.out], config.overwrite)  # before the model loads: a refused run costs nothing
    model = load_model(config.model, trust_model_code=config.trust_model_code)
    model.predictor.precision = config.precision
    uip = model.uip_inputs(config.uip)  # a model taking CHGNet's E_f needs --uip (one line), read once here
    references = None
    if config.references:
        from esnet_tf.references import load_references

        references = load_references(config.references)
    plan = plan_inputs(list(config.inputs), config.labels, model_grid(model.predictor.n_points),
                       references=references)

    def fail(line: str) -> None:
        print(f"FAIL {line}", file=sys.stderr)

    for f in plan.failures:
        fail(f)
    partial = Partial(config.out)
    try:
        if config.beam_pipeline_options:
            from esnet_tf.predict_beam import predict_beam

            streamed, n_rows = predict_beam(config, plan, config.beam_pipeline_options,
                                            has_std=model.predictor.has_std,
                                            has_interval=model.predictor.has_interval,
                                            has_domain=model.domain is not None, model_ref=config.model)
            for f in streamed:
                fail(f)
        else:
            streamed, n_rows = stream_predict(config, model, plan, on_failure=fail, after_commit=after_commit,
                                              uip=uip)
    except UserError:
        partial.remove()  # a refused command (--strict, a missing energy input, a bad labels row) leaves nothing
        raise
    failures = plan.failures + streamed
    if not n_rows:
        partial.remove()
        raise UserError("no input could be featurized" if failures else "no inputs")
    columns, duplicates = finalize(partial.rows_path, config.out, config.labels)
    partial.remove()
    for f in duplicates:
        fail(f)
    failures += duplicates
    return PredictionTable(_table_columns(columns), model.name, failures), model, failures


def _table_columns(columns: dict[str, list]) -> dict[str, np.ndarray]:
    """The CSV's columns (strings) as a PredictionTable's: numbers float64 (NaN where blank)."""
    out: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if name in ("id", "formula"):
            out[name] = np.asarray(values, dtype=str)
        elif name == DOMAIN_COLUMN:
            out[name] = np.asarray(values, dtype=object)
        else:
            out[name] = np.array([float(v) if v else np.nan for v in values], np.float64)
    return out
