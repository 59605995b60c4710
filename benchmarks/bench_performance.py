"""ESNet training and inference speed: ours against the authors' setup, and against the machine's limit.

    .venv/bin/python benchmarks/bench_performance.py                      # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_performance.py --repeats 1 --skip-memory --skip-accuracy

Side by side in one run, each measurement in a fresh process, alternating (reference, ours,
reference, ours, ...) so that the noise of a shared machine hits both alike:
- reference: benchmarks/reference_esnet.py (plain Keras, float32, model.fit on numpy, batch 64,
  model.predict batch 64, default threading, no XLA);
- ours: the package's model (`build_esnet`) and `esnet train` input pipeline
  (`data.training_pipeline`: cache, shuffle, batch, parallel map, prefetch) under
  `--precision auto` (its measured choice among float32, float32 with XLA and, on a CPU with
  AVX512_BF16/AMX, bf16), compiled as `esnet train` compiles it; inference through
  `precision.inference_function(model, "auto")` (the frozen graph, batch 64, auto's own choice);
- variants (--variants, default both): 'ours-float32' (plain float32, no XLA: `auto` must be at
  least this), 'ours-xla' (float32 with XLA: Keras `jit_compile=True` training, the frozen
  inference graph under `tf.function(jit_compile=True)`), 'ours-bf16' (forced bf16).
Each child also measures the attainable matmul GFLOP/s (float32 and bf16, 2048^3) right before its
own timings. The FLOPs per example are counted analytically (`esnet_tf.flops.forward_macs`) and
cross-checked against TF's op statistics of the traced graph. Peak RSS of `esnet train --config paper
--batch-size 64` (one epoch) is read in a fresh process tree. The accuracy check trains the small config
briefly with float32 and with --precision auto (same seed) and compares validation MAE, and the
predictions of the float32-trained model with its bf16 inference copy.

Inputs are real featurized demo data (datasets/is_dos/demo), repeated to fill the batches.
Prints a JSON summary (and writes it with --json).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
from esnet_tf.machine import busy_others, describe_busy, emit_result as emit  # noqa: E402


# ---------------------------------------------------------------- data

def prepare_data(out_dir: Path, n_examples: int, demo: Path = DEMO, max_rows: int = 200) -> tuple[Path, Path]:
    """Featurize up to `max_rows` labelled demo rows into out_dir/features.npz + labels.csv, tiled to
    at least `n_examples` examples (copies get ids 'ID#k' and keep their chemical system)."""
    from esnet_tf.featurize import featurize, save_examples
    from esnet_tf.labels import read_labels

    rows = read_labels(demo / "labels.csv")[:max_rows]
    if not rows:
        raise SystemExit(f"{demo / 'labels.csv'}: no labelled rows to benchmark on")
    examples = [featurize(r.file, id=r.id) for r in rows]
    reps = -(-n_examples // len(examples))
    tiled, labels = [], []
    for k in range(max(1, reps)):
        for ex, row in zip(examples, rows):
            rid = row.id if k == 0 else f"{row.id}#{k}"
            tiled.append(dataclasses.replace(ex, id=rid))
            labels.append((rid, row.formation_energy_per_atom, row.e_above_hull))
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = save_examples(tiled, out_dir / "features.npz")
    with (out_dir / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "formation_energy_per_atom", "e_above_hull"])
        w.writerows(labels)
    return Path(npz), out_dir / "labels.csv"


def load_xy(npz: Path, labels: Path, n: int):
    """First `n` examples: (inputs dict float32, targets (n, 1) eV/atom, full arrays dict)."""
    import numpy as np

    from esnet_tf.data import load_npz_arrays

    a = load_npz_arrays(str(npz), labels)
    a = {k: v[:n] for k, v in a.items()}
    x = {k: a[k].astype(np.float32) for k in ("dos_up", "dos_down", "composition")}
    return x, a["formation_energy_per_atom"].reshape(-1, 1).astype(np.float32), a


# ---------------------------------------------------------------- the machine's limit

def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best attainable GFLOP/s of an n x n x n matmul in `dtype` ('float32' or 'bfloat16'), all threads."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        c = f(a, b)
        c = f(c, b)
        c.numpy()
        best = min(best, (time.perf_counter() - t) / 2)
    return 2 * n ** 3 / best / 1e9


# ---------------------------------------------------------------- children

def parse_role(spec: str) -> tuple[str, tuple[int, int] | None]:
    """'ours-float32@1x2' -> ('ours-float32', (intra_op, inter_op)); no '@' -> (role, None) = TF's default."""
    if "@" not in spec:
        return spec, None
    role, threads = spec.split("@", 1)
    intra, inter = (int(v) for v in threads.split("x"))
    return role, (intra, inter)


def busy_processes(n: int = 6) -> list[str]:
    """The `n` processes using the most CPU right now (pcpu, elapsed, command head), for the record."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [" ".join(line.split())[:110] for line in out.splitlines()[1:n + 1]]


class StepTimer:
    """Keras callback recording the wall time (s) of every training batch."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.times: list[float] = []
                self._t = 0.0

            def on_train_batch_begin(self, batch, logs=None) -> None:
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None) -> None:
                self.times.append(time.perf_counter() - self._t)

        return _Timer()


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process: roofline, then training and inference throughput.

    Training: one warm-up step (tracing), then `--train-steps` timed steps, each timed on its own
    (the per-process level is the median step); inference: one warm-up batch, then
    `--infer-batches` timed batches.
    """
    import numpy as np
    import tensorflow as tf

    role, threads = parse_role(args.child)
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    bs = args.batch_size
    n = bs * args.train_steps
    x, y, arrays = load_xy(Path(args.features), Path(args.labels), n)
    if len(y) < n:  # tile the examples to fill the timed steps
        reps = -(-n // len(y))
        x = {k: np.concatenate([v] * reps)[:n] for k, v in x.items()}
        y = np.concatenate([y] * reps)[:n]
    limit = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16")}
    out = {"role": args.child, "threads": list(threads) if threads else "default", "n_examples": n,
           "batch_size": bs, "matmul_gflops": limit, "load_avg": os.getloadavg()[0],
           "busy": busy_processes(), "start": time.strftime("%H:%M:%S")}
    n_infer = 0 if args.skip_infer else bs * args.infer_batches
    n_xi = n_infer or bs  # (one batch of inputs even with --skip-infer, for the reference's standardisation)
    xi = {k: np.concatenate([v] * (-(-n_xi // n)))[:n_xi] for k, v in x.items()}
    timer = StepTimer()
    if role == "reference":
        import reference_esnet as ref

        model = ref.build_reference()
        ref.compile_reference(model)
        xs, xis = ref.standardize(x, xi)
        t = time.perf_counter()
        ref.fit_reference(model, {k: v[:bs] for k, v in xs.items()}, y[:bs], epochs=1, batch_size=bs)
        out["first_step_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(xs, y, batch_size=bs, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
        wall = time.perf_counter() - t
        batch_times = []
        if n_infer:
            ref.predict_reference(model, {k: v[:bs] for k, v in xis.items()}, bs)
        for start in range(0, n_infer, bs):
            t = time.perf_counter()
            ref.predict_reference(model, {k: v[start:start + bs] for k, v in xis.items()}, bs)
            batch_times.append(time.perf_counter() - t)
        out["precision"] = out["inference_precision"] = "float32"
        out["params"] = int(model.count_params())
    else:
        import keras

        from esnet_tf import data
        from esnet_tf.model import OUTPUT_NAME, ESNetConfig, build_esnet, compile_esnet, dos_statistics
        from esnet_tf.precision import inference_function, resolve_policy, with_policy

        precision = {"ours-float32": "float32", "ours-bf16": "bfloat16", "ours-xla": "float32"}.get(role, "auto")
        xla = role == "ours-xla"
        config = ESNetConfig.paper()
        if precision == "auto":
            from esnet_tf.precision import choose_precision

            choice = choose_precision(config, "train", batch_size=bs)
            out["auto_train"] = choice
            policy, xla = choice["policy"], choice["xla"]
        else:
            policy = resolve_policy(precision)
        model = build_esnet(config, normalization=dos_statistics([x]))
        if policy != "float32":
            model = with_policy(model, policy)
        compile_esnet(model)
        if xla:
            from esnet_tf.precision import set_xla_flags

            set_xla_flags()  # the XLA options auto measures its XLA candidate with
        model.jit_compile = xla  # as `esnet train` sets it
        ds = tf.data.Dataset.from_tensor_slices({**x, OUTPUT_NAME: y.reshape(-1)})
        pipe = data.training_pipeline(ds, bs, seed=0, cache="memory")
        t = time.perf_counter()
        model.fit(pipe.take(1), epochs=1, verbose=0)
        out["first_step_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(pipe, epochs=1, verbose=0, callbacks=[timer])
        wall = time.perf_counter() - t
        batch_times = []
        infer_policy = None
        if n_infer:
            predict, infer_policy = inference_function(model, precision, batch_size=bs,
                                                       xla=True if role == "ours-xla" else None)
            out["auto_infer"] = getattr(predict, "choice", None)
            out["inference_xla"] = predict.xla
            predict({k: v[:bs] for k, v in xi.items()})
        for start in range(0, n_infer, bs):
            t = time.perf_counter()
            predict({k: v[start:start + bs] for k, v in xi.items()})
            batch_times.append(time.perf_counter() - t)
        out["precision"] = policy
        out["train_xla"] = bool(xla)
        out["inference_precision"] = infer_policy
        out["params"] = int(model.count_params())
    steps = timer.times
    out["train_step_s"] = [round(v, 4) for v in steps]
    out["infer_batch_s"] = [round(v, 4) for v in batch_times]
    out["train_samples_per_s"] = bs / statistics.median(steps)          # the level of this process
    out["train_samples_per_s_wall"] = n / wall
    if batch_times:
        out["infer_samples_per_s"] = bs / statistics.median(batch_times)
        out["infer_samples_per_s_wall"] = n_infer / sum(batch_times)
    out["load_avg_end"] = os.getloadavg()[0]
    # peak RSS of this process (training + inference of the paper config at this batch size): VmHWM
    # of /proc/self/status, which starts afresh at exec (ru_maxrss would inherit the parent's)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    return out


def profile_child(args: argparse.Namespace) -> dict:
    """Op-type breakdown (thread time, TF profiler) of ours: 2 inference batches and 2 train steps."""
    import glob
    from collections import Counter

    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from esnet_tf.model import OUTPUT_NAME, ESNetConfig, build_esnet
    from esnet_tf.precision import inference_function, resolve_policy, with_policy

    bs = args.batch_size
    x, y, _ = load_xy(Path(args.features), Path(args.labels), bs)
    precision = args.profile_precision
    policy = resolve_policy(precision)
    model = build_esnet(ESNetConfig.paper())
    model = model if policy == "float32" else with_policy(model, policy)
    model.compile(optimizer=keras.optimizers.Adam(1.5e-3), loss={OUTPUT_NAME: keras.losses.LogCosh()})
    predict, infer_policy = inference_function(model, precision)
    result = {"precision": policy, "inference_precision": infer_policy}
    for name, fn in (("inference", lambda: predict(x)), ("train_step", lambda: model.train_on_batch(x, y))):
        fn()
        fn()
        logdir = tempfile.mkdtemp(prefix=f"esnet_prof_{name}_")
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        for _ in range(2):
            fn()
        wall = time.perf_counter() - t
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]).read_bytes())
        ops: Counter = Counter()
        for plane in space.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_data"):
                    continue
                for ev in line.events:
                    op = plane.event_metadata[ev.metadata_id].name.split(":")[-1]
                    if op not in ("Process", "ExecutorState::Process"):
                        ops[op] += ev.duration_ps / 1e12
        total = sum(ops.values())
        result[name] = {"wall_s_per_batch": wall / 2, "op_thread_s_per_batch": total / 2,
                        "top_ops": {k: round(v / total, 3) for k, v in ops.most_common(12)}}
    return result


def accuracy_child(args: argparse.Namespace) -> dict:
    """Short `esnet train` runs (small config) in float32 and --precision auto; bf16 inference agreement."""
    import numpy as np

    from esnet_tf.data import load_split
    from esnet_tf.model import load_model
    from esnet_tf.precision import inference_function
    from esnet_tf.train import TrainConfig, train

    npz, labels = Path(args.features), Path(args.labels)
    out = {}
    base = TrainConfig(dataset=str(npz), labels=str(labels), config="small", epochs=args.accuracy_epochs,
                       batch_size=8, split_fractions=(0.6, 0.2, 0.2), split_seed=0, early_stopping_patience=1000)
    work = Path(tempfile.mkdtemp(prefix="esnet_acc_"))
    for precision in ("float32", "auto"):
        t = time.perf_counter()
        summary = train(base.replace(precision=precision), work / precision, verbose=0)
        out[precision] = {"best_val_mae": summary["best_val_mae_ev_per_atom"], "best_epoch": summary["best_epoch"],
                          "wall_s": time.perf_counter() - t}
    val = next(iter(load_split(str(npz), "validation", labels=str(labels), split_fractions=(0.6, 0.2, 0.2))
                    .batch(10_000).as_numpy_iterator()))
    model = load_model(work / "float32" / "best.keras")
    f32 = np.asarray(model.predict_on_batch({k: val[k] for k in ("dos_up", "dos_down", "composition")})
                     ["formation_energy_per_atom"]).reshape(-1)
    predict, policy = inference_function(model, "auto")
    fast = predict(val)
    out["inference"] = {"policy": policy, "n": int(len(f32)),
                        "max_abs_diff_ev_per_atom": float(np.max(np.abs(fast - f32))),
                        "mean_abs_diff_ev_per_atom": float(np.mean(np.abs(fast - f32)))}
    return out


# ---------------------------------------------------------------- parent

class Quiet:
    """Pause a background process group (the DFT job) while measuring, never for more than
    `max_pause_s` at a time, with `rest_s` of running between pauses; always resumed on exit
    (normal return, exception, SIGTERM/SIGINT). pgid None: does nothing."""

    def __init__(self, pgid: int | None, max_pause_s: float = 540.0, rest_s: float = 185.0) -> None:
        import atexit
        import signal

        self.pgid, self.max_pause_s, self.rest_s = pgid, max_pause_s, rest_s
        self.paused_at: float | None = None
        self.log: list[dict] = []
        atexit.register(self.resume)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.resume()
        raise SystemExit(128 + signum)

    def _kill(self, sig) -> bool:
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def pause(self) -> None:
        import signal

        if self.pgid is not None and self.paused_at is None and self._kill(signal.SIGSTOP):
            self.paused_at = time.time()

    def resume(self) -> None:
        import signal

        if self.pgid is not None and self.paused_at is not None:
            self._kill(signal.SIGCONT)
            self.log.append({"paused_s": round(time.time() - self.paused_at, 1), "at": time.strftime("%H:%M:%S")})
            self.paused_at = None

    def before(self, expected_s: float) -> None:
        """Make sure the group is paused for the next `expected_s` seconds within the limits."""
        if self.pgid is None:
            return
        if self.paused_at is not None and time.time() - self.paused_at + expected_s > self.max_pause_s:
            self.resume()
            print(json.dumps({"resumed_background_for_s": self.rest_s}), file=sys.stderr, flush=True)
            time.sleep(self.rest_s)
        self.pause()


#: The background conditions of `levels` (issue 18's per-process training levels): a single-threaded
#: CPU-bound process, as one background DFT worker is, in its own session (so its own scheduler
#: autogroup, as `setsid`/`nohup` jobs and other terminals are), at the priority the name says.
CONDITIONS = ("quiet", "busy", "busy-renice19", "busy-autogroup19")


def start_competitor(condition: str) -> subprocess.Popen | None:
    """Start the background process of `condition` (None for quiet). `busy-renice19` lowers its
    nice value only (what `nice`/`renice` do); `busy-autogroup19` also sets the nice value of its
    session's autogroup (/proc/PID/autogroup), which is what the kernel weighs when autogroup
    scheduling is on (/proc/sys/kernel/sched_autogroup_enabled = 1)."""
    if condition == "quiet":
        return None
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    if condition in ("busy-renice19", "busy-autogroup19"):
        os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    if condition == "busy-autogroup19":
        Path(f"/proc/{proc.pid}/autogroup").write_text("19")
    time.sleep(1.0)
    return proc


def autogroup_enabled() -> bool | None:
    f = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return f.read_text().strip() == "1" if f.is_file() else None


def levels(args: argparse.Namespace, quiet: "Quiet") -> dict:
    """Training level of fresh processes of each role under each background condition, alternating
    condition by condition (quiet, busy, ..., quiet, busy, ...), `--repeats` processes each."""
    roles = [r for r in args.levels_roles.split(",") if r]
    conditions = [c for c in args.conditions.split(",") if c]
    for c in conditions:
        if c not in CONDITIONS:
            raise SystemExit(f"--conditions: unknown condition {c!r}; choose from {', '.join(CONDITIONS)}")
    rows, expected = [], {}
    for r in range(args.repeats):
        for condition in conditions:
            for role in roles:
                quiet.before(expected.get(role, 90.0))
                competitor = start_competitor(condition)
                t = time.time()
                try:
                    row = run_child("child", args, ["--child", role, "--skip-infer"])
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                expected[role] = time.time() - t
                row.update(condition=condition, repetition=r, child_wall_s=round(expected[role], 1))
                print(json.dumps({k: row[k] for k in ("role", "condition", "repetition", "train_samples_per_s",
                                                      "load_avg", "child_wall_s")}), file=sys.stderr, flush=True)
                rows.append(row)
    summary = {}
    for condition in conditions:
        for role in roles:
            rs = [x for x in rows if x["condition"] == condition and x["role"] == role]
            summary[f"{role} / {condition}"] = {
                "train_samples_per_s": _spread([x["train_samples_per_s"] for x in rs]),
                "train_level_per_process": [round(x["train_samples_per_s"], 1) for x in rs],
                "matmul_gflops_float32": _spread([x["matmul_gflops"]["float32"] for x in rs])}
    return {"autogroup_enabled": autogroup_enabled(), "summary": summary, "raw": rows}


def run_child(kind: str, args: argparse.Namespace, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, kind, "--features", str(args.features), "--labels", str(args.labels),
           "--batch-size", str(args.batch_size), "--train-steps", str(args.train_steps),
           "--infer-batches", str(args.infer_batches), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_train(args: argparse.Namespace, precision: str) -> dict:
    """Peak RSS (MiB) of `esnet train --config paper --batch-size 64 --epochs 1` in a fresh process tree.

    A small wrapper process runs the command and reads RUSAGE_CHILDREN (a child inherits the
    RSS high-water mark of the process that forks it, so the heavy parent must not fork it directly).
    """
    esnet = str(Path(sys.executable).with_name("esnet"))
    run_dir = tempfile.mkdtemp(prefix="esnet_mem_")
    cmd = [esnet, "train", "--dataset", str(args.features), "--labels", str(args.labels), "--config", "paper",
           "--batch-size", str(args.batch_size), "--epochs", "1", "--split-fractions", "0.8,0.1,0.1",
           "--run-dir", run_dir, "--overwrite", "--verbose", "0", "--precision", precision]
    from esnet_tf.machine import run_in_fresh_process

    res = run_in_fresh_process(cmd)
    return {"command": " ".join(cmd), "peak_rss_mib": res["peak_rss_mib"], "wall_s": res["process_wall_s"]}


def _spread(values: list[float]) -> dict:
    vs = sorted(values)
    return {"median": round(statistics.median(vs), 2), "min": round(vs[0], 2), "max": round(vs[-1], 2),
            "n": len(vs)}


def summarize(rows: list[dict], flops: dict) -> dict:
    """Per role: median, min, max of samples/s over the processes, achieved GFLOP/s and fraction of
    the matmul limit; per non-reference role the ratio to the reference of the same repetition
    (median and spread) and, where present, to ours-float32 (auto >= float32?)."""
    by_role: dict[str, list[dict]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    summary = {}
    fwd, train = flops["forward_flops"], flops["training_flops"]
    keys = ("train_samples_per_s", "infer_samples_per_s")
    for role, rs in by_role.items():
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        lim32 = statistics.median(r["matmul_gflops"]["float32"] for r in rs)
        lim16 = statistics.median(r["matmul_gflops"]["bfloat16"] for r in rs)
        tr_limit = lim16 if rs[0]["precision"] != "float32" else lim32
        inf_limit = lim16 if rs[0].get("inference_precision", rs[0]["precision"]) != "float32" else lim32
        train_gf = med["train_samples_per_s"] * train / 1e9
        inf_gf = med["infer_samples_per_s"] * fwd / 1e9
        summary[role] = {**{k: _spread([r[k] for r in rs]) for k in keys},
                         "precision": sorted({r["precision"] for r in rs}),
                         "train_xla": sorted({bool(r.get("train_xla")) for r in rs}),
                         "inference_xla": sorted({bool(r.get("inference_xla")) for r in rs}),
                         "inference_precision": sorted({r.get("inference_precision", "float32") for r in rs}),
                         "train_gflops": round(train_gf, 1), "infer_gflops": round(inf_gf, 1),
                         "train_fraction_of_limit": round(train_gf / tr_limit, 3),
                         "infer_fraction_of_limit": round(inf_gf / inf_limit, 3),
                         "infer_fraction_of_bf16_limit": round(inf_gf / lim16, 3),
                         "train_fraction_of_float32_limit": round(train_gf / lim32, 3),
                         "matmul_gflops_float32": _spread([r["matmul_gflops"]["float32"] for r in rs]),
                         "matmul_gflops_bfloat16": _spread([r["matmul_gflops"]["bfloat16"] for r in rs]),
                         "load_avg": _spread([r["load_avg"] for r in rs]),
                         "train_level_per_process": [round(r["train_samples_per_s"], 1) for r in rs],
                         "infer_per_process": [round(r["infer_samples_per_s"], 1) for r in rs]}
    for base in ("reference", "ours-float32"):
        if base not in by_role:
            continue
        for role in by_role:
            if role == base:
                continue
            pairs = list(zip(by_role[base], by_role[role]))
            summary[role][f"vs_{base}"] = {k: {**_spread([o[k] / r[k] for r, o in pairs]),
                                                "per_repetition": [round(o[k] / r[k], 2) for r, o in pairs]}
                                           for k in keys}
    return summary


def main() -> int | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", default="run", choices=("run", "child", "profile", "accuracy", "levels"),
                   help=argparse.SUPPRESS)
    p.add_argument("--child", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=5,
                   help="processes per role, alternating role by role (A B C A B C ...) [default 5]")
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch [default 64, the authors']")
    p.add_argument("--train-steps", type=int, default=8,
                   help="timed training steps per process (each timed; the level is the median) [default 8]")
    p.add_argument("--infer-batches", type=int, default=8, help="timed inference batches per process [default 8]")
    p.add_argument("--variants", default="ours-float32,ours-xla",
                   help="roles besides reference and ours, comma-separated: ours-float32 (plain float32), ours-xla "
                        "(float32 with XLA, training and inference), ours-bf16; ROLE@INTRAxINTER fixes TF's thread "
                        "pools (e.g. ours@2x1) [default ours-float32,ours-xla]")
    p.add_argument("--roles", default="reference,ours", help="the base roles [default reference,ours]")
    p.add_argument("--pause-pgid", type=int, help="process group to SIGSTOP while measuring (the DFT job; "
                   "<= 9 min per pause, 3 min running between, always resumed)")
    p.add_argument("--features", help="features .npz (default: the demo data, featurized into a temp dir)")
    p.add_argument("--labels", help="labels CSV for --features")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS run of `esnet train`")
    p.add_argument("--skip-accuracy", action="store_true", help="skip the short float32-vs-bf16 training runs")
    p.add_argument("--skip-profile", action="store_true", help="skip the op-type profile of ours")
    p.add_argument("--profile-precision", default="auto", help="precision of the profile child [default auto]")
    p.add_argument("--accuracy-epochs", type=int, default=40, help="epochs of each accuracy run [default 40]")
    p.add_argument("--json", help="also write the summary to this file")
    p.add_argument("--skip-infer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--levels-roles", default="ours-float32",
                   help="levels: roles whose training level is measured [default ours-float32]")
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help="levels: background conditions, alternating [default " + ",".join(CONDITIONS) + "]")
    args = p.parse_args()

    if args.kind == "child":
        print(json.dumps(child(args)))
        return
    if args.kind == "profile":
        print(json.dumps(profile_child(args)))
        return
    if args.kind == "accuracy":
        print(json.dumps(accuracy_child(args)))
        return

    t0 = time.time()
    if not args.features:
        tmp = Path(tempfile.mkdtemp(prefix="esnet_bench_"))
        args.features, args.labels = prepare_data(tmp, max(args.batch_size * args.train_steps, 3 * args.batch_size))
    from esnet_tf.precision import cpu_model

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(),
              "lscpu": {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lscpu.splitlines()
                                                         if ":" in line) if k.strip() in
                        ("Model name", "CPU family", "Model", "Stepping", "CPU(s)", "Flags", "Hypervisor vendor",
                         "L2 cache", "L3 cache")},
              "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "busy_start": busy_processes(10),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    import tensorflow as tf

    result["tensorflow"] = tf.__version__
    from esnet_tf.flops import forward_macs, graph_flops
    from esnet_tf.model import ESNetConfig, build_esnet
    from esnet_tf.precision import cpu_flags, native_bf16_cpu

    result["native_bf16"] = native_bf16_cpu()
    result["bf16_flags"] = sorted(f for f in cpu_flags() if "bf16" in f)
    macs = forward_macs(ESNetConfig.paper())
    graph = graph_flops(build_esnet(ESNetConfig.paper()))
    flops = {"forward_macs_by_group": macs, "forward_flops": 2 * macs["total"], "training_flops": 6 * macs["total"],
             "graph_conv_matmul_flops": graph["conv_matmul"], "graph_other_flops": graph["other"]}
    result["flops_per_example"] = flops
    if args.kind == "levels":
        quiet = Quiet(args.pause_pgid)
        try:
            result["levels"] = levels(args, quiet)
        finally:
            quiet.resume()
        result["pauses"] = quiet.log
        result["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        result["wall_s"] = round(time.time() - t0, 1)
        return emit(result, args.json, printed=result["levels"]["summary"])
    if not args.skip_memory:
        result["memory"] = {prec: peak_rss_train(args, prec) for prec in ("float32", "auto")}
        print(json.dumps({"memory": result["memory"]}), flush=True)
    roles = [v for v in (*args.roles.split(","), *args.variants.split(",")) if v]
    rows, busy = [], []
    quiet = Quiet(args.pause_pgid)
    expected = {}
    try:
        for r in range(args.repeats):
            for role in roles:
                quiet.before(expected.get(role, 120.0))
                others = busy_others(1.0)  # anything outside this run using a CPU right before the child
                t = time.time()
                row = run_child("child", args, ["--child", role])
                expected[role] = time.time() - t
                row["busy_others_before"] = others
                row["busy_others_after"] = busy_others(1.0)
                busy += others + row["busy_others_after"]
                row["repetition"] = r
                row["child_wall_s"] = round(expected[role], 1)
                print(json.dumps({k: row[k] for k in ("role", "repetition", "train_samples_per_s",
                                                      "infer_samples_per_s", "load_avg", "child_wall_s")}),
                      file=sys.stderr, flush=True)
                rows.append(row)
                if args.json:  # partial results survive an interrupted run
                    from esnet_tf.atomic import write_text

                    write_text(args.json, json.dumps({**result, "partial": True, "throughput": summarize(rows, flops),
                                                      "raw": rows}, indent=2, default=str))
    finally:
        quiet.resume()
    result["pauses"] = quiet.log
    result["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result["throughput"] = summarize(rows, flops)
    result["ranked"] = not busy
    if busy:  # the ratios above compare runs that shared the CPUs with something else
        seen = {b["pid"]: b for b in busy}
        result["not_ranked_because"] = ("other busy process(es) during the measurement: "
                                        + describe_busy(list(seen.values())))
    result["raw"] = rows
    if not args.skip_profile:
        result["profile"] = run_child("profile", args, ["--profile-precision", args.profile_precision])
        print(json.dumps({"profile": result["profile"]}), flush=True)
    if not args.skip_accuracy:
        result["accuracy"] = run_child("accuracy", args, ["--accuracy-epochs", str(args.accuracy_epochs)])
        print(json.dumps({"accuracy": result["accuracy"]}), flush=True)
    result["wall_s"] = round(time.time() - t0, 1)
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
