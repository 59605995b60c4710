"""ESNet architecture (DESIGN.md section 4): topology of the paper config, layers, serialization."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest

from conftest import real_data, trained_run


def reference_parameter_count() -> int:
    """Parameters of ESNet counted by hand from DESIGN.md section 4 (both spins with own weights).

    Conv1D: k*c_in*c_out + c_out; BatchNorm: 4*c (gamma, beta, moving mean, moving variance);
    Dense: n_in*n_out + n_out; CBAM: shared MLP c -> c/8 -> c, spatial Conv1D(1, 7) on 2 maps.
    """
    def conv(k, cin, cout):
        return k * cin * cout + cout

    def bn(c):
        return 4 * c

    def dense(nin, nout):
        return nin * nout + nout

    def block(cin, c):
        p = conv(3, cin, c) + bn(c) + conv(3, c, c) + bn(c)
        p += dense(c, c // 8) + dense(c // 8, c) + conv(7, 2, 1)  # CBAM
        if cin != c:
            p += conv(1, cin, c)  # 1x1 shortcut
        return p

    spin = conv(20, 9, 64) + bn(64)
    cin = 64
    for width in (64, 128, 256, 512):
        spin += block(cin, width) + block(width, width)
        cin = width
    head = conv(3, 2 * 512, 512) + bn(512) + dense(118, 64) + dense(512 + 64, 128) + dense(128, 64) + dense(64, 1)
    return 2 * spin + head


@lru_cache(maxsize=1)
def paper_model():
    from esnet_tf import ESNetConfig, build_esnet

    return build_esnet(ESNetConfig.paper())


def test_paper_parameter_count_within_one_percent():
    ref = reference_parameter_count()
    assert 9.6e6 < ref < 9.8e6  # "about 9.7 M parameters"
    n = paper_model().count_params()
    assert abs(n - ref) / ref < 0.01, (n, ref)


def test_paper_stage_widths_and_sequence_lengths():
    import keras

    model = paper_model()
    assert [t.name for t in model.inputs] and {t.name: tuple(t.shape) for t in model.inputs} == {
        "dos_up": (None, 1500, 9), "dos_down": (None, 1500, 9), "composition": (None, 118)}
    spin = model.get_layer("spin_up")
    # stem: 'same' conv stride 2 -> 750, AvgPool(2) -> 375; AvgPool(2) between stages
    expected = [(375, 64), (187, 128), (93, 256), (46, 512)]
    assert spin.stage_lengths(1500) == [e[0] for e in expected]
    _, stages = spin(np.zeros((1, 1500, 9), np.float32), return_stages=True)
    assert [tuple(s.shape[1:]) for s in stages] == expected
    assert sum(isinstance(layer, keras.layers.Layer) and type(layer).__name__ == "ResidualCBAMBlock"
               for layer in spin.blocks) == 8
    assert model.get_layer("spin_down") is not spin and model.get_layer("merge_conv").filters == 512
    assert tuple(model.get_layer("spin_concat").output.shape) == (None, 46, 1024)
    assert model.get_layer("formation_energy_per_atom").units == 1


def test_config_round_trip_and_named(tmp_path):
    from esnet_tf import ESNetConfig

    small = ESNetConfig.small()
    assert ESNetConfig.from_dict(json.loads(json.dumps(small.to_dict()))) == small
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small.replace(dropout=0.1).to_dict()))
    assert ESNetConfig.named(str(path)).dropout == 0.1
    assert ESNetConfig.named("paper") == ESNetConfig.paper()
    with pytest.raises(ValueError, match="unknown ESNetConfig fields"):
        ESNetConfig.from_dict({"stage_width": [1]})
    with pytest.raises(ValueError):
        ESNetConfig.named("huge")


def test_custom_layers_serialize():
    import keras

    from esnet_tf.layers import ChannelAttention, ResidualCBAMBlock, SpatialAttention, SpinFeaturizer

    x = np.random.default_rng(0).random((2, 40, 16)).astype("float32")
    for layer in (ChannelAttention(4), SpatialAttention(5), ResidualCBAMBlock(8, 3, 4, 7),
                  SpinFeaturizer(8, 5, 2, 2, (8, 12), 1, 3, 4, 7)):
        y = layer(x)
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        if not clone.built:
            clone.build(x.shape)
        clone.set_weights(layer.get_weights())
        np.testing.assert_allclose(clone(x), y, atol=1e-6)
        assert clone.get_config() == layer.get_config()


def test_normalization_fitted_and_saved(tmp_path):
    from esnet_tf import ESNetConfig, build_esnet
    from esnet_tf.model import dos_statistics, load_model

    a = real_data()["arrays"]
    stats = dos_statistics([{"dos_up": a["dos_up"][:10], "dos_down": a["dos_down"][:10]},
                            {"dos_up": a["dos_up"][10:], "dos_down": a["dos_down"][10:]}])
    np.testing.assert_allclose(stats["dos_up"]["mean"], a["dos_up"].reshape(-1, 9).astype(float).mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["dos_down"]["std"], a["dos_down"].reshape(-1, 9).astype(float).std(0), rtol=1e-5, atol=1e-7)
    model = build_esnet(ESNetConfig.small(), normalization=stats)
    norm = model.get_layer("normalize_up")
    z = norm(a["dos_up"]).numpy().reshape(-1, 9)
    live = a["dos_up"].reshape(-1, 9).std(0) > 0
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0)[live], 1, rtol=1e-3)
    inputs = {k: a[k][:6] for k in ("dos_up", "dos_down", "composition")}
    before = model.predict_on_batch(inputs)["formation_energy_per_atom"]
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.get_layer("normalize_down").std.numpy(),
                                  model.get_layer("normalize_down").std.numpy())
    after = loaded.predict_on_batch(inputs)["formation_energy_per_atom"]
    assert np.max(np.abs(np.asarray(before) - np.asarray(after))) < 1e-5
    assert not any(type(layer).__name__ == "Lambda" for layer in model._flatten_layers())


def test_predictor_rejects_bad_inputs():
    from esnet_tf.errors import UserError
    from esnet_tf.predict import Predictor

    a = real_data()["arrays"]
    p = Predictor(trained_run()["run_dir"] / "best.keras")
    good = {k: a[k][:3] for k in ("dos_up", "dos_down", "composition", "id")}
    assert p.predict(good).shape == (3,)
    with pytest.raises(UserError, match="missing input 'composition'"):
        p.predict({k: v for k, v in good.items() if k != "composition"})
    with pytest.raises(UserError, match=r"'dos_up' has shape \(3, 1000, 9\), expected \(N, 1500, 9\)"):
        p.predict({**good, "dos_up": good["dos_up"][:, :1000]})
    bad = {**good, "composition": good["composition"].copy()}
    bad["composition"][2, 0] = np.inf
    with pytest.raises(UserError, match=f"'composition' holds NaN or inf for id {good['id'][2]}"):
        p.predict(bad)


def test_element_property_branch_is_fixed_weighted_means_and_round_trips(tmp_path):
    """`element_properties=True`: fraction-weighted means (and mean squares) of standardised element
    properties enter the composition branch through fixed weights, which a .keras file keeps."""
    import keras

    from esnet_tf import ESNetConfig, build_esnet
    from esnet_tf.model import element_property_features, load_model

    a = real_data()["arrays"]
    model = build_esnet(ESNetConfig.small().replace(element_properties=True, stage_widths=(8, 8, 8, 8),
                                                    stem_filters=8, merge_filters=8))
    table = element_property_features()
    assert table.shape == (118, 9) and np.allclose(table[:103].mean(0), 0, atol=1e-5)
    layer = model.get_layer("element_property_mean")
    assert not layer.trainable and not layer.trainable_weights
    comp = a["composition"][:4]
    probe = keras.Model(model.inputs, model.get_layer("composition_features").output)
    feats = probe.predict_on_batch({k: a[k][:4] for k in ("dos_up", "dos_down", "composition")})
    np.testing.assert_allclose(feats[:, 118:127], comp @ table, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[:, 127:], comp @ table ** 2, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "el.keras")
    loaded = load_model(tmp_path / "el.keras")
    np.testing.assert_array_equal(loaded.get_layer("element_property_mean_square").get_weights()[0], table ** 2)
    assert ESNetConfig.from_dict({k: v for k, v in ESNetConfig.small().to_dict().items()
                                  if k != "element_properties"}).element_properties is False  # older configs


# ---------------------------------------------------------------- energy inputs (issue 32, DESIGN.md section 1)

#: a tiny topology: the energy-input tests check wiring, not capacity
TINY = dict(stem_filters=4, stage_widths=(4, 4), merge_filters=4, composition_units=4, head_units=(8,),
            attention_ratio=2, spatial_kernel=3, name="tiny")


@lru_cache(maxsize=1)
def demo_energy_examples() -> dict:
    """Six real demo examples (GPAW IS-DOS) with their IS energies from the engine's own references."""
    from esnet_tf.export import demo_examples

    return demo_examples(6)


@lru_cache(maxsize=2)
def energy_model(target: str = "relaxation_energy"):
    """A tiny ESNet taking is_formation_energy_per_atom, its normalisation fitted on the demo examples."""
    from esnet_tf import ESNetConfig, build_esnet
    from esnet_tf.model import dos_statistics

    config = ESNetConfig(**TINY, energy_inputs=("is_formation_energy_per_atom",), target=target)
    return build_esnet(config, normalization=dos_statistics([demo_energy_examples()]))


def energy_inputs(arrays: dict, n: int | None = None) -> dict:
    keys = ("dos_up", "dos_down", "composition", "is_formation_energy_per_atom")
    return {k: np.asarray(arrays[k][:n], np.float32) for k in keys}


def test_energy_input_config_round_trips_and_is_checked():
    from esnet_tf import ESNetConfig

    c = ESNetConfig(**TINY, energy_inputs=["is_formation_energy_per_atom", "uip_formation_energy_per_atom"],
                    target="relaxation_energy")
    assert c.energy_inputs == ("is_formation_energy_per_atom", "uip_formation_energy_per_atom")
    assert ESNetConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.input_names[3:] == c.energy_inputs and ESNetConfig.paper().input_names == (
        "dos_up", "dos_down", "composition")
    old = {k: v for k, v in ESNetConfig.small().to_dict().items() if k not in ("energy_inputs", "target")}
    assert ESNetConfig.from_dict(old) == ESNetConfig.small()  # configs written before the energy inputs
    with pytest.raises(ValueError, match="add 'is_formation_energy_per_atom' to energy_inputs"):
        ESNetConfig(target="relaxation_energy")
    with pytest.raises(ValueError, match="each must be one of"):
        ESNetConfig(energy_inputs=("band_gap",))
    with pytest.raises(ValueError, match="target must be one of"):
        ESNetConfig(energy_inputs=("is_formation_energy_per_atom",), target="energy")


def test_energy_input_model_builds_with_normalisation_inside():
    from esnet_tf import ESNetConfig, build_esnet

    model = energy_model()
    shapes = {t.name: tuple(t.shape) for t in model.inputs}
    assert shapes["is_formation_energy_per_atom"] == (None, 1) and len(shapes) == 4
    ef = demo_energy_examples()["is_formation_energy_per_atom"].astype(np.float64)
    norm = model.get_layer("normalize_is_formation_energy_per_atom")
    np.testing.assert_allclose(norm.mean.numpy(), [ef.mean()], rtol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), [ef.std()], rtol=1e-4)
    # the energy joins the pooled DOS and composition features before the head
    assert model.get_layer("features").output.shape[-1] == TINY["merge_filters"] + TINY["composition_units"] + 1
    assert not any(type(layer).__name__ == "Lambda" for layer in model._flatten_layers())
    two = build_esnet(ESNetConfig(**TINY, energy_inputs=("is_formation_energy_per_atom",
                                                         "uip_formation_energy_per_atom")))
    assert sorted(t.name for t in two.inputs)[-2:] == ["is_formation_energy_per_atom", "uip_formation_energy_per_atom"]
    assert two.get_layer("features").output.shape[-1] == TINY["merge_filters"] + TINY["composition_units"] + 2
    with pytest.raises(ValueError, match="no known value of it"):  # statistics without the energy
        build_esnet(ESNetConfig(**TINY, energy_inputs=("is_formation_energy_per_atom",)),
                    normalization={"dos_up": {"mean": [0.0] * 9, "std": [1.0] * 9},
                                   "dos_down": {"mean": [0.0] * 9, "std": [1.0] * 9}})


def test_energy_input_model_keras_round_trip_is_identical(tmp_path):
    from esnet_tf.model import load_model

    model = energy_model()
    x = energy_inputs(demo_energy_examples())
    before = np.asarray(model.predict_on_batch(x)["formation_energy_per_atom"])
    model.save(tmp_path / "e.keras")
    loaded = load_model(tmp_path / "e.keras")
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)["formation_energy_per_atom"]), before)
    assert [t.name for t in loaded.inputs] == [t.name for t in model.inputs]


def test_relaxation_target_never_exceeds_the_is_formation_energy():
    """ΔE >= 0 by construction (softplus): E_f <= E_f(IS) for any input, real or far outside the data."""
    model = energy_model("relaxation_energy")
    real = energy_inputs(demo_energy_examples())
    y = np.asarray(model.predict_on_batch(real)["formation_energy_per_atom"])
    assert np.all(y <= real["is_formation_energy_per_atom"])
    rng = np.random.default_rng(1)
    n = 64
    comp = rng.dirichlet(np.ones(118) * 0.05, size=n).astype(np.float32)
    wild = {"dos_up": (rng.random((n, 1500, 9)) * rng.choice([0.0, 1.0, 50.0], (n, 1, 1))).astype(np.float32),
            "dos_down": (rng.random((n, 1500, 9)) * 3).astype(np.float32), "composition": comp,
            "is_formation_energy_per_atom": rng.uniform(-20, 20, (n, 1)).astype(np.float32)}
    y = np.asarray(model.predict_on_batch(wild)["formation_energy_per_atom"])
    assert np.all(y <= wild["is_formation_energy_per_atom"]), (y - wild["is_formation_energy_per_atom"]).max()
    direct = energy_model("formation_energy")
    assert type(direct.get_layer("formation_energy_per_atom")).__name__ == "Dense"
    assert type(model.get_layer("formation_energy_per_atom")).__name__ == "Subtract"


def test_uip_correction_target_starts_at_the_potential_and_round_trips(tmp_path):
    """target="uip_correction": output = E_f(UIP) + a Dense correction initialised at zero, so the
    untrained model returns the potential's energy exactly; .keras round trip identical."""
    from esnet_tf import ESNetConfig, build_esnet
    from esnet_tf.model import dos_statistics, load_model

    with pytest.raises(ValueError, match="add 'uip_formation_energy_per_atom' to energy_inputs"):
        ESNetConfig(energy_inputs=("is_formation_energy_per_atom",), target="uip_correction")
    x = dict(energy_inputs(demo_energy_examples()))
    x["uip_formation_energy_per_atom"] = (x["is_formation_energy_per_atom"] - 0.3).astype(np.float32)
    config = ESNetConfig(**TINY, energy_inputs=("is_formation_energy_per_atom", "uip_formation_energy_per_atom"),
                         target="uip_correction")
    model = build_esnet(config, normalization=dos_statistics([x]))
    y = np.asarray(model.predict_on_batch(x)["formation_energy_per_atom"])
    np.testing.assert_allclose(y, x["uip_formation_energy_per_atom"], atol=1e-6)
    assert type(model.get_layer("formation_energy_per_atom")).__name__ == "Add"
    model.get_layer("uip_correction").set_weights([np.full((TINY["head_units"][-1], 1), 0.01, np.float32),
                                                   np.array([0.05], np.float32)])
    moved = np.asarray(model.predict_on_batch(x)["formation_energy_per_atom"])
    assert np.all(np.abs(moved - y) > 0)
    model.save(tmp_path / "u.keras")
    np.testing.assert_array_equal(
        np.asarray(load_model(tmp_path / "u.keras").predict_on_batch(x)["formation_energy_per_atom"]), moved)


def test_missing_energy_is_refused_in_one_line():
    import tensorflow as tf

    from esnet_tf.errors import UserError
    from esnet_tf.isdos import require_energies

    a = dict(demo_energy_examples())
    a["is_formation_energy_per_atom"] = a["is_formation_energy_per_atom"].copy()
    a["is_formation_energy_per_atom"][2] = np.nan
    with pytest.raises(UserError) as err:
        require_energies(a, ("is_formation_energy_per_atom",), "calcs/")
    msg = str(err.value)
    assert "\n" not in msg and a["id"][2] in msg and "--references FILE" in msg
    assert "is_formation_energy_per_atom" in msg
    with pytest.raises(UserError, match="needs input 'is_formation_energy_per_atom'"):
        require_energies({k: v for k, v in a.items() if k != "is_formation_energy_per_atom"},
                         ("is_formation_energy_per_atom",))
    # the model itself refuses NaN (every saved form), naming the input
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input \\?'is_formation_energy_per_atom\\?' holds NaN"):
        energy_model().predict_on_batch(energy_inputs(a))


def test_predictor_serves_energy_input_models_and_refuses_missing_energy(tmp_path):
    from esnet_tf.errors import UserError
    from esnet_tf.predict import Predictor

    energy_model().save(tmp_path / "e.keras")
    p = Predictor(tmp_path / "e.keras")
    a = demo_energy_examples()
    assert p.energy_inputs == ("is_formation_energy_per_atom",)
    want = np.asarray(energy_model().predict_on_batch(energy_inputs(a))["formation_energy_per_atom"]).reshape(-1)
    np.testing.assert_allclose(p.predict(a), want, atol=1e-5)  # the frozen fast path
    bad = {**a, "is_formation_energy_per_atom": np.full_like(a["is_formation_energy_per_atom"], np.nan)}
    with pytest.raises(UserError, match=f"needs input 'is_formation_energy_per_atom'.*id {a['id'][0]}"):
        p.predict(bad, source="calcs/")
