"""Files that install with the package (package data), found with `importlib.resources`.

The repository's top-level `datasets/`, `tuning/` and `saved_models/` folders install as
`esnet_tf.datasets`, `esnet_tf.tuning` and `esnet_tf.saved_models`; nothing here assumes a
checkout, so the same calls work from an installed wheel.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _package_dir(package: str) -> Path:
    # Installed packages are plain directories (not zipped), so the traversable is a real path.
    return Path(str(resources.files(package)))


def is_dos_dir() -> Path:
    """The `is_dos` TFDS builder package (builder module, README, dummy_data/, demo/)."""
    return _package_dir("esnet_tf.datasets.is_dos")


def demo_dir() -> Path:
    """The embedded demo dataset: labels.csv, calcs/, provenance.json (read only)."""
    return is_dos_dir() / "demo"


def pool_dir() -> Path:
    """The hypothetical screening pool (`esnet dft pool`): labels.csv, calcs/, provenance.json (read only)."""
    return is_dos_dir() / "pool"


def demo_labels() -> Path:
    """labels.csv of the embedded demo dataset."""
    return demo_dir() / "labels.csv"


def dummy_data_dir() -> Path:
    """The builder's dummy_data/ (5 real GPAW IS-DOS files with labels.csv)."""
    return is_dos_dir() / "dummy_data"


def search_space_path() -> Path:
    """The default KerasTuner search space, `search_space.json`."""
    return _package_dir("esnet_tf.tuning") / "search_space.json"


def saved_models_dir() -> Path:
    """The shipped SavedModels (`NAME/VERSION/` folders, TF Serving layout)."""
    return _package_dir("esnet_tf.saved_models")
