"""TF Serving export: layout, signature contract (DESIGN.md section 5), warmup records, parity."""
from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from conftest import _workdir, real_data, trained_run

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


# ---------------------------------------------------------------- energy inputs (issue 32)

ENERGY = "is_formation_energy_per_atom"


@lru_cache(maxsize=1)
def energy_export() -> dict:
    """The tiny energy-input model of test_model saved as .keras and exported (warmup: embedded demo data)."""
    from test_model import energy_model

    from esnet_tf.export import export

    work = _workdir() / "energy_export"
    work.mkdir(parents=True, exist_ok=True)
    keras_path = work / "energy.keras"
    if not keras_path.is_file():
        energy_model().save(keras_path)
    result = export(keras_path, work / "saved_models", "esnet-is", 1, overwrite=True)
    return {"keras": keras_path, "dir": Path(result["path"]), "result": result}


def test_energy_input_signature_and_parity_with_keras():
    import tensorflow as tf

    from test_model import demo_energy_examples, energy_inputs

    from esnet_tf.model import load_model

    e = energy_export()
    assert e["result"]["inputs"] == ["dos_up", "dos_down", "composition", ENERGY]
    assert e["result"]["warmup_source"] == "the embedded demo data" and e["result"]["max_abs_diff"] < 1e-5
    sig = tf.saved_model.load(str(e["dir"])).signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    assert set(specs) == {*INPUTS, ENERGY}
    assert specs[ENERGY].dtype == tf.float32 and tuple(specs[ENERGY].shape.as_list()) == (None, 1)
    assert list(sig.structured_outputs) == ["formation_energy_per_atom"]
    x = energy_inputs(demo_energy_examples())
    served = sig(**{k: tf.constant(v) for k, v in x.items()})["formation_energy_per_atom"].numpy()
    keras_out = np.asarray(load_model(e["keras"]).predict_on_batch(x)["formation_energy_per_atom"])
    assert np.max(np.abs(served - keras_out)) < 1e-5
    assert np.all(served <= x[ENERGY])  # relaxation target: E_f <= E_f(IS) in the SavedModel too
    bad = {**x, ENERGY: x[ENERGY].copy()}
    bad[ENERGY][0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds NaN or inf"):
        sig(**{k: tf.constant(v) for k, v in bad.items()})


def test_energy_input_warmup_requests_carry_the_energy():
    import tensorflow as tf

    from test_model import demo_energy_examples

    from esnet_tf.export import read_warmup

    e = energy_export()
    logs = read_warmup(e["dir"] / "assets.extra" / "tf_serving_warmup_requests")
    assert len(logs) == e["result"]["n_warmup"] >= 1
    real = demo_energy_examples()
    for i, log in enumerate(logs):
        feeds = {k: tf.make_ndarray(v) for k, v in log.predict_log.request.inputs.items()}
        assert set(feeds) == {*INPUTS, ENERGY} and feeds[ENERGY].shape == (1, 1)
        np.testing.assert_array_equal(feeds[ENERGY][0], real[ENERGY][i])  # the demo's own IS energy


def test_energy_input_export_refuses_warmup_without_the_energy(tmp_path):
    from test_model import demo_energy_examples

    from esnet_tf.errors import UserError
    from esnet_tf.export import export

    a = demo_energy_examples()
    npz = tmp_path / "warm.npz"
    np.savez(npz, **{k: a[k] for k in (*INPUTS, "id")})  # written before the energy inputs: NaN energies
    with pytest.raises(UserError) as err:
        export(energy_export()["keras"], tmp_path / "out", "x", 1, warmup_data=str(npz), n_warmup=2)
    assert "\n" not in str(err.value) and ENERGY in str(err.value) and "--references" in str(err.value)
    assert not (tmp_path / "out" / "x" / "1").exists()


def test_energy_input_ensemble_exports_mean_std_and_interval(tmp_path):
    """An energy-input ensemble exported with an interval scale q serves the mean, the std and mean ∓ q σ
    (eV/atom); its warmup requests carry the energy input."""
    import tensorflow as tf

    from test_model import demo_energy_examples, energy_inputs, energy_model

    from esnet_tf.export import export_ensemble, read_warmup

    members = []
    for i, target in enumerate(("relaxation_energy", "formation_energy")):
        path = tmp_path / f"m{i}.keras"
        energy_model(target).save(path)
        members.append(path)
    result = export_ensemble(members, tmp_path / "out", "ens", 1, interval_scale=2.0, n_warmup=2)
    assert result["outputs"] == ["formation_energy_per_atom", "formation_energy_per_atom_std",
                                 "formation_energy_per_atom_lower", "formation_energy_per_atom_upper"]
    sig = tf.saved_model.load(result["path"]).signatures["serving_default"]
    assert set(sig.structured_input_signature[1]) == {*INPUTS, ENERGY}
    x = energy_inputs(demo_energy_examples())
    out = sig(**{k: tf.constant(v) for k, v in x.items()})
    each = np.stack([np.asarray(energy_model(t).predict_on_batch(x)["formation_energy_per_atom"]).reshape(-1)
                     for t in ("relaxation_energy", "formation_energy")], axis=1)
    np.testing.assert_allclose(out["formation_energy_per_atom"].numpy().reshape(-1), each.mean(1), atol=1e-5)
    np.testing.assert_allclose(out["formation_energy_per_atom_std"].numpy().reshape(-1), each.std(1, ddof=1), atol=1e-5)
    half = 2.0 * each.std(1, ddof=1)
    np.testing.assert_allclose(out["formation_energy_per_atom_lower"].numpy().reshape(-1), each.mean(1) - half,
                               atol=1e-5)
    np.testing.assert_allclose(out["formation_energy_per_atom_upper"].numpy().reshape(-1), each.mean(1) + half,
                               atol=1e-5)
    assert result["n_warmup"] == 2
    logs = read_warmup(Path(result["path"]) / "assets.extra" / "tf_serving_warmup_requests")
    assert all(ENERGY in log.predict_log.request.inputs for log in logs)


def test_warmup_npz_is_read_bounded(tmp_path, monkeypatch):
    """A warmup .npz (the run dir's, or --warmup-data) is read through the bounded reader: only the model's
    input arrays, and a member past the per-file limit is refused in one line naming the file and the limit."""
    from esnet_tf.errors import UserError
    from esnet_tf.export import warmup_examples

    a = real_data()["arrays"]
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "warmup_examples.npz", **{k: a[k][:3] for k in (*INPUTS, "id")},
             junk=np.zeros((4, 1 << 18), np.float64))  # 8 MiB the reader never inflates
    got, origin = warmup_examples(run / "best.keras", None, 2)
    assert origin.endswith("warmup_examples.npz") and set(got) == {*INPUTS, "id"} and len(got["dos_up"]) == 2
    np.testing.assert_array_equal(got["dos_up"], a["dos_up"][:2])
    monkeypatch.setenv("ESNET_MAX_INFLATED_BYTES", "100KB")  # one dos_up member of 3 rows is 162 kB
    with pytest.raises(UserError) as err:
        warmup_examples(run / "best.keras", None, 2)
    assert "\n" not in str(err.value) and "warmup_examples.npz" in str(err.value)
    assert "ESNET_MAX_INFLATED_BYTES" in str(err.value)
    with pytest.raises(UserError) as err:  # --warmup-data .npz features go through predict.load_inputs: bounded
        warmup_examples(run / "best.keras", str(real_data()["npz"]), 2)
    assert "ESNET_MAX_INFLATED_BYTES" in str(err.value)
