"""Numeric precision of ESNet: detect native bfloat16, pick a Keras dtype policy, apply it.

    from esnet_tf.precision import resolve_policy, with_policy
    policy = resolve_policy("auto")        # 'mixed_bfloat16' on a CPU with AVX512_BF16 / AMX,
                                           # 'mixed_float16' on a GPU, else 'float32'
    fast = with_policy(model, policy)      # same weights, convolutions and dense layers in bf16

Under a mixed policy the variables stay float32 (Adam updates them in float32) and the layers
compute in the low precision, except the ones listed in `FLOAT32_LAYERS` (the input checks, the
input normalisation and the final Dense that produces eV/atom): the output, and so the loss, is
float32. On CPUs without native bf16 (no AVX512_BF16 / AMX_BF16), bf16 is emulated and slower
than float32, so 'auto' never considers it there.

XLA (`jit_compile`) is the other lever: `--precision auto` times float32 with and without XLA (and
bf16 where the CPU has it) on this machine and keeps a candidate only if it beats plain float32 by
`MARGIN` in its best and in its median step (`_decide`); the choice is cached per CPU model.
float32 with XLA gives the same predictions as plain float32 within `XLA_TOLERANCE_EV`.
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
#: `resolve_policy`, no XLA), or a candidate to force ('float32', 'float32+xla', 'mixed_bfloat16', 'bfloat16')
AUTO_ENV = "ESNET_AUTO_PRECISION"
#: environment variable naming the cache file (default: $XDG_CACHE_HOME/esnet_tf/precision.json)
CACHE_ENV = "ESNET_PRECISION_CACHE"
#: a low precision is chosen only when its best step is this much faster than float32's
MARGIN = 0.03
#: suffix of a candidate compiled by XLA ('float32+xla': float32, `jit_compile=True`)
XLA = "+xla"
#: every candidate per kind of work, float32 first (the baseline it must beat): float32, float32 with
#: XLA, and bf16 (mixed for training, bf16 weights for inference; measured only on a CPU with native
#: bf16, see `candidates`). bf16 with XLA is not a candidate: XLA's CPU convolutions do not use oneDNN's
#: bf16 kernels and measured 0.4-0.6x of bf16 without XLA (benchmarks/README.md, Zen 4).
CANDIDATES: dict[str, tuple[str, ...]] = {"train": ("float32", "float32" + XLA, "mixed_bfloat16"),
                                          "infer": ("float32", "float32" + XLA, "bfloat16")}
#: float32 with XLA against plain float32: largest difference of a prediction, eV/atom (XLA's fusions
#: reassociate sums, so the last bits differ: ~1e-7 measured; tests/test_precision.py)
XLA_TOLERANCE_EV = 1e-4


#: XLA:CPU options for the XLA candidates (TensorFlow 2.21's XLA; an unknown flag aborts the process, so
#: they are set only on the TensorFlow minor version they were checked on). The concurrency-optimised
#: scheduler orders the compiled step so that independent ops (ESNet's two spin branches) run at the
#: same time, as TensorFlow's own executor runs them: XLA's train step took less CPU time than plain
#: TensorFlow but no less wall time on 2 threads without it (docs/performance.md)
XLA_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_enable_concurrency_optimized_scheduler=true",)
XLA_FLAGS_CHECKED_TF = "2.21."


def set_xla_flags() -> bool:
    """Add `XLA_CPU_FLAGS` to $XLA_FLAGS (a flag the user set there is left as it is). XLA reads
    $XLA_FLAGS once, at its first compilation in the process: call this before it. Returns whether
    the flags are in place (False on another TensorFlow version)."""
    import tensorflow as tf

    if not tf.__version__.startswith(XLA_FLAGS_CHECKED_TF):
        return False
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in current]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return True


def split_candidate(name: str) -> tuple[str, bool]:
    """'float32+xla' -> ('float32', True); 'mixed_bfloat16' -> ('mixed_bfloat16', False)."""
    return (name[: -len(XLA)], True) if name.endswith(XLA) else (name, False)


def candidates(kind: str) -> tuple[str, ...]:
    """The candidates `--precision auto` measures on this machine for `kind` ('train'/'infer'):
    float32 and float32 with XLA everywhere, the bf16 one only on a CPU with native bf16."""
    if kind not in CANDIDATES:
        raise ValueError(f"unknown kind {kind!r}; use 'train' or 'infer'")
    return tuple(c for c in CANDIDATES[kind] if split_candidate(c)[0] == "float32" or native_bf16_cpu())


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


#: bumped when what is timed changes (2: inference measured on the frozen graph; 3: float32 with XLA is a
#: candidate, measured on every CPU, and a winner must beat float32 in its best and its median step), so
#: old choices are remeasured
MEASUREMENT_VERSION = 3


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


def _time_alternating(steps: dict, rounds: int, first: dict | None = None) -> dict[str, list[float]]:
    """Wall seconds of `rounds` calls of each step function, alternating A B A B ... after one
    untimed warm-up call each (tracing, XLA compilation; its seconds go to `first` if given), so
    that load changes hit every candidate alike."""
    import time

    for name, fn in steps.items():
        t = time.perf_counter()
        fn()
        if first is not None:
            first[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _decide(times: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    """(winner, best step per candidate) from the timed steps (seconds) of each candidate.

    A candidate other than float32 qualifies only if both its best (minimum) step and its median
    step beat float32's by `MARGIN`: the minimum is the estimate least moved by load (other
    processes only ever add time to a step), the median guards against one lucky step. The winner
    is the qualifying candidate with the fastest best step, else float32 (also when float32 was
    not timed: nothing was shown to beat it).
    """
    import statistics

    best_s = {k: min(v) for k, v in times.items()}
    if "float32" not in times:
        return "float32", best_s
    median = {k: statistics.median(v) for k, v in times.items()}
    ok = [k for k in times if k != "float32" and best_s[k] <= best_s["float32"] * (1 - MARGIN)
          and median[k] <= median["float32"] * (1 - MARGIN)]
    return (min(ok, key=best_s.get) if ok else "float32"), best_s


def _random_inputs(shapes: dict[str, tuple[int, ...]], batch_size: int, seed: int = 0) -> dict:
    """Non-negative random inputs (DOS-like magnitudes); throughput does not depend on the values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {k: np.abs(rng.normal(0.0, 0.3, (batch_size, *s))).astype(np.float32) for k, s in shapes.items()}


def _measure_train(model_config, batch_size: int, rounds: int, names: tuple[str, ...] | None = None,
                   first: dict | None = None) -> dict[str, list[float]]:
    """Seconds of `rounds` Adam steps of a fresh model of `model_config` per candidate in `names`."""
    import numpy as np

    from esnet_tf.model import ESNetConfig, build_esnet, compile_esnet

    config = model_config if isinstance(model_config, ESNetConfig) else ESNetConfig.from_dict(model_config)
    base = build_esnet(config)
    shapes = {t.name: tuple(t.shape[1:]) for t in base.inputs}
    x = _random_inputs(shapes, batch_size)
    y = {OUTPUT: np.zeros((batch_size,), np.float32)}
    steps = {}
    for name in names or candidates("train"):
        policy, xla = split_candidate(name)
        if xla:
            set_xla_flags()
        model = base if name == "float32" else with_policy(base, policy)  # each its own optimizer and steps
        compile_esnet(model)
        model.jit_compile = xla
        steps[name] = (lambda m: lambda: m.train_on_batch(x, y))(model)
    return _time_alternating(steps, rounds, first)


OUTPUT = "formation_energy_per_atom"


def _measure_infer(model, batch_size: int, rounds: int, names: tuple[str, ...] | None = None,
                   first: dict | None = None) -> dict[str, list[float]]:
    """Seconds of `rounds` batches of `model`'s frozen inference graph per candidate in `names`."""
    shapes = {t.name: tuple(t.shape[1:]) for t in model.inputs}
    x = _random_inputs(shapes, batch_size)
    steps = {}
    for name in names or candidates("infer"):
        policy, xla = split_candidate(name)
        steps[name] = (lambda f: lambda: {k: v.numpy() for k, v in f(x).items()})(
            frozen_inference(model, policy, xla=xla))
    return _time_alternating(steps, rounds, first)


def choose_precision(model_or_config: keras.Model | ESNetConfig | dict, kind: str = "train", *, batch_size: int = 64,
                     rounds: int = 4, run_dir: str | Path | None = None,
                     among: tuple[str, ...] | None = None) -> dict:
    """Measure, on this machine, which precision and compilation runs ESNet fastest for `kind`.

    `kind`: 'train' or 'infer'. `model_or_config`: an `ESNetConfig` (or its dict) for 'train' (a
    fresh model of that config is timed: `rounds` Adam steps per candidate, alternating), a built
    Keras model for 'infer' (its own weights: `rounds` batches of its frozen graph per candidate).
    Candidates (`candidates(kind)`, or the subset `among`): float32, float32 with XLA, and bf16 on a
    CPU with native bf16. A candidate wins only if its best and its median step beat float32's by
    `MARGIN` (`_decide`), so 'auto' is never measurably slower than plain float32. The untimed first
    call (tracing, XLA compilation) is recorded as `first_call_s`. On a GPU: mixed_float16, not measured.

    The result is cached per CPU model, TF version, kind, batch size and model config (see
    `cache_file`, `AUTO_ENV`). Returns {'policy' (Keras policy), 'xla' (bool), 'candidate', 'kind',
    'reason', 'best_s', 'median_s', 'timings_s', 'key', 'cached', ...}; with `run_dir` it is also
    written to `run_dir/precision_<kind>.json`.
    """
    if kind not in CANDIDATES:
        raise ValueError(f"unknown kind {kind!r}; use 'train' or 'infer'")
    import time

    names = candidates(kind) if among is None else tuple(among)
    if not names or "float32" not in names or any(n not in CANDIDATES[kind] for n in names):
        raise ValueError(f"among={among!r}: float32 and any of {', '.join(CANDIDATES[kind])}")
    mode = os.environ.get(AUTO_ENV, "cache").strip() or "cache"
    if kind == "train":
        config = model_or_config if isinstance(model_or_config, dict) else model_or_config.to_dict()
    else:
        config = model_or_config.get_config()
    key = cache_key(kind, config, batch_size) + ("" if among is None else f" | among {','.join(names)}")
    entry: dict | None = None
    if mode not in ("cache", "refresh", "nocache", "static"):
        if mode not in (*CANDIDATES["train"], *CANDIDATES["infer"]):
            raise ValueError(f"{AUTO_ENV}={mode!r}: use cache, refresh, nocache, static or one of "
                             f"{', '.join(sorted({*CANDIDATES['train'], *CANDIDATES['infer']}))}")
        forced = mode if mode.startswith("float32") else CANDIDATES[kind][2]  # a bf16 name: this kind's bf16
        entry = {"candidate": forced, "reason": f"forced by {AUTO_ENV}={mode}"}
    elif has_gpu():
        entry = {"candidate": "mixed_float16" if kind == "train" else "float32", "reason": "GPU (not measured)"}
    elif mode == "static":
        policy = resolve_policy("auto")
        policy = policy if kind == "train" else ("bfloat16" if policy == "mixed_bfloat16" else policy)
        entry = {"candidate": policy, "reason": "static CPU-flag rule (no XLA)"}
    elif len(names) == 1:
        entry = {"candidate": "float32", "reason": "float32 is the only candidate (not measured)"}
    elif mode == "cache":
        cached = _read_cache().get(key)
        if isinstance(cached, dict) and cached.get("candidate") in names:
            entry = {**cached, "cached": True}
    if entry is None:
        import gc
        import statistics

        t = time.perf_counter()
        first: dict[str, float] = {}
        times = _measure_train(model_or_config, batch_size, rounds, names, first) if kind == "train" \
            else _measure_infer(model_or_config, batch_size, rounds, names, first)
        gc.collect()  # the timed copies (and their traced functions) go now, not during the real work
        best, fastest = _decide(times)
        entry = {"candidate": best,
                 "reason": f"measured: {', '.join(names)}; another candidate than float32 needs >= {MARGIN:.0%} "
                           "over float32 in its best and its median step",
                 "best_s": {k: round(v, 4) for k, v in fastest.items()},
                 "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
                 "timings_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
                 "first_call_s": {k: round(v, 2) for k, v in first.items()},
                 "speedup_vs_float32": round(fastest["float32"] / fastest[best], 3),
                 "measure_wall_s": round(time.perf_counter() - t, 1), "rounds": rounds,
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_avg": round(os.getloadavg()[0], 2),
                 "cached": False}
        if mode != "nocache":
            _write_cache(key, {k: v for k, v in entry.items() if k != "cached"})
    policy, xla = split_candidate(entry["candidate"])
    if xla:  # the XLA options the candidate was measured with, before the caller compiles
        set_xla_flags()
    entry = {"kind": kind, "batch_size": int(batch_size), "key": key, "cache_file": str(cache_file()),
             "cached": False, **entry, "policy": policy, "xla": xla}
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

def frozen_inference(model: keras.Model, policy: str, *, xla: bool = False) -> Callable[[dict], dict]:
    """Frozen inference graph: maps a dict of float32 arrays (batch, ...) to the model's float32
    outputs dict, computed under `policy` ('float32' or 'bfloat16': bf16 weights; the input
    normalisation and the output layer stay float32). `.concrete` is the frozen ConcreteFunction.

    The traced function (training=False) gets its weights folded in as constants
    (`esnet_tf.compat.freeze`), so TensorFlow's graph optimiser folds each BatchNorm into its
    convolution and fuses bias and activation: on the 2-core AMX Xeon, paper config, batch 64, side
    by side, 1.7-2x the samples/s of the same function reading variables (benchmarks/README.md).
    Same numbers (float32: within 1e-6 eV/atom).

    `xla`: run the frozen function compiled by XLA (`tf.function(jit_compile=True)` over it; its
    weights are XLA constants). XLA compiles once per input shape (feed whole batches); float32
    with XLA agrees with plain float32 within `XLA_TOLERANCE_EV`.
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
    if xla:
        set_xla_flags()
    run = tf.function(lambda *args: concrete(*args), jit_compile=True) if xla else concrete

    def graph(x: dict) -> dict:  # a frozen function binds tensors only (not numpy arrays)
        return dict(zip(output_order, run(*[tf.convert_to_tensor(x[k], tf.float32) for k in input_order])))

    graph.model = fast
    graph.xla = bool(xla)
    graph.concrete = concrete
    graph.specs = specs
    graph.output_names = output_order
    return graph


def inference_function(model: keras.Model, precision: str = "auto", *, batch_size: int = 64,
                       run_dir: str | Path | None = None,
                       xla: bool | None = None) -> tuple[Callable[[dict], np.ndarray], str]:
    """(callable, policy): the one fast inference path (esnet predict, the benchmark, export).

    The callable maps a dict of input arrays (any N; float32 IS-DOS) to float32 (N,) eV/atom,
    running the frozen graph (`frozen_inference`) over batches of `batch_size`;
    `callable.outputs(inputs)` returns every output ({name: (N,)}, e.g. an ensemble's std).
    `precision`: 'auto' measures plain float32 against float32 with XLA (and bf16 weights where the
    CPU has native bf16) on this model (`choose_precision(model, 'infer')`, cached; the record is
    `callable.choice`) and keeps plain float32 unless another is faster by `MARGIN`; 'float32'; or
    'bfloat16'/'mixed' (bf16 weights where the CPU has native bf16). `xla`: force XLA on or off
    (None: off, or auto's choice). Under XLA the last, partial batch is padded to `batch_size` (by
    repeating its last row; the padding's outputs are dropped) so XLA compiles one shape only.
    """
    import numpy as np

    from esnet_tf.isdos import INPUT_NAMES, OUTPUT_NAME

    choice = None
    if precision == "auto":
        choice = choose_precision(model, "infer", batch_size=batch_size, run_dir=run_dir)
        policy = choice["policy"]
        use_xla = choice["xla"] if xla is None else bool(xla)
    else:
        policy = inference_policy(precision)
        use_xla = bool(xla)
    graph = frozen_inference(model, policy, xla=use_xla)
    import tensorflow as tf

    def outputs(inputs: dict) -> dict[str, np.ndarray]:
        n = len(inputs[INPUT_NAMES[0]])
        parts: dict[str, list] = {}
        for start in range(0, n, batch_size):
            # every input the model takes: the IS-DOS fields and any energy inputs ((N, 1) eV/atom)
            chunk = {k: np.asarray(inputs[k][start:start + batch_size], dtype=np.float32).reshape((-1, *spec.shape[1:]))
                     for k, spec in graph.specs.items()}
            m = len(chunk[INPUT_NAMES[0]])
            if use_xla and m < batch_size:  # one compiled shape: pad with copies of the last row
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, axis=0)]) for k, v in chunk.items()}
            y = graph({k: tf.convert_to_tensor(v) for k, v in chunk.items()})
            for k, v in y.items():
                parts.setdefault(k, []).append(v.numpy().reshape(-1)[:m])
        return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()} if parts else \
            {OUTPUT_NAME: np.zeros(0, np.float32)}

    def predict(inputs: dict) -> np.ndarray:
        return outputs(inputs)[OUTPUT_NAME]

    predict.outputs = outputs
    predict.model = graph.model
    predict.choice = choice
    predict.policy = policy
    predict.xla = use_xla
    return predict, policy
