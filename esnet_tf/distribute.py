"""tf.distribute for `esnet train --strategy default|mirrored|multi-worker`.

- `default`: no distribution (one device).
- `mirrored`: `tf.distribute.MirroredStrategy` over all local GPUs (the CPU when there are none).
- `multi-worker`: `tf.distribute.MultiWorkerMirroredStrategy` over the machines listed in the
  `TF_CONFIG` environment variable (one process per machine; see docs/distributed.md).

Rules kept here, in one place:
- The batch size the user gives is the *global* batch: each step averages the gradient over
  `batch_size` examples whatever the number of replicas (per-replica batch = global / replicas),
  so the learning rate that suits a batch size on one machine suits it on N.
- Input sharding: every example of a split is read by exactly one worker per epoch.
  In-memory sources (.npz, labels directory) are auto-sharded by data
  (`AutoShardPolicy.DATA`): every worker builds the same seeded, globally batched pipeline and
  keeps its own slice of each global batch, so the global batches are those of a one-process run.
  TFDS datasets are read per worker through `distribute_datasets_from_function`: worker i reads
  only its contiguous sub-split `train[lo_i:hi_i]` (sizes differ by at most one example).
- Only the chief writes the run directory; other workers write to a temporary directory that is
  removed when they finish (the Keras multi-worker pattern). On `--resume` every worker restores
  from the chief's backup in the run directory, so that directory must be on a shared filesystem.
- BatchNormalization can be synchronised across replicas (`--sync-batchnorm`, the default): batch
  statistics are then those of the global batch, as in a one-process run.

The workarounds of Keras internals that distributed `fit` needs (`compat.fit_scope`, the worker
count, the recursive layer walk) live in `esnet_tf.compat`; this module takes no argparse
namespace or settings dict, only strategy names, counts and paths.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esnet_tf.errors import UserError

if TYPE_CHECKING:  # annotations only: TensorFlow is imported where it is used
    import keras
    import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker")


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset); one-line error when malformed."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc}); expected "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}') from None
    if not isinstance(cfg, dict) or "cluster" not in cfg or "task" not in cfg:
        raise UserError('TF_CONFIG needs "cluster" and "task" keys, e.g. {"cluster": {"worker": '
                          '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    return cfg


def env_is_chief(strategy: str | None) -> bool:
    """Whether this process writes the run directory, judged from TF_CONFIG (no TensorFlow import).

    True for every strategy but `multi-worker`; there, the task of type `chief`, or worker 0 when
    the cluster has no `chief` entry.
    """
    if strategy != "multi-worker":
        return True
    cfg = tf_config()
    if not cfg:
        return True
    task = cfg.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in cfg.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def make_strategy(name: str | None) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` of a `--strategy` name. Call before any other TensorFlow op:
    MultiWorkerMirroredStrategy must configure the collective ops at program start."""
    import tensorflow as tf

    name = name or "default"
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus] or ["/cpu:0"])
    cfg = tf_config()
    if not cfg:
        raise UserError("--strategy multi-worker needs the TF_CONFIG environment variable (cluster and task); "
                          "see docs/distributed.md")
    n_hosts = sum(len(v) for v in cfg["cluster"].values() if isinstance(v, list))
    if n_hosts < 1:
        raise UserError("TF_CONFIG cluster lists no workers")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise UserError(f"cannot start MultiWorkerMirroredStrategy ({exc}); create it before any other "
                          "TensorFlow operation (start a fresh process)") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is the chief of `strategy` (always True without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes (input pipelines) of `strategy`."""
    from esnet_tf import compat

    return compat.num_workers(strategy)


def worker_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes: `run_dir` for the chief, a fresh temporary directory otherwise."""
    if is_chief(strategy):
        return Path(run_dir)
    resolver = strategy.cluster_resolver
    return Path(tempfile.mkdtemp(prefix=f"esnet-{resolver.task_type}{resolver.task_id}-"))


def remove_worker_dir(path: Path, run_dir: Path) -> None:
    """Remove a non-chief temporary directory (never the run directory itself)."""
    if Path(path).resolve() != Path(run_dir).resolve():
        shutil.rmtree(path, ignore_errors=True)


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data auto-sharding by data: each worker keeps its slice of every (global) batch."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def even_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges splitting n examples into `parts` contiguous pieces, the first
    `n % parts` one example longer (the `tfds.even_splits` rule)."""
    base, extra = divmod(int(n), int(parts))
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def worker_split(split: str, n_examples: int, num_pipelines: int, pipeline_id: int) -> str:
    """The TFDS sub-split read by input pipeline `pipeline_id` of `num_pipelines`:
    `split[lo:hi]` by `even_ranges` (every example of `split` in exactly one sub-split)."""
    lo, hi = even_ranges(n_examples, num_pipelines)[pipeline_id]
    return f"{split}[{lo}:{hi}]"


def tfds_worker_pipeline(ctx: tf.distribute.InputContext, spec: str, split: str, n_examples: int, global_batch: int,
                         *, shuffle: bool, seed: int, cache: str, shuffle_buffer: int,
                         split_options: dict) -> tf.data.Dataset:
    """The batched (inputs, targets) pipeline of one worker (`ctx`: a `tf.distribute.InputContext`):
    its own sub-split (`worker_split`), shuffled with seed + pipeline id, per-replica batches."""
    from esnet_tf import data

    ds = data.load_split(spec, worker_split(split, n_examples, ctx.num_input_pipelines, ctx.input_pipeline_id),
                         **split_options)
    per_replica = ctx.get_per_replica_batch_size(global_batch)
    worker_cache = cache if cache in ("memory", "none") else f"{cache}.worker{ctx.input_pipeline_id}"
    return data.training_pipeline(ds, per_replica, shuffle=shuffle, seed=seed + ctx.input_pipeline_id,
                                  cache=worker_cache, shuffle_buffer=shuffle_buffer)


def tfds_per_worker(strategy: tf.distribute.Strategy, spec: str, split: str, n_examples: int, global_batch: int,
                    **kwargs: Any) -> tf.distribute.DistributedDataset:
    """A distributed dataset where each worker reads only its own sub-split of a TFDS split
    (`tfds_worker_pipeline` through `strategy.distribute_datasets_from_function`)."""
    if global_batch % strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size {global_batch} is not divisible by the {strategy.num_replicas_in_sync} "
                          "replicas; the global batch is split evenly over them")
    fn = functools.partial(tfds_worker_pipeline, spec=spec, split=split, n_examples=n_examples,
                           global_batch=global_batch, **kwargs)
    return strategy.distribute_datasets_from_function(fn)


def synchronize_batchnorm(model: keras.Model) -> int:
    """Make every BatchNormalization layer of `model` use global-batch statistics across replicas
    (Keras `synchronized=True`); returns how many layers were changed. Call before the first step."""
    import keras

    from esnet_tf import compat

    n = 0
    for layer in compat.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            n += 1
    return n


def throughput_callback(n_train: int) -> keras.callbacks.Callback:
    """A Keras callback timing the training part of each epoch (validation excluded);
    `.samples_per_s()` is the median of n_train / time over the epochs after the first (which
    includes tracing), or of the first when only one ran."""
    import keras

    class Throughput(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._t0 = None

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._t0 = time.perf_counter()

        def on_test_begin(self, logs=None) -> None:  # validation starts: the training part ended
            if self._t0 is not None:
                self.seconds.append(time.perf_counter() - self._t0)
                self._t0 = None

        def on_epoch_end(self, epoch, logs=None) -> None:
            if self._t0 is not None:
                self.seconds.append(time.perf_counter() - self._t0)
                self._t0 = None

        def samples_per_s(self) -> float | None:
            times = self.seconds[1:] or self.seconds
            if not times:
                return None
            times = sorted(times)
            return float(n_train / times[len(times) // 2])

    return Throughput()


def lost_worker_message(exc: BaseException, strategy: tf.distribute.Strategy, run_dir: Path) -> str | None:
    """A one-line explanation when `exc` is a collective failure caused by a lost peer worker
    (None otherwise): what happened and how to continue from the last backup."""
    import tensorflow as tf

    if num_workers(strategy) < 2 or not isinstance(exc, (tf.errors.UnavailableError, tf.errors.CancelledError,
                                                          tf.errors.AbortedError, tf.errors.InternalError,
                                                          tf.errors.DeadlineExceededError)):
        return None
    meta = Path(run_dir) / "backup" / "training_metadata.json"
    where = (f"the backup holds epochs 0..{json.loads(meta.read_text())['epoch'] - 1}" if meta.is_file()
             else "no epoch was backed up yet")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"multi-worker training stopped: a worker of the cluster failed or restarted ({first}); "
            f"{where} in {run_dir}: restart every worker with --resume")


def _empty_replica_step(n: int, global_batch: int, workers: int, replicas: int, per_worker_input: bool) -> bool:
    """Whether some replica would get an empty batch in some step (Keras cannot run a step on an
    empty batch: the convolutions fail). `replicas` is the total over all workers."""
    if n == 0:
        return False
    if not per_worker_input:  # global batches split over all replicas: the last one has n % B examples
        rest = n % global_batch
        return global_batch < replicas or 0 < rest < replicas
    local = max(1, replicas // workers)
    per_replica = global_batch // replicas
    if per_replica < 1:
        return True
    steps = set()
    for lo, hi in even_ranges(n, workers):
        batches = -(-(hi - lo) // per_replica)  # per-replica batches this worker yields
        if batches % local:
            return True
        steps.add(batches // local)
    return len(steps) > 1


def check_batches(counts: dict[str, int], global_batch: int, strategy: tf.distribute.Strategy,
                  per_worker_input: bool) -> None:
    """Refuse (one line, with working batch sizes) a global batch that would leave a replica
    with no example in some step of a split (`counts`: split name -> examples)."""
    replicas, workers = int(strategy.num_replicas_in_sync), num_workers(strategy)
    if replicas < 2:
        return
    bad = [name for name, n in counts.items()
           if _empty_replica_step(n, global_batch, workers, replicas, per_worker_input)]
    if not bad:
        return
    good = [b for b in range(max(replicas, global_batch - 16), global_batch + 17)
            if not any(_empty_replica_step(n, b, workers, replicas, per_worker_input) for n in counts.values())]
    suggest = f"; e.g. --batch-size {min(good, key=lambda b: (abs(b - global_batch), b))}" if good else ""
    sizes = ", ".join(f"{name} {counts[name]}" for name in bad)
    raise UserError(f"--batch-size {global_batch} over {replicas} replicas leaves a replica without examples in the "
                    f"last step of {sizes} examples (Keras cannot train on an empty batch); pick a global batch whose "
                    f"remainder is 0 or at least the number of replicas{suggest}")
