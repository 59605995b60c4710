"""A trained `.keras` ESNet -> TF Serving SavedModel `DIR/NAME/VERSION/` (`esnet export`).

Written by `write_saved_model` (a frozen inference graph, no variables): signature `serving_default` with
inputs dos_up (None, 1500, 9), dos_down (None, 1500, 9), composition (None, 118) float32 (raw
IS-DOS; the normalisation is inside) and output formation_energy_per_atom (None, 1) in eV/atom
(DESIGN.md section 5); an ensemble (`esnet_tf.ensemble`, or `export_ensemble` over member `.keras`
files) adds the output formation_energy_per_atom_std (None, 1) in eV/atom, and an ensemble built with
an interval (`export_ensemble(..., interval_scale=q)`) the outputs formation_energy_per_atom_lower /
_upper (None, 1) eV/atom, its calibrated interval. A model with energy
inputs (`ESNetConfig.energy_inputs`) adds one input (None, 1) float32 eV/atom per energy, e.g.
is_formation_energy_per_atom, and its warmup requests carry it; warmup examples without a known
value of it are refused.
`assets.extra/tf_serving_warmup_requests` holds PredictionLog records
(one PredictRequest per real example) that TF Serving replays at load time. After writing, the
SavedModel is reloaded and checked against the .keras model on those examples.

Warmup examples come from `--warmup-data`, else the run directory's `warmup_examples.npz`, else
the embedded demo data (real GPAW IS-DOS), so any `.keras` exports. Without the `serving` extra
(tensorflow-serving-api) the SavedModel is still written, without the warmup file. The version
directory is written under a temporary name and renamed into place only after it loaded and
answered; an existing version is replaced (with `overwrite`) only then.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from esnet_tf.isdos import ENERGY_INPUTS, INPUT_NAMES, OUTPUT_NAME, require_energies
from esnet_tf.atomic import atomic_dir
from esnet_tf.errors import UserError

SIGNATURE = "serving_default"
WARMUP_FILE = "tf_serving_warmup_requests"
#: max |SavedModel - .keras| accepted by the post-export check (eV/atom)
TOLERANCE = 1e-5


def warmup_requests(inputs: dict, model_name: str, n: int | None = None,
                    input_names: tuple[str, ...] = INPUT_NAMES) -> list:
    """PredictionLog protos, one PredictRequest (batch of 1) per example of `inputs`, holding the
    model's `input_names` (the IS-DOS inputs, then any energy inputs, (1, 1) eV/atom)."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    count = len(inputs["dos_up"]) if n is None else min(n, len(inputs["dos_up"]))
    logs = []
    for i in range(count):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE))
        for key in input_names:
            value = np.asarray(inputs[key][i:i + 1], dtype=np.float32)
            if key in ENERGY_INPUTS:
                value = value.reshape(-1, 1)  # (1, 1): an energy array may be stored (N,)
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(export_dir: Path, logs: list) -> Path:
    """Write PredictionLog records to `export_dir/assets.extra/tf_serving_warmup_requests` (TFRecord)."""
    import tensorflow as tf

    path = export_dir / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString(deterministic=True))  # map fields in key order: same bytes every run
    return path


def read_warmup(path: str | Path) -> list:
    """Parse a warmup file back into PredictionLog protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs


def serving_api_available() -> bool:
    """True when tensorflow-serving-api (the `serving` extra) is installed."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def demo_examples(n: int, n_points: int = 1500) -> dict:
    """`n` real IS-DOS examples of the embedded demo data (the first rows of its labels.csv)."""
    from esnet_tf import resources
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.isdos import PAPER_GRID
    from esnet_tf.labels import read_labels

    if n_points != PAPER_GRID.n_points:
        raise UserError(f"the model takes {n_points} energy points, the embedded demo data {PAPER_GRID.n_points}; "
                        "pass --warmup-data with examples on the model's grid")
    rows = read_labels(resources.demo_labels())[:n]
    return stack_examples([featurize(r.file, id=r.id) for r in rows])


def warmup_examples(model_path: Path, source: str | None, n: int, n_points: int = 1500) -> tuple[dict, str]:
    """Real examples for warmup and where they came from: `source` (.npz / labels dir / DFT files),
    else the run dir's warmup_examples.npz, else the embedded demo data. Files are read bounded
    (`esnet_tf.readers.limits`): only the model's input arrays of the .npz, within the per-file limit."""
    from esnet_tf.predict import load_inputs
    from esnet_tf.readers.limits import load_npz

    if source is None:
        default = model_path.parent / "warmup_examples.npz"
        if not default.is_file():
            return demo_examples(n, n_points), "the embedded demo data"
        arrays = load_npz(default, INPUT_NAMES + ENERGY_INPUTS + ("id",), required=INPUT_NAMES)
        origin = str(default)
    else:
        arrays, failures = load_inputs([str(s) for s in source.split(",")])
        if not arrays:
            raise UserError(f"{source}: no usable warmup examples ({'; '.join(failures) or 'empty'})")
        if source.endswith(".npz") and not source.endswith(".gpawdos.npz") and "," not in source:
            # energy inputs the featurizer does not make (uip_formation_energy_per_atom): the same rows of the file
            extra = load_npz(source, ENERGY_INPUTS)
            arrays.update({k: v for k, v in extra.items() if k not in arrays and len(v) == len(arrays["id"])})
        origin = source
    return {k: v[:n] for k, v in arrays.items()}, origin


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model_name(name: str) -> str:
    """A model name is one directory (and the REST path /v1/models/<name>): no '/', no '..'."""
    if not _NAME.match(name or "") or ".." in name:
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (one directory inside "
                        "--out; no '/' or '..')")
    return name


def write_saved_model(model, path: str | Path) -> Path:
    """Write `model`'s float32 inference function (training=False) as a SavedModel with signature
    `serving_default`: inputs by model input name, outputs by model output name.

    It is the frozen graph `esnet predict` runs (`esnet_tf.precision.inference_function`): the
    weights are constants and the ops are traced without Keras's name scopes, so a 5-member
    ensemble's SavedModel is one 4.3 MB `saved_model.pb` (Keras's `model.export` wrote 18.5 MB: each
    weight twice, as the Keras variable and as its TF variable, and the layer path in every op name).
    """
    import tensorflow as tf

    from esnet_tf.precision import frozen_inference

    graph = frozen_inference(model, "float32")
    specs = list(graph.specs.values())
    names = list(graph.specs)

    def serve(*tensors):
        return graph(dict(zip(names, tensors)))

    signature = tf.function(serve, input_signature=specs).get_concrete_function()
    tf.saved_model.save(tf.Module(), str(path), signatures={SIGNATURE: signature})
    return Path(path)


def export(model_path: str | Path, out: str | Path = "saved_models", name: str = "esnet", version: int = 1, *,
           warmup_data: str | None = None, n_warmup: int = 4, overwrite: bool = False) -> dict:
    """Export and verify; returns {'path', 'n_warmup', 'max_abs_diff'} (diff in eV/atom)."""
    import tensorflow as tf

    import esnet_tf.ensemble  # noqa: F401  (registers the ensemble layer)
    from esnet_tf.data import check_finite, check_shapes
    from esnet_tf.ensemble import LOWER_OUTPUT_NAME, STD_OUTPUT_NAME, UPPER_OUTPUT_NAME
    from esnet_tf.model import load_model

    model_path = Path(model_path)
    if not model_path.is_file() or model_path.suffix != ".keras":
        raise UserError(f"{model_path}: expected a .keras model file (e.g. runs/<run>/best.keras)")
    check_model_name(name)
    if version < 1:
        raise UserError(f"--version must be a positive integer (TF Serving version directory), got {version}")
    target = Path(out) / name / str(version)
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; choose another --version or pass --overwrite")
    model = load_model(model_path)
    names = sorted(t.name for t in model.inputs)
    energy_inputs = tuple(n for n in ENERGY_INPUTS if n in names)
    input_names = INPUT_NAMES + energy_inputs
    if names != sorted(input_names):
        raise UserError(f"{model_path}: inputs {names} are not the ESNet inputs {list(INPUT_NAMES)} "
                        f"(plus energy inputs among {list(ENERGY_INPUTS)})")
    n_points = int({t.name: t for t in model.inputs}["dos_up"].shape[1])
    outputs = list(model.output) if isinstance(model.output, dict) else list(model.output_names)
    checked = [OUTPUT_NAME] + [k for k in (STD_OUTPUT_NAME, LOWER_OUTPUT_NAME, UPPER_OUTPUT_NAME) if k in outputs]
    result = {"path": str(target), "n_warmup": 0, "max_abs_diff": None, "warmup_source": None, "note": ""}
    examples = None
    if n_warmup > 0 and not serving_api_available():
        result["note"] = ("no warmup file written: tf_serving_warmup_requests needs tensorflow-serving-api "
                          "(pip install 'esnet-tf[serving]')")
    elif n_warmup > 0:
        examples, result["warmup_source"] = warmup_examples(model_path, warmup_data, n_warmup, n_points)
        check_shapes(examples, n_points, source="warmup examples")
        check_finite(examples, "warmup examples")
        require_energies(examples, energy_inputs, f"warmup examples ({result['warmup_source']})")

    with atomic_dir(target, overwrite=overwrite) as tmp:
        write_saved_model(model, tmp)
        signature = tf.saved_model.load(str(tmp)).signatures[SIGNATURE]  # it loads and answers, or we stop here
        probe = examples if examples is not None else {
            "dos_up": np.zeros((1, n_points, 9), np.float32), "dos_down": np.zeros((1, n_points, 9), np.float32),
            "composition": np.eye(1, 118, dtype=np.float32), **{e: np.zeros((1, 1), np.float32) for e in energy_inputs}}
        batch = {k: np.asarray(probe[k][:max(1, n_warmup)], np.float32) for k in input_names}
        batch.update({e: batch[e].reshape(-1, 1) for e in energy_inputs})
        ref_out = model.predict_on_batch(batch)
        reference = np.concatenate([np.asarray(ref_out[k]).reshape(-1) for k in checked])
        if examples is not None:
            logs = warmup_requests(examples, name, n_warmup, input_names)
            write_warmup(tmp, logs)
            answers = {k: [] for k in checked}  # replay the warmup records through the reloaded signature
            for log in read_warmup(tmp / "assets.extra" / WARMUP_FILE):
                feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in log.predict_log.request.inputs.items()}
                got = signature(**feeds)
                for k in checked:
                    answers[k].append(got[k].numpy().reshape(-1))
            served = np.concatenate([np.concatenate(answers[k]) for k in checked])
            result["n_warmup"] = len(logs)
        else:
            got = signature(**{k: tf.constant(v) for k, v in batch.items()})
            served = np.concatenate([got[k].numpy().reshape(-1) for k in checked])
        result["outputs"] = checked
        result["inputs"] = list(input_names)
        diff = float(np.max(np.abs(served - reference)))
        if not diff <= TOLERANCE:
            raise RuntimeError(f"{target}: SavedModel and {model_path} disagree by {diff:.3g} eV/atom")
        result["max_abs_diff"] = diff
        from esnet_tf.trust import write_manifest  # marks the SavedModel as exported by esnet-tf (esnet_tf.trust)

        result["manifest"] = str(target / write_manifest(tmp).name)
    return result


def export_ensemble(member_paths, out: str | Path = "saved_models", name: str = "esnet-ensemble", version: int = 1, *,
                    std_scale: float = 1.0, interval_scale: float | None = None,
                    keras_out: str | Path | None = None, warmup_data: str | None = None,
                    n_warmup: int = 4, overwrite: bool = False) -> dict:
    """Build the deep ensemble of the member `.keras` files (`esnet_tf.ensemble.build_ensemble`), save it as
    `keras_out` (default `out/name/model.keras`) and export it like `export` (outputs mean and std, eV/atom;
    with `interval_scale` also the interval's lower and upper bounds)."""
    from esnet_tf.atomic import atomic_path
    from esnet_tf.ensemble import build_ensemble
    from esnet_tf.model import deflate_keras, load_model

    paths = [Path(p) for p in member_paths]
    bad = [str(p) for p in paths if not p.is_file() or p.suffix != ".keras"]
    if bad:
        raise UserError(f"{', '.join(bad)}: expected trained .keras member files (e.g. runs/<run>/best.keras)")
    if len(paths) < 2:
        raise UserError(f"--members needs at least 2 .keras files for an ensemble, got {len(paths)}")
    check_model_name(name)
    try:
        ensemble = build_ensemble([load_model(p) for p in paths], std_scale=std_scale, interval_scale=interval_scale)
    except ValueError as exc:
        raise UserError(f"--members: {exc}") from None
    keras_out = Path(keras_out) if keras_out is not None else Path(out) / name / "model.keras"
    with atomic_path(keras_out) as tmp:
        ensemble.save(str(tmp))
        deflate_keras(tmp)
    if warmup_data is None and (paths[0].parent / "warmup_examples.npz").is_file():
        warmup_data = str(paths[0].parent / "warmup_examples.npz")
    result = export(keras_out, out, name, version, warmup_data=warmup_data, n_warmup=n_warmup, overwrite=overwrite)
    result["keras"] = str(keras_out)
    return result

