"""`--precision auto` with XLA (issue 38): float32 with XLA computes the same numbers as plain float32
(inference and a train step, within `precision.XLA_TOLERANCE_EV`), `auto` falls back to float32 unless
another candidate measured faster by the margin, and its cache is keyed per CPU model. No timing is
asserted anywhere: which candidate wins is the machine's business."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

INPUTS = ("dos_up", "dos_down", "composition")
OUTPUT = "formation_energy_per_atom"


def _inputs(demo_data) -> dict:
    return {k: demo_data["arrays"][k] for k in INPUTS}


def test_xla_inference_gives_the_float32_predictions(tiny_run, demo_data):
    """The frozen graph under XLA against plain float32 and Keras's own predict, on real demo inputs and
    a trained model; batch 16 over 40 rows also runs the padded last batch."""
    from esnet_tf.model import load_model
    from esnet_tf.precision import XLA_TOLERANCE_EV, inference_function

    model = load_model(tiny_run["dir"] / "best.keras")
    x = _inputs(demo_data)
    assert len(x["dos_up"]) % 16 != 0  # a partial last batch (padded under XLA)
    keras_y = np.asarray(model.predict_on_batch(x)[OUTPUT]).reshape(-1)
    assert np.std(keras_y) > 1e-3  # a trained model, not a constant
    plain, policy = inference_function(model, "float32", batch_size=16)
    fast, _ = inference_function(model, "float32", batch_size=16, xla=True)
    assert policy == "float32" and fast.xla and not plain.xla
    y32, yx = plain(x), fast(x)
    assert yx.dtype == np.float32 and yx.shape == y32.shape == keras_y.shape
    assert np.max(np.abs(yx - y32)) < XLA_TOLERANCE_EV
    assert np.max(np.abs(yx - keras_y)) < XLA_TOLERANCE_EV
    np.testing.assert_array_equal(fast({k: v[:5] for k, v in x.items()}), yx[:5])  # padding changes nothing


def test_xla_train_step_computes_the_float32_step(tiny_config, demo_data):
    """Two copies of the tiny model with the same weights, one with Keras's `jit_compile=True` (what
    `esnet train` sets when auto picks float32+xla): the same losses over two steps on real data and
    the same weights after them (moving BatchNorm statistics included). Plain SGD for the comparison:
    Adam's first steps are ~lr * sign(grad), which turns last-bit differences of near-zero gradients
    into lr-sized ones."""
    import keras

    from esnet_tf.model import ESNetConfig, build_esnet

    x = {k: v[:8] for k, v in _inputs(demo_data).items()}
    y = {OUTPUT: demo_data["arrays"][OUTPUT][:8].astype(np.float32)}
    models = []
    for xla in (False, True):
        keras.utils.set_random_seed(0)
        model = build_esnet(ESNetConfig.named(str(tiny_config)))
        if models:
            model.set_weights(models[0].get_weights())
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss={OUTPUT: keras.losses.LogCosh()})
        model.jit_compile = xla
        models.append(model)
    plain, xla = models
    for _ in range(2):
        a, b = plain.train_on_batch(x, y), xla.train_on_batch(x, y)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert xla.jit_compile and not plain.jit_compile
    for w1, w2 in zip(plain.get_weights(), xla.get_weights()):  # (so the same predictions after)
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-5)


def test_decide_falls_back_to_float32_unless_a_candidate_is_faster_by_the_margin():
    """The decision on measured step times (seconds): a candidate wins only when its best and its median
    step both beat float32's by MARGIN; else float32."""
    from esnet_tf.precision import MARGIN, _decide

    f32 = [1.00, 1.02, 1.05, 1.10]
    assert _decide({"float32": f32})[0] == "float32"
    assert _decide({"float32": f32, "float32+xla": [1.20, 1.25, 1.30, 1.40]})[0] == "float32"  # slower
    assert _decide({"float32": f32, "float32+xla": [x * (1 - MARGIN / 2) for x in f32]})[0] == "float32"  # marginal
    # one lucky step (best beats float32 by far) but the median does not: float32
    assert _decide({"float32": f32, "float32+xla": [0.60, 1.10, 1.12, 1.15]})[0] == "float32"
    # faster in best and median: chosen; of two qualifying candidates the one with the faster best step
    assert _decide({"float32": f32, "float32+xla": [0.80, 0.82, 0.85, 0.90]})[0] == "float32+xla"
    assert _decide({"float32": f32, "float32+xla": [0.80, 0.82, 0.85, 0.90],
                    "mixed_bfloat16": [0.50, 0.52, 0.55, 0.60]})[0] == "mixed_bfloat16"
    assert _decide({"float32+xla": [0.5]})[0] == "float32"  # nothing measured against float32
    best, best_s = _decide({"float32": f32, "float32+xla": [0.80, 0.82, 0.85, 0.90]})
    assert best_s == {"float32": 1.00, "float32+xla": 0.80}


def test_auto_measures_float32_against_xla_and_its_choice_follows_the_rule(tiny_config, tmp_cache, tmp_path):
    """A real measurement of the tiny model's inference (float32 and float32+xla, 2 rounds): the record
    holds both candidates' timings, the choice is `_decide`'s on them (float32 unless XLA beat it by the
    margin in best and median), it is cached under this CPU model's key and reused, and the inference
    function that follows the choice agrees with plain float32."""
    from esnet_tf import precision
    from esnet_tf.model import ESNetConfig, build_esnet
    from esnet_tf.precision import MARGIN, _decide, choose_precision, cpu_model, inference_function

    model = build_esnet(ESNetConfig.named(str(tiny_config)))
    choice = choose_precision(model, "infer", batch_size=8, rounds=2, run_dir=tmp_path / "run")
    measured = precision.candidates("infer")
    assert measured[:2] == ("float32", "float32+xla") and set(choice["timings_s"]) == set(measured)
    assert not choice["cached"] and all(len(v) == 2 for v in choice["timings_s"].values())
    assert set(choice["first_call_s"]) == set(measured)
    assert choice["candidate"] == _decide(choice["timings_s"])[0]
    assert (choice["policy"], choice["xla"]) == precision.split_candidate(choice["candidate"])
    if choice["candidate"] != "float32":
        for stat in ("best_s", "median_s"):
            assert choice[stat][choice["candidate"]] <= choice[stat]["float32"] * (1 - MARGIN) + 1e-4
    assert cpu_model() in choice["key"] and f"v{precision.MEASUREMENT_VERSION}" in choice["key"]
    assert json.loads(tmp_cache.read_text())[choice["key"]]["candidate"] == choice["candidate"]
    assert json.loads((tmp_path / "run" / "precision_infer.json").read_text())["candidate"] == choice["candidate"]
    again = choose_precision(model, "infer", batch_size=8, rounds=2)
    assert again["cached"] and again["candidate"] == choice["candidate"]
    rng = np.random.default_rng(0)
    x = {t.name: np.abs(rng.normal(0, 0.3, (5, *t.shape[1:]))).astype(np.float32) for t in model.inputs}
    predict, _ = inference_function(model, "auto", batch_size=8)
    assert predict.choice["cached"] and predict.xla == choice["xla"]
    plain, _ = inference_function(model, "float32", batch_size=8)
    assert np.max(np.abs(predict(x) - plain(x))) < precision.XLA_TOLERANCE_EV


def test_auto_cache_is_keyed_per_cpu_model_and_version(tiny_config, tmp_cache, monkeypatch):
    """A cached choice is used only under this CPU model's key of this measurement version, and only if
    it names one of the candidates; the only-float32 candidate set is float32 without measuring."""
    from esnet_tf import precision
    from esnet_tf.model import ESNetConfig
    from esnet_tf.precision import cache_key, choose_precision, cpu_model

    config = ESNetConfig.named(str(tiny_config))
    key = cache_key("train", config.to_dict(), 8)
    other_cpu = key.replace(cpu_model(), "Some Other CPU (family 6 model 143; amx_bf16; 2 cpus)")
    old = key.replace(f"v{precision.MEASUREMENT_VERSION}", f"v{precision.MEASUREMENT_VERSION - 1}")
    assert other_cpu != key and old != key
    tmp_cache.parent.mkdir(parents=True)
    tmp_cache.write_text(json.dumps({other_cpu: {"candidate": "float32", "tag": "other"},
                                     old: {"candidate": "float32", "tag": "old"},
                                     key: {"candidate": "float32+xla", "tag": "this"}}))
    got = choose_precision(config, "train", batch_size=8)
    assert got["cached"] and got["tag"] == "this" and (got["policy"], got["xla"]) == ("float32", True)
    only = choose_precision(config, "train", batch_size=8, among=("float32",))
    assert only["candidate"] == "float32" and not only["xla"] and "only candidate" in only["reason"]
    monkeypatch.setenv(precision.AUTO_ENV, "float32+xla")  # the override
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    forced = choose_precision(config, "train", batch_size=8)
    assert (forced["policy"], forced["xla"]) == ("float32", True) and "forced" in forced["reason"]
    from esnet_tf.model import build_esnet
    from esnet_tf.train import _with_precision

    model = build_esnet(config)  # esnet train's precision step hands the XLA choice to its compile step
    assert _with_precision(model, "auto", config, None, 8) == (model, True)
    assert _with_precision(model, "float32", config, None, 8) == (model, False)
    import tensorflow as tf

    if tf.__version__.startswith(precision.XLA_FLAGS_CHECKED_TF):  # the XLA options it is measured with
        assert os.environ["XLA_FLAGS"].split() == ["--xla_cpu_enable_fast_math=false", *precision.XLA_CPU_FLAGS]
    monkeypatch.setenv(precision.AUTO_ENV, "float64")
    with pytest.raises(ValueError, match="float32\\+xla"):
        choose_precision(config, "train", batch_size=8)
    with pytest.raises(ValueError, match="among"):
        choose_precision(config, "train", batch_size=8, among=("float32+xla",))
