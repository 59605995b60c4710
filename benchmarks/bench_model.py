"""Training and inference throughput (samples/s) of ESNet configs on this machine.

    .venv/bin/python benchmarks/bench_model.py                 # paper and small
    .venv/bin/python benchmarks/bench_model.py --configs small --batch-size 64 --steps 20
    .venv/bin/python benchmarks/bench_model.py --configs small --first-step   # tracing cost only

Inputs are real IS-DOS when an .npz of `esnet featurize` is given (--features), otherwise
random non-negative arrays of the same shapes (throughput does not depend on the values).
Training = Adam + log-cosh train steps after a warm-up (the first step traces the graph);
inference = compiled `predict_on_batch`. `--first-step` times the first train step of fresh
models compiled two ways: `esnet_tf.model.compile_esnet` (Adam's slot variables built at compile,
as `esnet train` does) and Keras's default (slots created lazily inside the first traced step).
Prints one JSON line per config and measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def batch_of(n: int, features: str | None, rng: np.random.Generator) -> dict:
    if features:
        from esnet_tf.featurize import load_examples

        a = load_examples(features)
        idx = rng.integers(0, len(a["id"]), n)
        return {k: a[k][idx].astype(np.float32) for k in ("dos_up", "dos_down", "composition")}
    comp = rng.random((n, 118)).astype(np.float32)
    return {"dos_up": rng.gamma(0.5, 0.2, (n, 1500, 9)).astype(np.float32),
            "dos_down": rng.gamma(0.5, 0.2, (n, 1500, 9)).astype(np.float32),
            "composition": comp / comp.sum(1, keepdims=True)}


def bench(config_name: str, batch_size: int, steps: int, features: str | None) -> list[dict]:
    import keras
    import tensorflow as tf

    from esnet_tf.model import OUTPUT_NAME, ESNetConfig, build_esnet

    rng = np.random.default_rng(0)
    model = build_esnet(ESNetConfig.named(config_name))
    model.compile(optimizer=keras.optimizers.Adam(1.5e-3), loss={OUTPUT_NAME: keras.losses.LogCosh()})
    x = batch_of(batch_size, features, rng)
    y = {OUTPUT_NAME: rng.normal(0, 0.5, (batch_size, 1)).astype(np.float32)}
    common = {"config": config_name, "params": int(model.count_params()), "batch_size": batch_size,
              "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
              "cpu": platform.processor() or platform.machine()}
    t = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t
    model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train_s = time.perf_counter() - t
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    t = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer_s = time.perf_counter() - t
    return [{**common, "measure": "train", "samples_per_s": steps * batch_size / train_s,
             "first_step_s": first, "steps": steps},
            {**common, "measure": "inference", "samples_per_s": steps * batch_size / infer_s, "steps": steps}]


def first_steps(config_name: str, batch_size: int, repeats: int) -> list[dict]:
    """Seconds of the first `train_on_batch` of fresh models: optimizer built at compile vs lazily."""
    import keras

    from esnet_tf.model import OUTPUT_NAME, ESNetConfig, build_esnet, compile_esnet

    rng = np.random.default_rng(0)
    x = batch_of(batch_size, None, rng)
    y = {OUTPUT_NAME: rng.normal(0, 0.5, (batch_size, 1)).astype(np.float32)}
    times: dict[str, list[float]] = {"compile_esnet (slots built at compile)": [], "keras default (lazy slots)": []}
    for _ in range(repeats):
        for way in times:  # alternating, so that load changes hit both
            model = build_esnet(ESNetConfig.named(config_name))
            t = time.perf_counter()
            if way.startswith("compile_esnet"):
                compile_esnet(model, 1.5e-3, "log_cosh")
            else:
                model.compile(optimizer=keras.optimizers.Adam(1.5e-3), loss={OUTPUT_NAME: keras.losses.LogCosh()},
                              metrics={OUTPUT_NAME: [keras.metrics.MeanAbsoluteError(name="mae")]})
            model.train_on_batch(x, y)
            times[way].append(time.perf_counter() - t)
    return [{"config": config_name, "measure": "first_train_step_s (compile + first step)", "compile": way,
             "batch_size": batch_size, "runs_s": [round(v, 2) for v in ts], "min_s": round(min(ts), 2),
             "cpu": platform.processor() or platform.machine()} for way, ts in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="paper,small", help="comma-separated config names or JSON files")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step (the authors' 64)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--features", help="optional .npz of `esnet featurize` to draw real inputs from")
    p.add_argument("--first-step", action="store_true", help="only the first-step (tracing) comparison")
    p.add_argument("--repeats", type=int, default=3, help="fresh models per way with --first-step")
    args = p.parse_args()
    if args.first_step:
        for name in args.configs.split(","):
            for row in first_steps(name, args.batch_size, args.repeats):
                print(json.dumps(row))
        return
    for name in args.configs.split(","):
        for row in bench(name, args.batch_size, args.steps, args.features):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
