"""is_dos builder test on dummy_data/ (real GPAW IS-DOS files copied from the demo set)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from esnet_tf.datasets.is_dos import is_dos_dataset_builder


class IsDosManualTest(tfds.testing.DatasetBuilderTestCase):
    """Builds the `manual` config from dummy_data/ (labels.csv + 5 *.gpawdos.npz)."""

    DATASET_CLASS = is_dos_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["manual"]  # `demo` grows with the DFT job: tests/test_tfds.py
    SPLITS = {"train": 3, "test": 2}  # Al, Li, Mg -> train; Si, Ga -> test (split_of by chemsys)
    SKIP_CHECKSUMS = True  # nothing is downloaded
    # beside this file (TFDS would infer it from the module name, which an editable install maps elsewhere)
    EXAMPLE_DIR = str(Path(__file__).resolve().parent / "dummy_data")
    # The readers open DFT files with numpy / pymatgen, which TFDS's os/open mocks would block.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False

    def test_features_are_the_is_dos_contract(self):
        features = self.builder.info.features
        self.assertEqual(features["dos_up"].shape, (1500, 9))
        self.assertEqual(features["dos_down"].dtype, np.float32)
        self.assertEqual(features["composition"].shape, (118,))
        self.assertEqual(set(features.keys()), {
            "dos_up", "dos_down", "composition", "formation_energy_per_atom", "e_above_hull",
            "id", "formula", "chemsys", "prototype"})


if __name__ == "__main__":
    tfds.testing.test_main()
