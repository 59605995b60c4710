"""Numeric precision of ESNet: detect native bfloat16, pick a Keras dtype policy, apply it.

    from esnet_tf.precision import resolve_policy, with_policy
    policy = resolve_policy("auto")        # 'mixed_bfloat16' on a CPU with AVX512_BF16 / AMX,
                                           # 'mixed_float16' on a GPU, else 'float32'
    fast = with_policy(model, policy)      # same weights, convolutions and dense layers in bf16

Under a mixed policy the variables stay float32 (Adam updates them in float32) and the layers
compute in the low precision, except the ones listed in `FLOAT32_LAYERS` (the input checks, the
input normalisation and the final Dense that produces eV/atom): the output, and so the loss, is
float32. On CPUs without native bf16 (no AVX512_BF16 / AMX_BF16), bf16 is emulated and slower
than float32, so 'auto' keeps float32 there.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

#: values of `esnet train --precision`
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "mixed")
#: CPU flags (Linux /proc/cpuinfo names) that give oneDNN native bf16 arithmetic
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: layer class names that always compute in float32 (plus the output layer, see `_keep_float32`)
FLOAT32_LAYERS: tuple[str, ...] = ("ShapeCheck", "InputNormalization")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (empty where that file does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return frozenset()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16_cpu() -> bool:
    """True when the CPU has native bf16 (AVX512_BF16 or AMX_BF16) and TF's oneDNN kernels are on."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() == "0":
        return False  # without oneDNN, TF's own CPU kernels emulate bf16 (slow)
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def has_gpu() -> bool:
    """True when TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_policy(precision: str = "auto") -> str:
    """Keras dtype policy name for a `--precision` value.

    'float32' -> 'float32'; 'bfloat16' -> 'mixed_bfloat16' (bf16 compute, float32 variables);
    'mixed' -> 'mixed_float16' on a GPU, 'mixed_bfloat16' on a CPU; 'auto' -> 'mixed_float16' on
    a GPU, 'mixed_bfloat16' on a CPU with native bf16, else 'float32'.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return "float32"
    if precision == "bfloat16":
        return "mixed_bfloat16"
    if has_gpu():
        return "mixed_float16"
    if precision == "mixed" or native_bf16_cpu():
        return "mixed_bfloat16"
    return "float32"


def describe(policy: str) -> str:
    """One line for logs: the policy and why it was chosen."""
    where = "GPU" if policy == "mixed_float16" else "CPU"
    native = native_bf16_cpu()
    flags = ",".join(f for f in BF16_CPU_FLAGS if f in cpu_flags()) or "none"
    return f"precision {policy} ({where}; native bf16 CPU flags: {flags}{'' if native or flags == 'none' else ', oneDNN off'})"


def _keep_float32(layer_config: dict, output_names: set[str]) -> bool:
    return layer_config.get("class_name") in FLOAT32_LAYERS or layer_config.get("name") in output_names


def with_policy(model, policy: str):
    """A copy of the functional `model` computing under `policy`, with the same weights.

    The input checks, the input normalisation and the output layers stay float32. Works in both
    directions (float32 -> mixed for fast inference, mixed -> float32 for a reference).
    """
    import keras

    import esnet_tf.layers  # noqa: F401  (registers the serializable layers)

    config = model.get_config()
    output_names = {entry[0] for entry in _output_entries(config.get("output_layers"))}
    for layer in config["layers"]:
        if layer.get("class_name") == "InputLayer":
            continue  # model inputs stay float32 (raw IS-DOS)
        if isinstance(layer.get("config"), dict) and "dtype" in layer["config"]:
            name = "float32" if _keep_float32(layer, output_names) else policy
            layer["config"]["dtype"] = {"module": "keras", "class_name": "DTypePolicy",
                                        "config": {"name": name}, "registered_name": None}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # sublayers created in build() follow the global policy
    try:
        clone = model.__class__.from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def _output_entries(spec) -> list:
    """[(layer_name, node, tensor), ...] from a functional config's output_layers (list or dict)."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [v for v in spec.values()]
    if spec and isinstance(spec[0], str):
        return [spec]
    return list(spec)


def compute_dtypes(model) -> dict[str, str]:
    """{layer name: compute dtype} of every layer of `model`, nested layers included."""
    out = {}
    from esnet_tf.compat import flatten_layers

    for layer in flatten_layers(model):
        out[layer.name] = layer.dtype_policy.compute_dtype
    return out


def inference_policy(precision: str = "auto") -> str:
    """Dtype policy for prediction: like `resolve_policy`, but with bf16 *weights* ('bfloat16').

    At inference there are no gradient updates to keep in float32, so storing the weights in bf16
    saves the per-call float32 -> bf16 casts of a mixed policy.
    """
    policy = resolve_policy(precision)
    return "bfloat16" if policy == "mixed_bfloat16" else policy


def inference_function(model, precision: str = "auto"):
    """(callable, policy): the callable maps a dict of float32 input arrays to float32 (N,) eV/atom.

    The model is copied under `inference_policy(precision)` (input normalisation and output layer
    float32) and wrapped in one `tf.function` (no XLA: it measured slower here, see
    benchmarks/README.md).
    """
    import numpy as np
    import tensorflow as tf

    from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME

    policy = inference_policy(precision)
    fast = model if policy == "float32" else with_policy(model, policy)
    specs = {t.name: tf.TensorSpec((None, *t.shape[1:]), tf.float32) for t in fast.inputs}
    graph = tf.function(lambda x: fast(x, training=False)[OUTPUT_NAME], input_signature=[specs])

    def predict(inputs: dict) -> np.ndarray:
        y = graph({k: tf.convert_to_tensor(np.asarray(inputs[k], dtype=np.float32)) for k in INPUT_NAMES})
        return y.numpy().astype(np.float32).reshape(-1)

    predict.model = fast
    return predict, policy
