"""TFDS datasets of esnet-tf; installed as `esnet_tf.datasets`.

Importing this package registers the `is_dos` builder with TFDS, as any TFDS dataset module
does, so that afterwards

    import esnet_tf.datasets
    ds = tfds.load("is_dos/demo", split="train", data_dir=D)   # builds on first use

and `tfds build is_dos --imports esnet_tf.datasets` work from an installed wheel.
"""
from __future__ import annotations

from esnet_tf.datasets.is_dos import is_dos_dataset_builder  # noqa: F401  (registers is_dos)
