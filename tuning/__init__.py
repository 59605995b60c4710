"""KerasTuner architecture search for ESNet (`esnet tune`).

- `esnet_tf.tuning.search_space`: the search space as data (`search_space.json`, `SearchSpace`).
- `esnet_tf.tuning.hypermodel`: `ESNetHyperModel`, whose `build(hp)` returns a compiled ESNet.
- `esnet_tf.tuning.search`: `tune(TuneConfig, ...)`, the search behind `esnet tune` (Hyperband /
  Bayesian / random, resume, summary table, retraining and SavedModel export of the best trial,
  chief/worker mode); the flags live in `esnet_tf.cli.tune`.

Attributes load lazily, so `esnet tune --help` does not import TensorFlow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"OBJECTIVE": "esnet_tf.tuning.hypermodel", "ESNetHyperModel": "esnet_tf.tuning.hypermodel",
            "DEFAULT_PATH": "esnet_tf.tuning.search_space",
            "SearchSpace": "esnet_tf.tuning.search_space", "SearchSpaceError": "esnet_tf.tuning.search_space"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'esnet_tf.tuning' has no attribute {name!r}")
