"""The reference: the authors' ESNet training setup restated in plain Keras (Mok et al. 2023).

Same topology as DESIGN.md section 4 (and `esnet_tf.build_esnet`), written the way the authors'
script is: standard Keras layers only, float32, inputs standardised in numpy beforehand,
`model.fit` on in-memory numpy arrays with batch 64, Adam 1.5e-3, log-cosh loss, default
threading, no XLA; inference with `model.predict(batch_size=64)`. It does not import esnet_tf, so
it is an independent restatement the package is measured against (benchmarks/bench_performance.py)
and checked against (tests/test_performance.py: same parameter count and, with the same weights,
the same predictions).

    per spin: Conv1D(64, 20, stride 2)-BN-ReLU-AvgPool(2), 4 stages x 2 residual CBAM blocks
              (widths 64, 128, 256, 512), AvgPool(2) between stages
    concat spins -> Conv1D(512, 3)-BN-ReLU -> GAP;  composition -> Dense(64, relu)
    concat -> Dense(128, relu) -> Dense(64, relu) -> Dense(1)  (eV/atom)
"""
from __future__ import annotations

import numpy as np

OUTPUT = "formation_energy_per_atom"


def _cbam(x, ratio: int, spatial_kernel: int, name: str):
    """Channel attention (shared MLP over avg- and max-pooled features) then spatial attention."""
    import keras
    from keras import layers, ops

    channels = int(x.shape[-1])
    hidden = layers.Dense(max(1, channels // ratio), activation="relu", name=f"{name}_mlp_hidden")
    out = layers.Dense(channels, name=f"{name}_mlp_out")
    avg = out(hidden(layers.GlobalAveragePooling1D(name=f"{name}_avg")(x)))
    mx = out(hidden(layers.GlobalMaxPooling1D(name=f"{name}_max")(x)))
    scale = layers.Activation("sigmoid", name=f"{name}_channel_sigmoid")(layers.Add(name=f"{name}_channel_add")([avg, mx]))
    x = layers.Multiply(name=f"{name}_channel_scale")([x, layers.Reshape((1, channels), name=f"{name}_reshape")(scale)])
    pooled = layers.Concatenate(axis=-1, name=f"{name}_spatial_pool")(
        [ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)])
    attention = layers.Conv1D(1, spatial_kernel, padding="same", activation="sigmoid", name=f"{name}_spatial_conv")(pooled)
    del keras
    return layers.Multiply(name=f"{name}_spatial_scale")([x, attention])


def _block(x, filters: int, name: str, kernel: int = 3, ratio: int = 8, spatial_kernel: int = 7):
    from keras import layers

    y = layers.Conv1D(filters, kernel, padding="same", name=f"{name}_conv1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(layers.BatchNormalization(name=f"{name}_bn1")(y))
    y = layers.Conv1D(filters, kernel, padding="same", name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = _cbam(y, ratio, spatial_kernel, name)
    skip = layers.Conv1D(filters, 1, name=f"{name}_shortcut")(x) if int(x.shape[-1]) != filters else x
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, skip]))


def build_reference(n_points: int = 1500, n_orbitals: int = 9, n_elements: int = 118, stem_filters: int = 64,
                    stem_kernel: int = 20, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: int = 2,
                    ratio: int = 8, merge_filters: int = 512, composition_units: int = 64,
                    head: tuple[int, ...] = (128, 64)):
    """The authors' ESNet as a plain-Keras functional model (paper widths by default), uncompiled."""
    import keras
    from keras import layers

    inputs = {"dos_up": keras.Input((n_points, n_orbitals), name="dos_up"),
              "dos_down": keras.Input((n_points, n_orbitals), name="dos_down"),
              "composition": keras.Input((n_elements,), name="composition")}
    spins = []
    for spin in ("up", "down"):
        x = layers.Conv1D(stem_filters, stem_kernel, strides=2, padding="same", name=f"{spin}_stem_conv")(inputs[f"dos_{spin}"])
        x = layers.ReLU(name=f"{spin}_stem_relu")(layers.BatchNormalization(name=f"{spin}_stem_bn")(x))
        x = layers.AveragePooling1D(2, name=f"{spin}_stem_pool")(x)
        for s, width in enumerate(widths):
            if s > 0:
                x = layers.AveragePooling1D(2, name=f"{spin}_pool{s}")(x)
            for b in range(blocks):
                x = _block(x, width, f"{spin}_stage{s + 1}_block{b + 1}", ratio=ratio)
        spins.append(x)
    x = layers.Concatenate(axis=-1, name="spin_concat")(spins)
    x = layers.Conv1D(merge_filters, 3, padding="same", name="merge_conv")(x)
    x = layers.ReLU(name="merge_relu")(layers.BatchNormalization(name="merge_bn")(x))
    x = layers.GlobalAveragePooling1D(name="global_pool")(x)
    comp = layers.Dense(composition_units, activation="relu", name="composition_dense")(inputs["composition"])
    x = layers.Concatenate(name="features")([x, comp])
    for i, units in enumerate(head):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i + 1}")(x)
    out = layers.Dense(1, name=OUTPUT)(x)
    return keras.Model(inputs, out, name="esnet_reference")


def compile_reference(model) -> None:
    """The authors' optimiser and loss: Adam 1.5e-3, log-cosh; MAE metric."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1.5e-3), loss=keras.losses.LogCosh(),
                  metrics=[keras.metrics.MeanAbsoluteError(name="mae")])


def standardize(train: dict, *others: dict) -> list[dict]:
    """Per-channel (x - mean) / std of dos_up / dos_down fitted on `train` (the authors' numpy step)."""
    stats = {k: (train[k].reshape(-1, train[k].shape[-1]).mean(0),
                 train[k].reshape(-1, train[k].shape[-1]).std(0)) for k in ("dos_up", "dos_down")}
    out = []
    for arrays in (train, *others):
        d = dict(arrays)
        for k, (mean, std) in stats.items():
            d[k] = ((arrays[k] - mean) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)
        out.append(d)
    return out


def fit_reference(model, x: dict, y: np.ndarray, epochs: int, batch_size: int = 64, validation=None):
    """`model.fit` on in-memory numpy arrays (shuffled each epoch), as in the authors' script."""
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, validation_data=validation, verbose=0)


def predict_reference(model, x: dict, batch_size: int = 64) -> np.ndarray:
    """`model.predict` in batches of 64: formation energies (N,) in eV/atom."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).reshape(-1)


def package_weight_name(path: str) -> str:
    """The reference's variable path for an `esnet_tf.build_esnet` variable path (same weights).

    'spin_up/stage1_block1/channel_attention/mlp_hidden/kernel' -> 'up_stage1_block1_mlp_hidden/kernel'.
    """
    layer, var = path.rsplit("/", 1)
    if layer.startswith("spin_"):
        layer = layer[len("spin_"):]
    layer = layer.replace("/channel_attention/", "/").replace("/spatial_attention/conv", "/spatial_conv")
    return f"{layer.replace('/', '_')}/{var}"


def copy_package_weights(reference, package_model) -> int:
    """Give `reference` the weights of a package ESNet (input normalisation excluded); returns the count."""
    by_name = {w.path: w for w in reference.weights}
    n = 0
    for w in package_model.weights:
        if w.path.startswith("normalize_"):
            continue
        by_name[package_weight_name(w.path)].assign(w.numpy())
        n += 1
    if n != len(by_name):
        raise ValueError(f"copied {n} of the reference's {len(by_name)} variables: the topologies differ")
    return n
