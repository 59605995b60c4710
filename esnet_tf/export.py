"""`esnet export`: a trained `.keras` ESNet -> TF Serving SavedModel `DIR/NAME/VERSION/`.

Written by Keras 3 `model.export(..., format="tf_saved_model")`: signature `serving_default` with
inputs dos_up (None, 1500, 9), dos_down (None, 1500, 9), composition (None, 118) float32 (raw
IS-DOS; the normalisation is inside) and output formation_energy_per_atom (None, 1) in eV/atom
(DESIGN.md section 5). `assets.extra/tf_serving_warmup_requests` holds PredictionLog records
(one PredictRequest per real example) that TF Serving replays at load time. After writing, the
SavedModel is reloaded and checked against the .keras model on those examples.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME
from esnet_tf.errors import UserError

SIGNATURE = "serving_default"
WARMUP_FILE = "tf_serving_warmup_requests"
#: max |SavedModel - .keras| accepted by the post-export check (eV/atom)
TOLERANCE = 1e-5


def warmup_requests(inputs: dict, model_name: str, n: int | None = None) -> list:
    """PredictionLog protos, one PredictRequest (batch of 1) per example of `inputs`."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    count = len(inputs["dos_up"]) if n is None else min(n, len(inputs["dos_up"]))
    logs = []
    for i in range(count):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE))
        for key in INPUT_NAMES:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(inputs[key][i:i + 1], dtype=np.float32)))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(export_dir: Path, logs: list) -> Path:
    """Write PredictionLog records to `export_dir/assets.extra/tf_serving_warmup_requests` (TFRecord)."""
    import tensorflow as tf

    path = export_dir / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
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


def warmup_examples(model_path: Path, source: str | None, n: int) -> dict:
    """Real examples for warmup: `source` (.npz / labels dir / DFT files) or the run dir's warmup_examples.npz."""
    from esnet_tf.predict import load_inputs

    if source is None:
        default = model_path.parent / "warmup_examples.npz"
        if not default.is_file():
            raise UserError(f"{model_path}: no warmup_examples.npz beside the model; pass --warmup-data "
                              "(features .npz, a labels directory or DFT files) or --no-warmup")
        with np.load(default, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    else:
        arrays, failures = load_inputs([str(s) for s in source.split(",")])
        if not arrays:
            raise UserError(f"{source}: no usable warmup examples ({'; '.join(failures) or 'empty'})")
    return {k: v[:n] for k, v in arrays.items()}


def export(model_path: str | Path, out: str | Path = "saved_models", name: str = "esnet", version: int = 1, *,
           warmup_data: str | None = None, n_warmup: int = 4, overwrite: bool = False) -> dict:
    """Export and verify; returns {'path', 'n_warmup', 'max_abs_diff'} (diff in eV/atom)."""
    import tensorflow as tf

    from esnet_tf.data import check_finite, check_shapes
    from esnet_tf.model import load_model

    model_path = Path(model_path)
    if not model_path.is_file() or model_path.suffix != ".keras":
        raise UserError(f"{model_path}: expected a .keras model file (e.g. runs/<run>/best.keras)")
    if version < 1:
        raise UserError(f"--version must be a positive integer (TF Serving version directory), got {version}")
    target = Path(out) / name / str(version)
    if target.exists():
        if not overwrite:
            raise UserError(f"{target} exists; choose another --version or pass --overwrite")
        shutil.rmtree(target)
    model = load_model(model_path)
    names = sorted(t.name for t in model.inputs)
    if names != sorted(INPUT_NAMES):
        raise UserError(f"{model_path}: inputs {names} are not the ESNet inputs {list(INPUT_NAMES)}")
    examples = warmup_examples(model_path, warmup_data, n_warmup) if n_warmup > 0 else None
    if examples is not None:
        n_points = int({t.name: t for t in model.inputs}["dos_up"].shape[1])
        check_shapes(examples, n_points, source="warmup examples")
        check_finite(examples, "warmup examples")

    target.parent.mkdir(parents=True, exist_ok=True)
    model.export(str(target), format="tf_saved_model", verbose=False)
    result = {"path": str(target), "n_warmup": 0, "max_abs_diff": None}
    if examples is None:
        return result
    logs = warmup_requests(examples, name, n_warmup)
    write_warmup(target, logs)

    # verify: replay the warmup records through the reloaded signature, compare with .keras
    signature = tf.saved_model.load(str(target)).signatures[SIGNATURE]
    served = []
    for log in read_warmup(target / "assets.extra" / WARMUP_FILE):
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in log.predict_log.request.inputs.items()}
        served.append(signature(**feeds)[OUTPUT_NAME].numpy().reshape(-1))
    batch = {k: np.asarray(examples[k][:len(served)], np.float32) for k in INPUT_NAMES}
    reference = np.asarray(model.predict_on_batch(batch)[OUTPUT_NAME]).reshape(-1)
    diff = float(np.max(np.abs(np.concatenate(served) - reference)))
    if diff > TOLERANCE:
        raise RuntimeError(f"{target}: SavedModel and {model_path} disagree by {diff:.3g} eV/atom")
    result.update(n_warmup=len(logs), max_abs_diff=diff)
    return result


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained .keras model (e.g. runs/<run>/best.keras)")
    p.add_argument("--out", default="saved_models", help="TF Serving model base directory")
    p.add_argument("--name", default="esnet", help="model name (directory and REST path /v1/models/<name>)")
    p.add_argument("--version", type=int, default=1, help="model version (integer directory)")
    p.add_argument("--warmup-data", help="real examples for the warmup file: features .npz, a labels directory or "
                   "DFT files (comma-separated); default: warmup_examples.npz beside the model")
    p.add_argument("--n-warmup", type=int, default=4, help="number of warmup requests (0 = no warmup file)")
    p.add_argument("--no-warmup", action="store_true", help="write no warmup file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR/NAME/VERSION")


def run(args: argparse.Namespace) -> int:
    result = export(args.model, args.out, args.name, args.version, warmup_data=args.warmup_data,
                    n_warmup=0 if args.no_warmup else args.n_warmup, overwrite=args.overwrite)
    check = (f"; {result['n_warmup']} warmup request(s), SavedModel vs .keras max |diff| "
             f"{result['max_abs_diff']:.2g} eV/atom" if result["n_warmup"] else "; no warmup file")
    print(f"exported {args.model} -> {result['path']} (signature {SIGNATURE}: "
          f"{', '.join(INPUT_NAMES)} -> {OUTPUT_NAME}){check}")
    return 0
