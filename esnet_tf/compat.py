"""Every use of private Keras / TensorFlow APIs in esnet_tf, in one place.

Each helper says which versions it was checked on (Keras 3.15.1, TensorFlow 2.21.0, the pins of
pyproject.toml) and why no public API does the job. `tests/test_compat.py` pins the behaviour each
one relies on against the installed Keras, so an upgrade that breaks one fails there first, by
name, instead of somewhere inside a training run.

Contents:
- `initial_epoch` / `set_initial_epoch`: `Model._initial_epoch`, the epoch `fit` starts from.
- `AtomicBackupAndRestore`: `keras.callbacks.BackupAndRestore` with `_save_model` / `_load_model`
  overridden (reads `_current_epoch`, `_last_batch_seen`), so a backup survives SIGKILL and
  non-chief workers restore from the chief's directory.
- `flatten_layers`: `Layer._flatten_layers`, every layer of a model, nested ones included.
- `num_workers`: `strategy.extended._num_workers`.
- `fit_scope`: `Model._distribute_strategy` and `keras.src.backend.tensorflow.trainer`
  (`reduce_per_replica`, `_collective_all_reduce_multi_worker`), two Keras bugs under tf.distribute.
- `op_flops` / `graph_functions`: `tensorflow.python.framework.ops.get_stats_for_node_def` (TF's
  registered op statistics) and `FuncGraph._functions` (nested function bodies), for
  `esnet_tf.flops.graph_flops`.
- `flat_op_names`: `keras.src.backend.tensorflow.core.name_scope` (its `_tf_name_scope`), so a
  function traced for a SavedModel has short op names instead of the layer path in every op.
- `freeze`: `tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2`,
  a traced function with its variables folded in as constants (the public API is TF1's graph_util).

Imports Keras and TensorFlow: import this module lazily (not at CLI parse time, and under
`--strategy multi-worker` only after the strategy exists).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:  # annotations only: TensorFlow is imported where it is used
    import tensorflow as tf

#: the versions these workarounds were checked on (tests/test_compat.py checks the behaviour itself)
CHECKED_KERAS = "3.15.1"
CHECKED_TENSORFLOW = "2.21.0"
#: BackupAndRestore's metadata file (Keras's name, kept so its own `on_train_begin` logic applies)
METADATA_FILE = "training_metadata.json"
#: the file name ending of an epoch's backed-up state (AtomicBackupAndRestore)
STATE_SUFFIX = ".state.npz"


# ---------------------------------------------------------------- the epoch fit starts from

def initial_epoch(model: keras.Model) -> int:
    """The epoch `model.fit` starts from when it was set by a restore (0 otherwise).

    Keras 3.15.1: `Trainer.__init__` sets `model._initial_epoch = None`; `BackupAndRestore`'s
    `_load_model` sets it to the restored epoch during `on_train_begin`, and `fit` then runs
    `range(model._initial_epoch or initial_epoch, epochs)`. No public accessor exists; callbacks
    that run after the restore read the start epoch here (or from their first `on_epoch_begin`).
    """
    return int(getattr(model, "_initial_epoch", None) or 0)


def set_initial_epoch(model: keras.Model, epoch: int) -> None:
    """Make the next `model.fit` start at `epoch` (what `BackupAndRestore._load_model` does).

    Keras 3.15.1: `fit` reads `model._initial_epoch` after `callbacks.on_train_begin()`, so a
    callback setting it there moves the start; the `initial_epoch=` argument of `fit` cannot be
    changed from a callback.
    """
    model._initial_epoch = int(epoch)


# ---------------------------------------------------------------- SIGKILL-safe backups

class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backup survives SIGKILL at any instant.

    Each epoch's state (the model's variables and the optimizer's, in order) goes to a new file
    `epochNNNNN.state.npz`; the metadata naming it (and the epoch) is then replaced atomically, so
    it always points at a complete file. Older state files are removed after. Keras's own
    `_save_model` overwrites `latest.weights.h5` in place, so a kill during the write leaves a
    truncated file that the metadata still points at. An .npz of the variable values instead of
    Keras's `save_weights` h5 file: that took 0.37 s per epoch for the small model, about a fifth
    of its epoch on 2 cores. A backup written as `.weights.h5` by an older esnet-tf still restores.

    `restore_dir` (default `backup_dir`) is where `_load_model` reads from: a non-chief
    multi-worker process writes its own throwaway backup but restores from the chief's.

    Keras 3.15.1 internals relied upon (pinned in tests/test_compat.py): `on_epoch_end` sets
    `self._current_epoch = epoch + 1` and `self._last_batch_seen` and calls `self._save_model()`
    (with `save_freq="epoch"`); `on_train_begin` calls `self._load_model()`; `on_train_end`
    removes `backup_dir` (with `delete_checkpoint=True`); the restored epoch reaches `fit` through
    `model._initial_epoch` (`set_initial_epoch`).
    """

    def __init__(self, backup_dir: str | Path, *, restore_dir: str | Path | None = None, **kwargs) -> None:
        super().__init__(str(backup_dir), **kwargs)
        self.restore_dir = str(restore_dir) if restore_dir is not None else str(backup_dir)

    def _state_variables(self) -> list:
        """The model's variables, then the optimizer's (built first, so its slots exist)."""
        optimizer = self.model.optimizer
        if optimizer is None:
            return list(self.model.weights)
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        return list(self.model.weights) + list(optimizer.variables)

    def _save_model(self) -> None:
        import numpy as np

        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch{self._current_epoch:05d}{STATE_SUFFIX}"
        variables = self._state_variables()
        with open(backup / name, "wb") as fh:
            np.savez(fh, **{f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)})
        tmp = backup / f"{METADATA_FILE}.tmp"
        tmp.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                   "weights": name}))
        os.replace(tmp, backup / METADATA_FILE)
        for old in [*backup.glob(f"epoch*{STATE_SUFFIX}"), *backup.glob("epoch*.weights.h5")]:
            if old.name != name:
                old.unlink(missing_ok=True)

    def _load_model(self) -> None:
        import numpy as np

        source = Path(self.restore_dir)
        meta = source / METADATA_FILE
        if not meta.is_file():
            return
        info = json.loads(meta.read_text())
        variables = self._state_variables()
        path = source / info["weights"]
        if path.name.endswith(".weights.h5"):  # written by esnet-tf before 2026-12-01
            self.model.load_weights(str(path))
        else:
            with np.load(path, allow_pickle=False) as data:
                values = [data[f"v{i:05d}"] for i in range(len(data.files))]
            # matched by order and shape, as Keras's load_weights matches by structure (layer names
            # differ between two builds of the same model in one process)
            if [tuple(a.shape) for a in values] != [tuple(v.shape) for v in variables]:
                raise ValueError(f"{path}: this backup holds the variables of another model or optimizer; "
                                 f"delete {source} or train into a new run directory")
            for v, a in zip(variables, values):
                v.assign(a)
        set_initial_epoch(self.model, int(info["epoch"]))


# ---------------------------------------------------------------- layers

def flatten_layers(model: keras.Model | keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer of `model`, nested ones (inside custom layers and sub-models) included.

    Keras 3.15.1: `Layer._flatten_layers(include_self=False, recursive=True)`; `model.layers`
    lists only the top level, and Keras 3 has no public recursive walk.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


# ---------------------------------------------------------------- tf.distribute

def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes (input pipelines) of a `tf.distribute.Strategy`.

    TensorFlow 2.21.0: `strategy.extended._num_workers` (1 for the default and mirrored
    strategies, the cluster's worker count for MultiWorkerMirroredStrategy); the public
    `InputContext.num_input_pipelines` exists only inside a dataset function.
    """
    extended = getattr(strategy, "extended", None)
    return int(getattr(extended, "_num_workers", 1) or 1)


@contextlib.contextmanager
def fit_scope(model: keras.Model, strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Context for `model.fit` / `evaluate` under `strategy`, working around two Keras 3 bugs
    (present through Keras 3.15.1 with TF 2.21.0), both only when there is a strategy:

    1. A model built under a strategy scope and fed dict batches fails before the first step
       (`_maybe_symbolic_build` calls `strategy.reduce` on the whole nested batch;
       keras-team/keras#20329). Detaching the model from the strategy
       (`model._distribute_strategy = None`) and fitting inside `strategy.scope()` takes
       Keras's other supported path (the strategy is taken from the scope, the optimizer state
       is built when the step is traced), same mirrored variables.
    2. With MultiWorkerMirroredStrategy over more than one worker every step fails with
       "Invalid reduction dimension 0 for input with 0 dimensions" (tensorflow/tensorflow#72388):
       the per-step logs are scalars but are reduced with `axis=0`. Here
       `keras.src.backend.tensorflow.trainer.reduce_per_replica` is replaced, for the duration
       of the block, by one reducing scalars with `axis=None` (the mean over replicas). These
       per-step values only feed the progress bar: the epoch logs (history.csv, callbacks) are
       read from the metric variables, summed over all replicas by TensorFlow.
    """
    import tensorflow as tf

    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        yield  # the default strategy: nothing to do
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer, "reduce_per_replica", None)
    multi_worker = getattr(tf_trainer, "_collective_all_reduce_multi_worker", lambda s: False)(strategy)

    def reduce_per_replica(values, strategy_, reduction):
        if multi_worker and reduction in ("auto", "mean"):
            def mean(v):
                if isinstance(v, tf.distribute.DistributedValues):
                    rank = v.values[0].shape.rank
                    return strategy_.reduce("MEAN", v, axis=None if rank == 0 else 0)
                return v
            return tf.nest.map_structure(mean, values)
        return original(values, strategy_, reduction)

    saved = getattr(model, "_distribute_strategy", None)
    model._distribute_strategy = None
    if original is not None and multi_worker:
        tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        with strategy.scope():
            yield
    finally:
        model._distribute_strategy = saved
        if original is not None:
            tf_trainer.reduce_per_replica = original


# ---------------------------------------------------------------- TF op statistics (esnet_tf.flops)

def op_flops(graph: tf.Graph, op: tf.Operation) -> int | None:
    """FLOPs TensorFlow registers for `op` of `graph` (None where no statistic is registered).

    TensorFlow 2.21.0: `tensorflow.python.framework.ops.get_stats_for_node_def(graph, node_def,
    "flops")`, the source of the tf.compat.v1 profiler's FLOP counts; the public
    `tf.compat.v1.profiler` needs a v1 graph and session, and there is no TF2 public equivalent.
    """
    from tensorflow.python.framework import ops as tf_ops

    try:
        stats = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops")
    except (ValueError, KeyError):
        return None
    return int(stats.value) if stats is not None and stats.value else None


def graph_functions(graph: tf.Graph) -> list[tf.Graph]:
    """The function graphs nested in `graph` (tf.function bodies, while/cond branches).

    TensorFlow 2.21.0: `Graph._functions` ({name: AtomicFunction}, each with `.graph`); no public
    accessor lists a FuncGraph's nested function definitions as graphs.
    """
    out = []
    for fn in getattr(graph, "_functions", {}).values():
        inner = getattr(fn, "graph", None)
        if inner is not None and inner is not graph:
            out.append(inner)
    return out


@contextlib.contextmanager
def flat_op_names() -> Iterator[None]:
    """Trace Keras layers without their TensorFlow name scopes (op names like `Conv2D_17` instead of
    `esnet_ensemble/member_0/spin_up/stage1_block1/conv2/convolution/Conv2D`).

    Keras 3's TF backend opens `tf.name_scope(layer.name)` in `name_scope.__init__` / `__enter__`
    (attribute `_tf_name_scope`); the names only label ops, so leaving them out changes no value.
    A 5-member ensemble's serving function shrinks from 3.5 MB to 1.5 MB of GraphDef. Not thread-safe:
    for tracing at export time only.
    """
    from keras.src.backend.tensorflow import core

    original = core.name_scope.__init__

    def init(self, name, **kwargs):
        original(self, name, **kwargs)
        self._tf_name_scope = contextlib.nullcontext()

    core.name_scope.__init__ = init
    try:
        yield
    finally:
        core.name_scope.__init__ = original


def freeze(concrete_function: tf.types.experimental.ConcreteFunction
           ) -> tf.types.experimental.ConcreteFunction:
    """The concrete function with every captured variable replaced by a constant of its value."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)
