"""TF Serving export: layout, signature contract (DESIGN.md section 5), warmup records, parity."""
from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from test_train import _workdir, real_data, trained_run

INPUTS = {"dos_up": (None, 1500, 9), "dos_down": (None, 1500, 9), "composition": (None, 118)}


@lru_cache(maxsize=1)
def exported() -> dict:
    from esnet_tf.export import export

    out = _workdir() / "saved_models"
    result = export(trained_run()["run_dir"] / "best.keras", out, "esnet", 7)
    return {"dir": Path(result["path"]), "result": result}


@lru_cache(maxsize=1)
def signature():
    import tensorflow as tf

    return tf.saved_model.load(str(exported()["dir"])).signatures["serving_default"]


def test_tf_serving_layout():
    e = exported()
    assert e["dir"].parent.name == "esnet" and e["dir"].name == "7"
    assert (e["dir"] / "saved_model.pb").is_file() and (e["dir"] / "variables").is_dir()
    assert (e["dir"] / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert e["result"]["n_warmup"] >= 1 and e["result"]["max_abs_diff"] < 1e-5


def test_signature_names_dtypes_shapes():
    import tensorflow as tf

    sig = signature()
    specs = sig.structured_input_signature[1]
    assert set(specs) == set(INPUTS)
    for name, shape in INPUTS.items():
        assert specs[name].dtype == tf.float32
        assert tuple(specs[name].shape.as_list()) == shape
    out = sig.structured_outputs
    assert list(out) == ["formation_energy_per_atom"]
    assert out["formation_energy_per_atom"].dtype == tf.float32
    assert tuple(out["formation_energy_per_atom"].shape.as_list()) == (None, 1)


def test_saved_model_cli_lists_signature():
    cli = shutil.which("saved_model_cli") or str(Path(os.sys.executable).parent / "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", str(exported()["dir"]), "--all"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    block = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    for name, shape in INPUTS.items():
        dims = ", ".join("-1" if d is None else str(d) for d in shape)
        assert f"inputs['{name}'] tensor_info:\n        dtype: DT_FLOAT\n        shape: ({dims})" in block
    assert "outputs['formation_energy_per_atom'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 1)" in block
    assert "Method name is: tensorflow/serving/predict" in block


def test_keras_and_saved_model_agree_on_real_inputs():
    import tensorflow as tf

    from esnet_tf.predict import Predictor

    arrays = real_data()["arrays"]
    keras_pred = Predictor(trained_run()["run_dir"] / "best.keras").predict(arrays)
    sm = Predictor(exported()["dir"].parent)  # TF Serving base dir: highest version is used
    assert sm.kind == "saved_model" and sm.path == exported()["dir"]
    sm_pred = sm.predict(arrays)
    assert np.max(np.abs(keras_pred - sm_pred)) < 1e-5
    direct = signature()(**{k: tf.constant(arrays[k][:5]) for k in INPUTS})["formation_energy_per_atom"]
    assert np.max(np.abs(direct.numpy().reshape(-1) - keras_pred[:5])) < 1e-5


def test_warmup_records_parse_and_run():
    import tensorflow as tf

    from esnet_tf.export import read_warmup

    logs = read_warmup(exported()["dir"] / "assets.extra" / "tf_serving_warmup_requests")
    assert len(logs) == exported()["result"]["n_warmup"]
    with np.load(trained_run()["run_dir"] / "warmup_examples.npz", allow_pickle=False) as w:
        real = {k: w[k] for k in w.files}
    for i, log in enumerate(logs):
        req = log.predict_log.request
        assert req.model_spec.name == "esnet" and req.model_spec.signature_name == "serving_default"
        assert set(req.inputs) == set(INPUTS)
        feeds = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
        np.testing.assert_array_equal(feeds["dos_up"][0], real["dos_up"][i])  # real examples, not noise
        y = signature()(**{k: tf.constant(v) for k, v in feeds.items()})["formation_energy_per_atom"].numpy()
        assert y.shape == (1, 1) and np.isfinite(y).all()


WARMUP_WRITER = """
import hashlib, sys
from pathlib import Path
import numpy as np
from esnet_tf.export import warmup_requests, write_warmup
with np.load(sys.argv[1], allow_pickle=False) as w:
    inputs = {k: w[k] for k in w.files}
print(hashlib.sha256(write_warmup(Path(sys.argv[2]), warmup_requests(inputs, "esnet")).read_bytes()).hexdigest())
"""


def test_warmup_file_is_byte_identical_across_processes(tmp_path):
    """Same examples, same bytes: the requests' input maps are serialised in key order (protobuf
    map order otherwise changes from one process to the next), so exports are reproducible."""
    import sys

    npz = trained_run()["run_dir"] / "warmup_examples.npz"
    digests = {subprocess.run([sys.executable, "-c", WARMUP_WRITER, str(npz), str(tmp_path / f"v{i}")],
                              capture_output=True, text=True, check=True).stdout.strip() for i in range(3)}
    assert len(digests) == 1, digests


def test_signature_bad_inputs_give_clear_errors():
    import tensorflow as tf

    sig = signature()
    a = real_data()["arrays"]
    with pytest.raises(TypeError, match="composition"):
        sig(dos_up=tf.constant(a["dos_up"][:1]), dos_down=tf.constant(a["dos_down"][:1]))
    # another energy grid on both spins would run through the pooling silently without the check
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input \\?'dos_(up|down)\\?' must have shape \(batch, 1500, 9\)"):
        sig(dos_up=tf.constant(a["dos_up"][:1, :1000]), dos_down=tf.constant(a["dos_down"][:1, :1000]),
            composition=tf.constant(a["composition"][:1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input \\?'composition\\?' must have shape \(batch, 118\)"):
        sig(dos_up=tf.constant(a["dos_up"][:1]), dos_down=tf.constant(a["dos_down"][:1]),
            composition=tf.constant(a["composition"][:1, :100]))


def test_export_cli_refuses_existing_version_and_non_keras(tmp_path):
    from esnet_tf.cli import main

    e = exported()
    best = str(trained_run()["run_dir"] / "best.keras")
    assert main(["export", "--model", best, "--out", str(e["dir"].parents[1]), "--name", "esnet",
                 "--version", "7"]) == 2
    assert main(["export", "--model", str(e["dir"]), "--out", str(tmp_path)]) == 2
