"""esnet_tf.compat: the behaviour of the private Keras / TensorFlow APIs it relies on, pinned
against the installed versions (checked on Keras 3.15.1, TensorFlow 2.21.0).

If a test here fails after an upgrade, the workaround named in it needs a look (see its
docstring in esnet_tf/compat.py) before training, resuming or distributing can be trusted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def _data(n: int = 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], dtype="float32"))[:, None]
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


class _InterruptAt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt when epoch `epoch` begins (a run stopped between epochs)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_initial_epoch_is_where_fit_starts():
    """`model._initial_epoch`: None on a new model, and `fit` starts from it when set."""
    from esnet_tf import compat

    x, y = _data()
    model = _model()
    assert hasattr(model, "_initial_epoch") and model._initial_epoch is None
    assert compat.initial_epoch(model) == 0
    compat.set_initial_epoch(model, 3)
    assert compat.initial_epoch(model) == 3
    seen = _Epochs()
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[seen])
    assert seen.epochs == [3, 4] and len(history.history["loss"]) == 2


def test_initial_epoch_set_in_on_train_begin_moves_the_start():
    """`fit` reads `_initial_epoch` after `callbacks.on_train_begin()` (where the backup restores)."""
    from esnet_tf import compat

    class SetsStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            compat.set_initial_epoch(self.model, 2)

    x, y = _data()
    seen = _Epochs()
    _model().fit(x, y, epochs=4, verbose=0, callbacks=[SetsStart(), seen])
    assert seen.epochs == [2, 3]


def test_backup_and_restore_internals_exist_with_their_meaning(tmp_path):
    """The BackupAndRestore internals AtomicBackupAndRestore overrides or reads: `_current_epoch`,
    `_last_batch_seen` (set in on_epoch_end before `_save_model`), `_load_model` (from on_train_begin),
    and on_train_end removing backup_dir."""
    calls = []

    class Recorder(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            calls.append(("save", self._current_epoch, self._last_batch_seen))
            super()._save_model()

        def _load_model(self):
            calls.append(("load",))
            super()._load_model()

    backup = Recorder(str(tmp_path / "b"), save_freq="epoch", delete_checkpoint=True)
    assert (backup._current_epoch, backup._last_batch_seen) == (0, 0)
    x, y = _data()
    _model().fit(x, y, epochs=2, verbose=0, callbacks=[backup])
    assert calls == [("load",), ("save", 1, 0), ("save", 2, 0)]
    assert not (tmp_path / "b").exists()


def test_atomic_backup_interrupted_then_resumed_gives_the_same_weights(tmp_path):
    """The real callback: 4 epochs at once, and 2 epochs + interruption + resume, end with the
    same weights (optimizer state included in the backup); a half-written newer weights file
    (a kill during the save) does not break the restore."""
    from esnet_tf import compat

    x, y = _data()
    reference = _model()
    reference.fit(x, y, epochs=4, shuffle=False, verbose=0,
                  callbacks=[compat.AtomicBackupAndRestore(tmp_path / "ref", save_freq="epoch")])

    backup_dir = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, epochs=4, shuffle=False, verbose=0,
                     callbacks=[compat.AtomicBackupAndRestore(backup_dir, save_freq="epoch"), _InterruptAt(2)])
    meta = json.loads((backup_dir / compat.METADATA_FILE).read_text())
    assert meta["epoch"] == 2 and (backup_dir / meta["weights"]).is_file()
    assert sorted(p.name for p in backup_dir.glob(f"*{compat.STATE_SUFFIX}")) == [meta["weights"]]  # older removed
    (backup_dir / f"epoch00003{compat.STATE_SUFFIX}").write_bytes(b"PK\x03\x04 truncated")  # killed mid-save

    resumed = _model()
    seen = _Epochs()
    resumed.fit(x, y, epochs=4, shuffle=False, verbose=0,
                callbacks=[compat.AtomicBackupAndRestore(backup_dir, save_freq="epoch"), seen])
    assert seen.epochs == [2, 3]
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not backup_dir.exists()  # delete_checkpoint: removed at the end of training


def test_atomic_backup_of_an_older_version_restores_and_another_models_is_refused(tmp_path):
    """A `.weights.h5` backup (esnet-tf before 2026-12-01) still restores; a backup whose variables
    do not fit the model is one clear error, not a silent partial load."""
    from esnet_tf import compat

    x, y = _data()
    old = tmp_path / "old"
    old.mkdir()
    trained = _model()
    trained.fit(x, y, epochs=2, shuffle=False, verbose=0)
    trained.save_weights(str(old / "epoch00002.weights.h5"))
    (old / compat.METADATA_FILE).write_text(json.dumps({"epoch": 2, "batch": 0, "weights": "epoch00002.weights.h5"}))
    seen = _Epochs()
    _model().fit(x, y, epochs=3, verbose=0, callbacks=[compat.AtomicBackupAndRestore(old), seen])
    assert seen.epochs == [2]

    small = tmp_path / "small"
    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, epochs=3, verbose=0, callbacks=[compat.AtomicBackupAndRestore(small), _InterruptAt(1)])
    keras.utils.set_random_seed(0)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    wider.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    with pytest.raises(ValueError, match="holds the variables of another model or optimizer"):
        wider.fit(x, y, epochs=3, verbose=0, callbacks=[compat.AtomicBackupAndRestore(small)])


def test_atomic_backup_restores_from_another_directory(tmp_path):
    """`restore_dir`: a non-chief worker writes its own backup but restores the chief's."""
    from esnet_tf import compat

    x, y = _data()
    chief = tmp_path / "chief"

    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, epochs=3, verbose=0, callbacks=[compat.AtomicBackupAndRestore(chief), _InterruptAt(1)])
    seen = _Epochs()
    _model().fit(x, y, epochs=3, verbose=0,
                 callbacks=[compat.AtomicBackupAndRestore(tmp_path / "own", restore_dir=chief), seen])
    assert seen.epochs == [1, 2]
    assert (chief / compat.METADATA_FILE).is_file()  # the chief's backup is left to the chief


def test_flatten_layers_reaches_nested_layers():
    """`_flatten_layers` finds a BatchNormalization inside a sub-model; `model.layers` does not."""
    from esnet_tf import compat

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    found = compat.flatten_layers(model)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in found)
    assert model not in found


def test_batchnorm_synchronized_set_after_construction_is_used(monkeypatch):
    """distribute.synchronize_batchnorm sets `layer.synchronized = True` on built layers: Keras
    reads the attribute when the layer is called (it passes it to `ops.moments`)."""
    from keras.src.layers.normalization import batch_normalization as bn_module

    seen = []
    original = bn_module.ops.moments

    def moments(*args, **kwargs):
        seen.append(kwargs.get("synchronized"))
        return original(*args, **kwargs)

    layer = keras.layers.BatchNormalization()
    layer.build((None, 4))
    layer.synchronized = True
    monkeypatch.setattr(bn_module.ops, "moments", moments)
    layer(np.ones((2, 4), dtype="float32"), training=True)
    assert seen == [True]


def test_num_workers_of_strategies():
    """`extended._num_workers`: absent on the default / mirrored strategies (1), set by
    MultiWorkerMirroredStrategy (checked in a fresh process: its collectives need program start;
    the 2-worker value is checked end to end in test_distribute)."""
    import tensorflow as tf

    from esnet_tf import compat

    assert compat.num_workers(tf.distribute.get_strategy()) == 1
    assert compat.num_workers(tf.distribute.MirroredStrategy(["/cpu:0"])) == 1
    code = ("import tensorflow as tf; s = tf.distribute.MultiWorkerMirroredStrategy(); "
            "print(s.extended._num_workers)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_trainer_internals_used_by_fit_scope():
    """`fit_scope` swaps `keras.src.backend.tensorflow.trainer.reduce_per_replica` (values,
    strategy, reduction), asks `_collective_all_reduce_multi_worker(strategy)`, and detaches
    `model._distribute_strategy` (set when built under a strategy scope)."""
    import inspect

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from esnet_tf import compat

    assert list(inspect.signature(tf_trainer.reduce_per_replica).parameters) == ["values", "strategy", "reduction"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert tf_trainer._collective_all_reduce_multi_worker(strategy) is False
    with strategy.scope():
        inputs = {"a": keras.Input((4,), name="a"), "b": keras.Input((2,), name="b")}
        out = keras.layers.Dense(1)(keras.layers.Concatenate()([inputs["a"], inputs["b"]]))
        model = keras.Model(inputs, {"y": out})
        model.compile(optimizer="adam", loss={"y": "mse"})
    assert model._distribute_strategy is strategy
    x, y = _data(8)
    ds = tf.data.Dataset.from_tensor_slices(({"a": x, "b": x[:, :2]}, {"y": y})).batch(4)
    original = tf_trainer.reduce_per_replica
    with compat.fit_scope(model, strategy):  # keras-team/keras#20329: dict batches under a strategy
        assert model._distribute_strategy is None
        history = model.fit(ds, epochs=1, verbose=0)
    assert model._distribute_strategy is strategy and tf_trainer.reduce_per_replica is original
    assert np.isfinite(history.history["loss"][0])


def test_tf_op_statistics_used_by_flops():
    """`op_flops` reads TF's registered 'flops' statistic (MatMul: 2 m k n) and `graph_functions`
    reaches the body of a tf.function called inside another (where Keras layers' ops live)."""
    import tensorflow as tf

    from esnet_tf import compat

    @tf.function
    def inner(a, b):
        return tf.matmul(a, b)

    outer = tf.function(lambda a, b: inner(a, b) + 1.0)
    graph = outer.get_concrete_function(tf.TensorSpec((3, 4)), tf.TensorSpec((4, 5))).graph
    ops = list(graph.get_operations())
    nested = compat.graph_functions(graph)
    assert nested, "nested tf.function bodies are no longer in Graph._functions"
    matmuls = [op for g in nested for op in g.get_operations() if op.type == "MatMul"]
    assert [compat.op_flops(g, op) for g in nested for op in g.get_operations()
            if op.type == "MatMul"] == [2 * 3 * 4 * 5]
    assert matmuls and all(compat.op_flops(graph, op) is None for op in ops if op.type == "Placeholder")


def test_flat_op_names_drops_layer_scopes_and_restores_them():
    import tensorflow as tf

    from esnet_tf.compat import flat_op_names

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="a_long_layer_name")(inp))

    def names() -> list[str]:
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec((None, 4)))
        return [op.name for op in fn.graph.get_operations()]

    assert any("a_long_layer_name" in n for n in names())
    with flat_op_names():
        assert not any("a_long_layer_name" in n for n in names())
    assert any("a_long_layer_name" in n for n in names())  # the patch is undone


def test_freeze_folds_variables_into_constants():
    import numpy as np
    import tensorflow as tf

    from esnet_tf.compat import freeze

    v = tf.Variable([[2.0], [3.0]])
    fn = tf.function(lambda x: tf.matmul(x, v)).get_concrete_function(tf.TensorSpec((None, 2)))
    frozen = freeze(fn)
    assert not frozen.graph.variables
    assert np.allclose(frozen(tf.constant([[1.0, 1.0]]))[0].numpy(), [[5.0]])
