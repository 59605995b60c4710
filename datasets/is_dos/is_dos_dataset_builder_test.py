"""is_dos builder test on dummy_data/ (real GPAW IS-DOS files copied from the demo set, with the
engine's settings and elemental references in dummy_data/provenance.json)."""
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
            "id", "formula", "chemsys", "prototype", "is_energy_per_atom", "is_formation_energy_per_atom"})
        self.assertEqual(features["is_formation_energy_per_atom"].dtype, np.float32)
        self.assertEqual(str(self.builder.version), "1.1.0")

    def test_is_formation_energy_from_column_or_engine_references(self):
        """Al_fcc: the labels column; Mg_fcc: computed from the GPAW engine's references (provenance.json)."""
        import tensorflow_datasets as tfds

        self.builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=self.EXAMPLE_DIR))
        examples = {ex["id"].decode(): ex for split in ("train", "test")
                    for ex in tfds.as_numpy(self.builder.as_dataset(split=split))}
        self.assertAlmostEqual(float(examples["Al_fcc"]["is_formation_energy_per_atom"]), 0.916687, places=5)
        # demo labels.csv: Mg_fcc is_energy_per_atom -1.494662, reference (Mg_hcp) -1.611406 eV/atom
        self.assertAlmostEqual(float(examples["Mg_fcc"]["is_formation_energy_per_atom"]), 0.116743, places=5)
        self.assertAlmostEqual(float(examples["Mg_fcc"]["is_energy_per_atom"]), -1.494662, places=5)


if __name__ == "__main__":
    tfds.testing.test_main()
