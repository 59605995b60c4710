"""is_dos dataset: IS-DOS (DOS of unrelaxed structures) with relaxed formation energies.

Configs (`IsDosConfig`, data not code): `demo` (the embedded GPAW demo set of this
repository, no network), `demo_rs` (the same labels with the relaxed-structure DOS, for
IS-vs-RS comparisons), `manual` (your labels.csv and calculation files).

Every config carries the IS energies of DESIGN.md section 1 (spec v2, version 1.1.0):
`is_energy_per_atom` and `is_formation_energy_per_atom` (eV/atom, NaN where unknown), from the
labels column of that name where given, else from the calculation (GPAW: the engine's own
references in provenance.json; other codes: the manual directory's references file). Version
1.0.0 (without them) is a supported version: data prepared at 1.0.0 loads as it is
(`tfds.load("is_dos/demo:1.0.0")`, or its directory); TFDS generates only the current version.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from esnet_tf import dataset as isdos_data
from esnet_tf.isdos import IS_ENERGY, IS_FORMATION_ENERGY, N_ELEMENTS, N_ORBITALS, PAPER_GRID, EnergyGrid
from esnet_tf.splits import DEFAULT_FRACTIONS

#: The embedded demo data: package data beside this module (read with importlib.resources; the
#: package name depends on how TFDS imported the module, so it is taken from `__package__`).
_DEMO_DIR = Path(str(importlib.resources.files(__package__ or "esnet_tf.datasets.is_dos"))) / "demo"
#: elemental references (eV/atom) of the manual directory's code, for is_formation_energy_per_atom: the
#: first of these files found in the manual directory (`esnet_tf.references.load_references`)
REFERENCES_FILES = ("references.csv", "references.json", "references.json.gz")
#: the first version with the IS energy features
ENERGY_VERSION = tfds.core.Version("1.1.0")
ENERGY_FEATURES = (IS_ENERGY, IS_FORMATION_ENERGY)


@dataclasses.dataclass(eq=False)
class IsDosConfig(tfds.core.BuilderConfig):
    """A variant of is_dos: where the inputs come from and how they become IS-DOS.

    grid: the IS-DOS energy axis (E - E_F, eV); fractions: train/validation/test fractions of
    chemical systems (not of examples); source: 'demo' (datasets/is_dos/demo), 'pool'
    (datasets/is_dos/pool) or 'manual';
    path_column: labels.csv column holding the calculation path; labels_file: the labels table
    of the demo directory; text_columns: labels columns kept as text features.
    """

    grid: EnergyGrid = PAPER_GRID
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    source: str = "manual"
    path_column: str = "path"
    labels_file: str = isdos_data.LABELS_FILE
    text_columns: tuple[str, ...] = ()


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for is_dos (works as a plain generator and on Apache Beam)."""

    # README / CITATIONS.bib / TAGS.txt are read from this module's folder. TFDS would infer it
    # from the module name (esnet_tf/datasets/is_dos), which an editable install maps elsewhere.
    pkg_dir_path = epath.Path(__file__).resolve().parent
    VERSION = ENERGY_VERSION
    SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]  # loads when prepared (layout without the IS energies)
    RELEASE_NOTES = {
        "1.0.0": "Initial release: IS-DOS on E - E_F in [-20, 10] eV (1500 points, 9 orbitals), "
                 "splits grouped by chemical system, prototype feature.",
        "1.1.0": "IS energies (IS-DOS spec v2): is_energy_per_atom and is_formation_energy_per_atom (eV/atom, "
                 "NaN where unknown) in every config, from a labels column of that name or from the "
                 "calculation (GPAW: the engine's references in provenance.json; manual: references.csv / "
                 "references.json[.gz] in the manual directory). Same examples and splits as 1.0.0; data "
                 "prepared at 1.0.0 still loads (`is_dos/<config>:1.0.0`).",
    }
    BUILDER_CONFIGS = [
        IsDosConfig(name="demo", source="demo",
                    description="Embedded demo: GPAW calculations of unrelaxed prototype structures "
                                "from datasets/is_dos/demo (builds offline)."),
        IsDosConfig(name="demo_rs", source="demo", path_column="rs_path",
                    description="Demo labels with the DOS of the relaxed structures (RS-DOS), for "
                                "IS-DOS vs RS-DOS comparisons."),
        IsDosConfig(name="demo_augmented", source="demo", labels_file="labels_augmented.csv",
                    text_columns=("parent_id", "variant"),
                    description="Demo with IS augmentation: each relaxed structure's own IS plus >= 3 more "
                                "initial structures (strained, scaled or rattled), each with its own IS "
                                "single point and the relaxed label of its parent (`parent_id`; `variant` "
                                "is '' for the parent's own IS). Variants share their parent's chemical "
                                "system, hence its split."),
        IsDosConfig(name="pool", source="pool", text_columns=("role", "family", "hull_complete"),
                    description="Hypothetical screening pool (`esnet dft pool`, datasets/is_dos/pool): element "
                                "substitution on ternary prototypes (`role` candidate) with the competing "
                                "binaries, new elemental phases and strongly unstable gas-element pairs "
                                "(`role` competitor / element / label_range); `family` "
                                "names the candidate's prototype family, `hull_complete` ('True'/'False') "
                                "whether every competitor of its system is computed yet. Grows as the DFT "
                                "job runs; the labels' sha256 is recorded with the build."),
        IsDosConfig(name="manual", source="manual",
                    description="Your calculations: a manual directory with labels.csv and VASP / "
                                "Materials Project / GPAW DOS files."),
    ]
    DEFAULT_CONFIG_NAME = "demo"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Only the `manual` config needs a manual directory (`--manual_dir DIR`). Layout:

      DIR/labels.csv           one row per calculation, header required:
                               id,path,formation_energy_per_atom[,e_above_hull][,prototype][,formula]
                                 id: unique string; path: calculation, relative to DIR (or absolute);
                                 formation_energy_per_atom, e_above_hull: eV/atom (e_above_hull may be
                                 empty = unknown); prototype: free text; formula: optional, checked
                                 against the file; is_formation_energy_per_atom, is_energy_per_atom:
                                 optional, eV/atom (empty = from the calculation). Other columns are
                                 ignored.
      DIR/<path>               vasprun.xml[.gz] | DOSCAR[.gz] (+POSCAR) file or directory |
                               Materials Project CompleteDos .json[.gz] (one document) | *.gpawdos.npz
      DIR/references.csv       optional: element,energy_per_atom (eV/atom) of the same code and settings
                               (or references.json[.gz]: Materials Project ComputedEntry dicts), for
                               is_formation_energy_per_atom of files whose code brings no references
                               (GPAW files of `esnet dft` use the engine's provenance.json)

    Files that fail to featurize stop the build with a message naming the file; set
    {isdos_data.SKIP_ENV}=1 (or pass skip_bad_inputs=True to the builder) to skip them instead:
    they are listed with the reason in {isdos_data.REJECTED_FILE} in the prepared dataset directory.
    """

    def __init__(self, *, skip_bad_inputs: bool | None = None, **kwargs):
        """skip_bad_inputs: skip files that fail to featurize (default: env ESNET_SKIP_BAD_INPUTS)."""
        self._skip_bad_inputs = skip_bad_inputs
        self._use_beam = False
        self._rejected: list[isdos_data.Rejection] = []
        if kwargs.get("file_format") is None:  # ArrayRecord shards cannot be read by as_dataset() here
            kwargs["file_format"] = "tfrecord"
        super().__init__(**kwargs)

    @property
    def skip_bad_inputs(self) -> bool:
        if self._skip_bad_inputs is None:
            return isdos_data.skip_bad_inputs_default()
        return bool(self._skip_bad_inputs)

    def _info(self) -> tfds.core.DatasetInfo:
        n = self.builder_config.grid.n_points
        dos = tfds.features.Tensor(shape=(n, N_ORBITALS), dtype=np.float32,
                                   doc="states/eV/atom on E - E_F grid x orbitals s..dx2-y2")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "dos_up": dos,
                "dos_down": dos,
                "composition": tfds.features.Tensor(shape=(N_ELEMENTS,), dtype=np.float32,
                                                    doc="atomic fraction of Z = 1..118"),
                "formation_energy_per_atom": tfds.features.Scalar(np.float32, doc="eV/atom"),
                "e_above_hull": tfds.features.Scalar(np.float32, doc="eV/atom, NaN when unknown"),
                "id": tfds.features.Text(),
                "formula": tfds.features.Text(doc="reduced formula read from the calculation"),
                "chemsys": tfds.features.Text(doc="chemical system, e.g. Fe-O (split key)"),
                "prototype": tfds.features.Text(doc="structure prototype, '' when unknown"),
                **({IS_ENERGY: tfds.features.Scalar(np.float32, doc="IS total energy, eV/atom, NaN when unknown"),
                    IS_FORMATION_ENERGY: tfds.features.Scalar(
                        np.float32, doc="IS formation energy against elemental references of the same code, "
                                        "eV/atom, NaN when unknown")} if self.has_energies else {}),
                **{c: tfds.features.Text(doc=f"labels column {c!r}") for c in self.builder_config.text_columns},
            }),
            supervised_keys=None,
            homepage="https://github.com/ekdms-S/ESNet",
        )

    @property
    def has_energies(self) -> bool:
        """Whether this version carries the IS energy features (1.1.0 on)."""
        return tfds.core.Version(str(self.version)) >= ENERGY_VERSION

    def references(self, manual_dir: str | os.PathLike | None) -> dict[str, float] | None:
        """{element: eV/atom} of the manual directory's references file, None when it has none (or for the demo)."""
        from esnet_tf.references import load_references

        if self.builder_config.source != "manual" or manual_dir is None:
            return None
        root = Path(os.fspath(manual_dir)).expanduser()
        for name in REFERENCES_FILES:
            if (root / name).is_file():
                return load_references(root / name)
        return None

    def labels_path(self, manual_dir: str | os.PathLike | None = None) -> Path:
        """The labels.csv this config reads (the demo's, or the one in `manual_dir`)."""
        if self.builder_config.source == "demo":
            return _DEMO_DIR / self.builder_config.labels_file
        if self.builder_config.source == "pool":
            return _DEMO_DIR.parent / "pool" / self.builder_config.labels_file
        if manual_dir is None:
            raise isdos_data.DatasetError("is_dos/manual needs --manual_dir (see MANUAL_DOWNLOAD_INSTRUCTIONS)")
        return Path(os.fspath(manual_dir)).expanduser() / isdos_data.LABELS_FILE

    def _download_and_prepare(self, dl_manager, download_config):
        # Beam is used when the caller asked for a pipeline (tfds build --beam_pipeline_options).
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        self._rejected = []
        super()._download_and_prepare(dl_manager, download_config)
        if self._use_beam:
            self._rejected += isdos_data.merge_rejected(self._rejected_parts_dir())
        if self.skip_bad_inputs:
            isdos_data.write_rejected(self._rejected, self.data_dir)
        self._write_source()

    def _rejected_parts_dir(self) -> str:
        return os.path.join(self.data_dir, "rejected-parts")

    def _write_source(self) -> None:
        import json

        from etils import epath

        record = {"labels_csv": str(Path(self._labels).resolve()), "labels_sha256": self._labels_sha256,
                  "n_rows": len(self._rows), "n_rejected": len(set(self._rejected)),
                  "beam": self._use_beam, "grid": self.builder_config.grid.to_dict(),
                  "fractions": list(self.builder_config.fractions)}
        (epath.Path(self.data_dir) / isdos_data.SOURCE_FILE).write_text(json.dumps(record, indent=1))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Splits train / validation / test by chemical system (esnet_tf.splits.split_of)."""
        cfg = self.builder_config
        self._labels = self.labels_path(dl_manager.manual_dir if cfg.source == "manual" else None)
        # digest before reading, so an edit made during the build makes the next build_dataset() rebuild
        self._labels_sha256 = isdos_data.labels_digest(self._labels) if self._labels.is_file() else ""
        self._references = self.references(dl_manager.manual_dir if cfg.source == "manual" else None)
        self._rows = isdos_data.dataset_rows(self._labels, cfg.path_column)
        if self._use_beam:  # featurize on the workers; rows routed by their formula column
            plan, self._rejected = isdos_data.route_rows(self._rows, cfg.grid, cfg.fractions, self.skip_bad_inputs)
        else:  # featurize once here to find each row's chemical system
            plan, self._rejected = isdos_data.plan_splits(self._rows, cfg.grid, cfg.fractions, self.skip_bad_inputs)
        if not plan:
            first = self._rejected[0].reason if self._rejected else "no rows"
            raise isdos_data.DatasetError(f"{self._labels}: none of {len(self._rows)} inputs could be featurized "
                                          f"(first: {first})")
        return {s: self._generate_examples(rows, s) for s, rows in plan.items()}

    def _generate_examples(self, rows, split):
        """(id, example) pairs of one split: a generator, or a `beam.PTransform` in Beam builds."""
        cfg = self.builder_config
        drop = () if self.has_energies else ENERGY_FEATURES  # version 1.0.0: the layout without them
        if self._use_beam:
            import apache_beam as beam

            transform = isdos_data.beam_split_transform(rows, split, cfg.grid, cfg.fractions, self.skip_bad_inputs,
                                                        os.path.join(self._rejected_parts_dir(), split),
                                                        cfg.text_columns, self._references)
            return transform | "Layout" >> beam.Map(_without, drop) if drop else transform
        return (_without(kv, drop) for kv in isdos_data.generate_split(rows, split, cfg.grid, cfg.fractions,
                                                                         cfg.text_columns, self._references))


def _without(key_example: tuple[str, dict], keys: tuple[str, ...]) -> tuple[str, dict]:
    """(key, example) with the features `keys` left out (an older version's layout)."""
    key, example = key_example
    return key, {k: v for k, v in example.items() if k not in keys}
