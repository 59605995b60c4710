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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: TensorFlow and Keras are imported where they are used
    import keras
    import numpy as np

    from esnet_tf.model import ESNetConfig

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
    onednn = "" if native or flags == "none" else ", oneDNN off"
    return f"precision {policy} ({where}; native bf16 CPU flags: {flags}{onednn})"


def _keep_float32(layer_config: dict, output_names: set[str]) -> bool:
    return layer_config.get("class_name") in FLOAT32_LAYERS or layer_config.get("name") in output_names


def with_policy(model: keras.Model, policy: str) -> keras.Model:
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


def compute_dtypes(model: keras.Model) -> dict[str, str]:
    """{layer name: compute dtype} of every layer of `model`, nested layers included."""
    out = {}
    from esnet_tf.compat import flatten_layers

    for layer in flatten_layers(model):
        out[layer.name] = layer.dtype_policy.compute_dtype
    return out


def inference_policy(precision: str = "auto") -> str:
    """Dtype policy for prediction: like `resolve_policy`, but with bf16 *weights* ('bfloat16').

    At inference there are no gradient updates to keep in float32, so storing the weights in bf16
    saves the per-call float32 -> bf16 casts of a mixed policy. ('auto' here is the static guess;
    `inference_function(model, 'auto')` measures instead, see `choose_precision`.)
    """
    policy = resolve_policy(precision)
    return "bfloat16" if policy == "mixed_bfloat16" else policy


# ---------------------------------------------------------------- 'auto' by measurement

#: environment variable steering `--precision auto`: unset or 'cache' (measure once, then reuse
#: the cached choice), 'refresh' (measure again and overwrite the cache), 'nocache' (measure,
#: neither read nor write the cache), 'static' (no measuring: the CPU-flag rule of
#: `resolve_policy`), or a policy name to force ('float32', 'mixed_bfloat16', 'bfloat16')
AUTO_ENV = "ESNET_AUTO_PRECISION"
#: environment variable naming the cache file (default: $XDG_CACHE_HOME/esnet_tf/precision.json)
CACHE_ENV = "ESNET_PRECISION_CACHE"
#: a low precision is chosen only when its best step is this much faster than float32's
MARGIN = 0.03
#: candidate policies per kind of work, float32 first (the baseline it must beat)
CANDIDATES: dict[str, tuple[str, ...]] = {"train": ("float32", "mixed_bfloat16"),
                                          "infer": ("float32", "bfloat16")}


def cache_file() -> Path:
    """Where the measured 'auto' choices are cached (JSON): $ESNET_PRECISION_CACHE, else
    $XDG_CACHE_HOME/esnet_tf/precision.json, else ~/.cache/esnet_tf/precision.json."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "esnet_tf" / "precision.json"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, family/model numbers and bf16 flags (the cache key's machine part)."""
    info: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if ":" in line:
                k, v = (part.strip() for part in line.split(":", 1))
                info.setdefault(k, v)
            elif info:
                break  # first processor only
    import platform

    name = info.get("model name") or platform.processor() or platform.machine()
    flags = ",".join(f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags()) or "no-bf16"
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}; {flags}; " \
           f"{os.cpu_count()} cpus)"


#: bumped when what is timed changes (2: inference measured on the frozen graph), so old choices are remeasured
MEASUREMENT_VERSION = 2


def cache_key(kind: str, model_config: dict, batch_size: int) -> str:
    """Key of one cached choice: CPU model, TF version, kind ('train'/'infer'), batch size, config hash,
    MEASUREMENT_VERSION."""
    import hashlib
    import json

    import tensorflow as tf

    digest = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{cpu_model()} | tf {tf.__version__} | {kind} | batch {int(batch_size)} | config {digest} | " \
           f"v{MEASUREMENT_VERSION}"


def _read_cache() -> dict:
    import json

    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    import json

    from esnet_tf.atomic import write_text

    data = _read_cache()
    data[key] = entry
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file(), json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: the choice still applies to this run, it is just not remembered


def _time_alternating(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Wall seconds of `rounds` calls of each step function, alternating A B A B ... after one
    untimed warm-up call each (tracing), so that load changes hit every candidate alike."""
    import time

    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _decide(times: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    """The candidate with the fastest best step, unless it beats float32 by less than MARGIN.

    The best (minimum) of the timed steps, not the median: on a shared machine other processes
    only ever add time to a step, so the minimum is the estimate least moved by load.
    """
    best_s = {k: min(v) for k, v in times.items()}
    best = min(best_s, key=best_s.get)
    if best != "float32" and "float32" in best_s and best_s[best] > best_s["float32"] * (1 - MARGIN):
        best = "float32"
    return best, best_s


def _random_inputs(shapes: dict[str, tuple[int, ...]], batch_size: int, seed: int = 0) -> dict:
    """Non-negative random inputs (DOS-like magnitudes); throughput does not depend on the values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {k: np.abs(rng.normal(0.0, 0.3, (batch_size, *s))).astype(np.float32) for k, s in shapes.items()}


def _measure_train(model_config, batch_size: int, rounds: int) -> dict[str, list[float]]:
    import numpy as np

    from esnet_tf.model import ESNetConfig, build_esnet, compile_esnet

    config = model_config if isinstance(model_config, ESNetConfig) else ESNetConfig.from_dict(model_config)
    base = build_esnet(config)
    shapes = {t.name: tuple(t.shape[1:]) for t in base.inputs}
    x = _random_inputs(shapes, batch_size)
    y = {OUTPUT: np.zeros((batch_size,), np.float32)}
    steps = {}
    for policy in CANDIDATES["train"]:
        model = base if policy == "float32" else with_policy(base, policy)
        compile_esnet(model)
        steps[policy] = (lambda m: lambda: m.train_on_batch(x, y))(model)
    return _time_alternating(steps, rounds)


OUTPUT = "formation_energy_per_atom"


def _measure_infer(model, batch_size: int, rounds: int) -> dict[str, list[float]]:
    shapes = {t.name: tuple(t.shape[1:]) for t in model.inputs}
    x = _random_inputs(shapes, batch_size)
    steps = {policy: (lambda f: lambda: f(x))(frozen_inference(model, policy))
             for policy in CANDIDATES["infer"]}
    return _time_alternating(steps, rounds)


def choose_precision(model_or_config: keras.Model | ESNetConfig | dict, kind: str = "train", *, batch_size: int = 64,
                     rounds: int = 4, run_dir: str | Path | None = None) -> dict:
    """Measure, on this machine, which precision runs ESNet fastest for `kind` ('train' or 'infer').

    `model_or_config`: an `ESNetConfig` (or its dict) for 'train' (a fresh model of that config is
    timed: `rounds` Adam steps per candidate, alternating), a built Keras model for 'infer' (its
    own weights: `rounds` batches per candidate). Candidates: float32 and bf16 (mixed for
    training, bf16 weights for inference), bf16 only on a CPU with native bf16; a low precision
    wins only if its best step beats float32's best by `MARGIN`, so 'auto' is never measurably
    slower than float32. On a GPU: mixed_float16, not measured.

    The result is cached per CPU model, TF version, kind, batch size and model config (see
    `cache_file`, `AUTO_ENV`). Returns {'policy', 'kind', 'reason', 'best_s', 'median_s', 'timings_s', 'key',
    'cached', ...}; with `run_dir` it is also written to `run_dir/precision_<kind>.json`.
    """
    if kind not in CANDIDATES:
        raise ValueError(f"unknown kind {kind!r}; use 'train' or 'infer'")
    import time

    mode = os.environ.get(AUTO_ENV, "cache").strip() or "cache"
    if kind == "train":
        config = model_or_config if isinstance(model_or_config, dict) else model_or_config.to_dict()
    else:
        config = model_or_config.get_config()
    key = cache_key(kind, config, batch_size)
    entry: dict | None = None
    low = CANDIDATES[kind][1]
    if mode not in ("cache", "refresh", "nocache", "static"):
        if mode not in (*CANDIDATES["train"], *CANDIDATES["infer"]):
            raise ValueError(f"{AUTO_ENV}={mode!r}: use cache, refresh, nocache, static or a policy name")
        forced = low if mode != "float32" else "float32"
        entry = {"policy": forced, "reason": f"forced by {AUTO_ENV}={mode}"}
    elif has_gpu():
        entry = {"policy": "mixed_float16" if kind == "train" else "float32", "reason": "GPU (not measured)"}
    elif mode == "static" or not native_bf16_cpu():
        policy = resolve_policy("auto")
        policy = policy if kind == "train" else ("bfloat16" if policy == "mixed_bfloat16" else policy)
        entry = {"policy": policy, "reason": "static CPU-flag rule" if mode == "static"
                 else "no native bf16 on this CPU (bf16 would be emulated)"}
    elif mode == "cache":
        cached = _read_cache().get(key)
        if isinstance(cached, dict) and cached.get("policy") in CANDIDATES[kind]:
            entry = {**cached, "cached": True}
    if entry is None:
        t = time.perf_counter()
        times = _measure_train(model_or_config, batch_size, rounds) if kind == "train" \
            else _measure_infer(model_or_config, batch_size, rounds)
        import statistics

        best, fastest = _decide(times)
        entry = {"policy": best, "reason": f"measured: fastest best step (bf16 needs >= {MARGIN:.0%} over float32)",
                 "best_s": {k: round(v, 4) for k, v in fastest.items()},
                 "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
                 "timings_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
                 "speedup_vs_float32": round(fastest["float32"] / fastest[best], 3),
                 "measure_wall_s": round(time.perf_counter() - t, 1), "rounds": rounds,
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_avg": round(os.getloadavg()[0], 2),
                 "cached": False}
        if mode != "nocache":
            _write_cache(key, {k: v for k, v in entry.items() if k != "cached"})
    entry = {"kind": kind, "batch_size": int(batch_size), "key": key, "cache_file": str(cache_file()),
             "cached": False, **entry}
    if run_dir is not None:
        import json

        from esnet_tf.atomic import write_text

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(run_dir) / f"precision_{kind}.json", json.dumps(entry, indent=1))
    return entry


def train_policy(precision: str, model_config: ESNetConfig | dict, *, batch_size: int = 64,
                 run_dir: str | Path | None = None) -> tuple[str, dict | None]:
    """(Keras policy, auto's record or None) for training under `--precision`; 'auto' measures."""
    if precision != "auto":
        return resolve_policy(precision), None
    choice = choose_precision(model_config, "train", batch_size=batch_size, run_dir=run_dir)
    return choice["policy"], choice


# ---------------------------------------------------------------- the one inference function

#: examples per model call at inference: on the 2-core AMX Xeon, side by side (benchmarks/README.md),
#: batches of 32-64 ran 1.2-1.3x faster per example than 256, in bf16 and in float32
INFERENCE_BATCH = 64

def frozen_inference(model: keras.Model, policy: str) -> Callable[[dict], dict]:
    """Frozen inference graph: maps a dict of float32 arrays (batch, ...) to the model's float32
    outputs dict, computed under `policy` ('float32' or 'bfloat16': bf16 weights; the input
    normalisation and the output layer stay float32). `.concrete` is the frozen ConcreteFunction.

    The traced function (training=False) gets its weights folded in as constants
    (`esnet_tf.compat.freeze`), so TensorFlow's graph optimiser folds each BatchNorm into its
    convolution and fuses bias and activation: on the 2-core AMX Xeon, paper config, batch 64, side
    by side, 1.7-2x the samples/s of the same function reading variables (benchmarks/README.md).
    Same numbers (float32: within 1e-6 eV/atom).
    """
    import tensorflow as tf

    from esnet_tf.compat import flat_op_names, freeze

    current = {layer.dtype_policy.compute_dtype for layer in model.layers if hasattr(layer, "dtype_policy")}
    fast = model if (policy == "float32" and current <= {"float32"}) else with_policy(model, policy)
    specs = {t.name: tf.TensorSpec((None, *t.shape[1:]), tf.float32, name=t.name) for t in fast.inputs}
    output_names = list(fast.output) if isinstance(fast.output, dict) else list(fast.output_names)

    def infer(x):
        y = fast(x, training=False)
        y = y if isinstance(y, dict) else dict(zip(output_names, tf.nest.flatten(y)))
        return {k: tf.cast(y[k], tf.float32) for k in output_names}

    with flat_op_names():
        concrete = freeze(tf.function(infer, input_signature=[specs]).get_concrete_function())
    # the frozen function takes its inputs flat (an input the outputs do not use is pruned away) and
    # returns tf.nest's flat order of the outputs dict
    input_order = [t.name.split(":")[0] for t in concrete.inputs if t.dtype != tf.resource]
    output_order = sorted(output_names)

    def graph(x: dict) -> dict:  # a frozen function binds tensors only (not numpy arrays)
        return dict(zip(output_order, concrete(*[tf.convert_to_tensor(x[k], tf.float32) for k in input_order])))

    graph.model = fast
    graph.concrete = concrete
    graph.specs = specs
    graph.output_names = output_order
    return graph


def inference_function(model: keras.Model, precision: str = "auto", *, batch_size: int = 64,
                       run_dir: str | Path | None = None) -> tuple[Callable[[dict], np.ndarray], str]:
    """(callable, policy): the one fast inference path (esnet predict, the benchmark, export).

    The callable maps a dict of input arrays (any N; float32 IS-DOS) to float32 (N,) eV/atom,
    running one `tf.function` over batches of `batch_size` (no XLA: it measured slower, see
    benchmarks/README.md); `callable.outputs(inputs)` returns every output ({name: (N,)}, e.g. an
    ensemble's std). `precision`: 'auto' measures float32 against bf16 weights on this model
    (`choose_precision(model, 'infer')`, cached; the record is `callable.choice`), 'float32', or
    'bfloat16'/'mixed' (bf16 weights where the CPU has native bf16).
    """
    import numpy as np

    from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME

    choice = None
    if precision == "auto":
        choice = choose_precision(model, "infer", batch_size=batch_size, run_dir=run_dir)
        policy = choice["policy"]
    else:
        policy = inference_policy(precision)
    graph = frozen_inference(model, policy)
    import tensorflow as tf

    def outputs(inputs: dict) -> dict[str, np.ndarray]:
        n = len(inputs[INPUT_NAMES[0]])
        parts: dict[str, list] = {}
        for start in range(0, n, batch_size):
            # every input the model takes: the IS-DOS fields and any energy inputs ((N, 1) eV/atom)
            y = graph({k: tf.convert_to_tensor(np.asarray(inputs[k][start:start + batch_size], dtype=np.float32)
                                               .reshape((-1, *spec.shape[1:])))
                       for k, spec in graph.specs.items()})
            for k, v in y.items():
                parts.setdefault(k, []).append(v.numpy().reshape(-1))
        return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()} if parts else \
            {OUTPUT_NAME: np.zeros(0, np.float32)}

    def predict(inputs: dict) -> np.ndarray:
        return outputs(inputs)[OUTPUT_NAME]

    predict.outputs = outputs
    predict.model = graph.model
    predict.choice = choice
    predict.policy = policy
    return predict, policy
