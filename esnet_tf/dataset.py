"""The `is_dos` TFDS dataset from Python: labels, featurization per row, build and load.

The TFDS builder itself is `esnet_tf.datasets.is_dos` (the repository's `datasets/is_dos/`, the
`tfds new` layout, installed as package data); this module holds the logic it shares with Beam
workers and the helpers the CLI uses:

    from esnet_tf.dataset import load_tfds_split
    ds = load_tfds_split("is_dos/demo", "train")          # builds on first use, reuses after
    ds = load_tfds_split("~/tensorflow_datasets/is_dos/demo/1.1.0", "test")  # prepared dir
    ds = load_tfds_split("is_dos/manual", "train", manual_dir="my_calcs/")

Bad inputs (files that cannot be featurized) fail the build with a message naming the file,
unless `skip_bad_inputs=True` (builder kwarg) or the environment variable
`ESNET_SKIP_BAD_INPUTS=1` is set: then they are skipped and listed with the reason in
`rejected.csv` (id, path, reason) inside the prepared dataset directory.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from esnet_tf.errors import DatasetError, UserError
from esnet_tf.labels import LABELS_FILE, LabelRow, label_float  # noqa: F401  (re-exported)
from esnet_tf.labels import read_labels  # noqa: F401  (re-exported: the one labels reader)
from esnet_tf.isdos import DOSInputError, EnergyGrid
from esnet_tf.splits import SPLITS, split_of

#: Environment variable that turns on skipping of inputs that fail to featurize.
SKIP_ENV = "ESNET_SKIP_BAD_INPUTS"
#: File listing skipped inputs (id, path, reason), written in the prepared dataset directory.
REJECTED_FILE = "rejected.csv"
#: File recording which labels.csv a prepared dataset was built from (sha256, path, rows).
SOURCE_FILE = "build_source.json"
REQUIRED_COLUMNS = ("id", "path", "formation_energy_per_atom")
DATASET_NAME = "is_dos"
#: The builder module (installed from the repository's datasets/is_dos/).
BUILDER_MODULE = "esnet_tf.datasets.is_dos.is_dos_dataset_builder"


@dataclass(frozen=True)
class Rejection:
    """An input skipped because it failed to featurize."""

    id: str
    path: str
    reason: str


def skip_bad_inputs_default() -> bool:
    """True when ESNET_SKIP_BAD_INPUTS is set to 1/true/yes."""
    return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def dataset_rows(labels_csv: str | Path, path_column: str = "path") -> list[LabelRow]:
    """The rows a dataset is built from: `esnet_tf.labels.read_labels` with the calculation path and
    the formation energy required, and at least one row."""
    rows = read_labels(labels_csv, path_column=path_column, require_energy=True)
    if not rows:
        raise DatasetError(f"{labels_csv}: no rows (add one line per calculation)")
    return rows


def labels_digest(labels_csv: str | Path) -> str:
    """sha256 of a labels.csv (hex), to tell whether a prepared dataset is stale."""
    return hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest()


def formula_chemsys(formula: str) -> str:
    """Chemical system ('Fe-O') of a formula string."""
    from pymatgen.core import Composition

    return Composition(formula).chemical_system


def featurize_row(row: LabelRow, grid: EnergyGrid, text_columns: tuple[str, ...] = (),
                  references: dict[str, float] | None = None) -> tuple[str, dict[str, Any]]:
    """(key, example dict) of one labels row in the `is_dos` feature layout.

    `text_columns`: further labels columns copied as text features (e.g. `parent_id`, `variant`).
    `is_energy_per_atom` / `is_formation_energy_per_atom` (eV/atom, NaN unknown): the row's column of
    that name where given, else from the calculation (`featurize`; `references` {element: eV/atom} for
    codes without references of their own).

    Raises `DOSInputError` naming the file when it cannot be featurized, or when the row's
    `formula` column disagrees with the chemical system found in the file.
    """
    from esnet_tf.featurize import energy_arrays, featurize

    if not row.path:
        raise DOSInputError(f"{LABELS_FILE} id {row.id}", "empty calculation path", "fill in the path column")
    try:
        ex = featurize(row.file, grid=grid, id=row.id, references=references)
    except DOSInputError:
        raise
    except Exception as exc:  # a reader library failing on a malformed file
        raise DOSInputError(row.file, f"{type(exc).__name__}: {exc}", "the file looks corrupt") from None
    if row.formula:
        try:
            expected = formula_chemsys(row.formula)
        except Exception:
            raise DOSInputError(row.file, f"labels formula {row.formula!r} is not a formula", "fix labels.csv") from None
        if expected != ex.chemsys:
            raise DOSInputError(row.file, f"holds {ex.formula} ({ex.chemsys}) but labels.csv says {row.formula}",
                                "fix the formula or the path in labels.csv")
    return row.id, {
        "dos_up": ex.dos_up, "dos_down": ex.dos_down, "composition": ex.composition,
        "formation_energy_per_atom": np.float32(row.formation_energy_per_atom),
        "e_above_hull": np.float32(row.e_above_hull),
        "id": row.id, "formula": ex.formula, "chemsys": ex.chemsys, "prototype": row.prototype,
        **{k: np.float32(v[0, 0]) for k, v in energy_arrays([ex], {row.id: row}).items()},
        **{c: str(row.get(c) or "") for c in text_columns},
    }


def bad_input_error(row: LabelRow, exc: Exception) -> DOSInputError:
    """The build-failing error for a row: names the file, the id, and the skip option."""
    problem = exc.problem if isinstance(exc, DOSInputError) else str(exc)
    path = exc.path if isinstance(exc, DOSInputError) else row.file
    return DOSInputError(path, f"{problem} [{LABELS_FILE} id {row.id}]",
                         f"fix or remove the row, or set {SKIP_ENV}=1 to skip bad inputs into {REJECTED_FILE}")


def plan_splits(rows: list[LabelRow], grid: EnergyGrid, fractions: tuple[float, float, float],
                skip: bool, progress: bool = True) -> tuple[dict[str, list[LabelRow]], list[Rejection]]:
    """Featurize every row once to find its chemical system and split (local, non-Beam builds).

    Returns rows per split (in labels.csv order, empty splits left out) and the rejected rows;
    raises the first bad input's error unless `skip`.
    """
    from tqdm.auto import tqdm

    plan: dict[str, list[LabelRow]] = {s: [] for s in SPLITS}
    rejected: list[Rejection] = []
    for row in tqdm(rows, desc="is_dos: featurize (split assignment)", unit="file",
                    disable=not progress or len(rows) < 2, leave=False):
        try:
            _, ex = featurize_row(row, grid)
        except Exception as exc:  # noqa: BLE001 - every failure is a bad input, reported below
            if not skip:
                raise bad_input_error(row, exc) from None
            rejected.append(Rejection(row.id, row.path, _reason(exc)))
            continue
        plan[split_of(ex["chemsys"], fractions)].append(row)
    return {s: r for s, r in plan.items() if r}, rejected


def route_rows(rows: list[LabelRow], grid: EnergyGrid, fractions: tuple[float, float, float],
               skip: bool, progress: bool = True) -> tuple[dict[str, list[LabelRow]], list[Rejection]]:
    """Split routing for Beam builds without featurizing on the launcher where possible.

    Rows with a `formula` are routed by its chemical system (checked against the file on the
    workers); rows without one are featurized here once (`plan_splits`). Empty splits are
    left out. Returns rows per split and the rows rejected here.
    """
    plan: dict[str, list[LabelRow]] = {s: [] for s in SPLITS}
    unknown: list[LabelRow] = []
    for row in rows:
        try:
            cs = formula_chemsys(row.formula) if row.formula else None
        except Exception:  # not a formula: featurize_row reports it (or skips it) below
            cs = None
        if cs is None:
            unknown.append(row)
        else:
            plan[split_of(cs, fractions)].append(row)
    rejected: list[Rejection] = []
    if unknown:
        local, rejected = plan_splits(unknown, grid, fractions, skip, progress)
        for split, extra in local.items():
            plan[split] += extra
    order = {row.id: i for i, row in enumerate(rows)}
    return {s: sorted(r, key=lambda row: order[row.id]) for s, r in plan.items() if r}, rejected


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())


def generate_split(rows: Iterable[LabelRow], split: str, grid: EnergyGrid,
                   fractions: tuple[float, float, float], text_columns: tuple[str, ...] = (),
                   references: dict[str, float] | None = None) -> Iterator[tuple[str, dict]]:
    """Examples of one split (plain, non-Beam generation); rows come from `plan_splits`, so a
    failure here means the file changed during the build and always fails it."""
    for row in rows:
        try:
            key, ex = featurize_row(row, grid, text_columns, references)
        except Exception as exc:  # noqa: BLE001 - the file changed since plan_splits
            raise bad_input_error(row, exc) from None
        if split_of(ex["chemsys"], fractions) != split:
            raise DOSInputError(row.file, "changed during the build", "rebuild")
        yield key, ex


def _beam_featurize(row: LabelRow, grid: EnergyGrid, split: str, fractions: tuple[float, float, float],
                    skip: bool, text_columns: tuple[str, ...] = (), references: dict[str, float] | None = None):
    """Beam FlatMap body: the example when it belongs to `split`, or a tagged rejection."""
    import apache_beam as beam

    try:
        key, ex = featurize_row(row, grid, text_columns, references)
    except Exception as exc:  # noqa: BLE001
        if not skip:
            raise bad_input_error(row, exc) from None
        yield beam.pvalue.TaggedOutput("rejected", json.dumps([row.id, row.path, _reason(exc)]))
        return
    if split_of(ex["chemsys"], fractions) != split:  # routed by a formula that matched: cannot happen
        raise DOSInputError(row.file, f"belongs to split {split_of(ex['chemsys'], fractions)}, not {split}")
    yield key, ex


def beam_split_transform(rows: list[LabelRow], split: str, grid: EnergyGrid,
                         fractions: tuple[float, float, float], skip: bool, rejected_prefix: str,
                         text_columns: tuple[str, ...] = (), references: dict[str, float] | None = None):
    """A `beam.PTransform` (PBegin -> (key, example)) featurizing one split's rows (from
    `route_rows`) on Beam workers.

    Rejections (with `skip`) are written as JSON lines to files `rejected_prefix*`, merged into
    rejected.csv by `merge_rejected` after the pipeline ran.
    """
    import apache_beam as beam

    @beam.ptransform_fn
    def _split(begin):
        outs = (begin | "Rows" >> beam.Create(list(rows), reshuffle=True)
                | "Featurize" >> beam.FlatMap(_beam_featurize, grid, split, fractions, skip, text_columns, references)
                .with_outputs("rejected", main="examples"))
        if skip:
            _ = outs.rejected | "WriteRejected" >> beam.io.WriteToText(rejected_prefix, num_shards=1)
        return outs.examples

    return _split()


def write_rejected(rejected: Iterable[Rejection], out_dir: str | Path) -> Path:
    """Write rejected.csv (id, path, reason), sorted by id and de-duplicated."""
    from etils import epath

    uniq = {(r.id, r.path, r.reason) for r in rejected}
    out = epath.Path(out_dir) / REJECTED_FILE
    with out.open("w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "path", "reason"])
        w.writerows(sorted(uniq))
    return Path(os.fspath(out))


def merge_rejected(parts_dir: str | Path) -> list[Rejection]:
    """Read and delete the JSON-lines rejection files the Beam splits wrote."""
    from etils import epath

    parts = epath.Path(parts_dir)
    out: list[Rejection] = []
    if parts.exists():
        for f in sorted(parts.glob("*")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(Rejection(*json.loads(line)))
        parts.rmtree()
    return out


# ------------------------------------------------------------------ registration, build, load

def register_builder():
    """Register the `is_dos` builder with TFDS (by importing `esnet_tf.datasets`); returns `Builder`.

    Afterwards `tfds.builder('is_dos/demo')` / `tfds.load(...)` work in this process. A builder
    already registered under another module name (`tfds build datasets/is_dos` from a checkout)
    is reused, since TFDS refuses a second registration of one name.
    """
    import tensorflow_datasets as tfds

    if DATASET_NAME not in tfds.core.registered.list_imported_builders():
        importlib.import_module("esnet_tf.datasets")
    return tfds.builder_cls(DATASET_NAME)


def _parse_name(name: str) -> tuple[str, str | None]:
    """'is_dos/demo' -> ('is_dos', 'demo'); 'is_dos' -> ('is_dos', None)."""
    base, _, rest = name.partition("/")
    config = rest.split(":")[0] or None
    return base, config


def _built_from(builder) -> dict | None:
    path = Path(os.fspath(builder.data_dir)) / SOURCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def build_dataset(name: str = "is_dos/demo", data_dir: str | Path | None = None,
                  manual_dir: str | Path | None = None, *, skip_bad_inputs: bool | None = None,
                  rebuild: bool = False, beam_pipeline_options: str | None = None, verbose: bool = True):
    """Prepare `is_dos/<config>` in `data_dir` (TFDS default when None) and return the builder.

    Builds when not prepared, or when its labels.csv changed since the build (sha256 check),
    or with `rebuild`; otherwise reuses the prepared files. `beam_pipeline_options` (e.g.
    "runner=DirectRunner,direct_num_workers=2") runs the generation on Apache Beam.
    """
    import tensorflow_datasets as tfds

    base, config = _parse_name(name)
    if base != DATASET_NAME:
        raise DatasetError(f"{name}: unknown dataset (use is_dos/demo, is_dos/demo_rs, is_dos/manual or a prepared directory)")
    builder_cls = register_builder()
    config = config or "demo"
    if config not in builder_cls.builder_configs:
        raise DatasetError(f"{name}: unknown config (available: {', '.join(builder_cls.builder_configs)})")
    kwargs: dict[str, Any] = {"config": config, "skip_bad_inputs": skip_bad_inputs}
    if data_dir is not None:
        kwargs["data_dir"] = os.fspath(Path(data_dir).expanduser())
    builder = builder_cls(**kwargs)
    if builder.builder_config.source == "manual" and manual_dir is None:
        if builder.is_prepared() and not rebuild:
            return builder
        raise DatasetError(f"{name}: needs manual_dir (a directory with {LABELS_FILE}; see datasets/is_dos/README.md)")
    labels = builder.labels_path(manual_dir)
    reason = "not prepared yet"
    if builder.is_prepared():
        built = _built_from(builder)
        if rebuild:
            reason = "rebuild requested"
        elif built and built.get("labels_sha256") == labels_digest(labels) and \
                built.get("labels_csv") == str(Path(labels).resolve()):
            if verbose:
                print(f"is_dos: reusing {builder.data_dir} ({builder.info.splits.total_num_examples} examples)",
                      file=sys.stderr)
            return builder
        else:
            reason = f"{labels} changed since the build"
    if verbose:
        print(f"is_dos: building {builder.info.full_name} into {builder.data_dir} ({reason})", file=sys.stderr)
    dl_kwargs: dict[str, Any] = {}
    if manual_dir is not None:
        dl_kwargs["manual_dir"] = os.fspath(Path(manual_dir).expanduser())
    if rebuild or reason != "not prepared yet":
        dl_kwargs["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if beam_pipeline_options:
        import apache_beam as beam

        dl_kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(
            flags=[f"--{opt}" for opt in beam_pipeline_options.split(",")])
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**dl_kwargs))
    builder.built_now = True  # read by `main` (throughput report)
    if verbose:
        counts = ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items())
        print(f"is_dos: built {builder.data_dir} ({counts})", file=sys.stderr)
    return builder


def is_prepared_dir(path: str | Path) -> bool:
    """True for a prepared TFDS dataset directory (holds dataset_info.json)."""
    return (Path(path).expanduser() / "dataset_info.json").is_file()


def load_tfds_split(name_or_dir: str, split: str, data_dir: str | None = None, *,
                    manual_dir: str | Path | None = None, skip_bad_inputs: bool | None = None):
    """A `tf.data.Dataset` of dict examples (dos_up, dos_down, composition, labels, id, ...).

    `name_or_dir`: 'is_dos/demo', 'is_dos/demo_rs', 'is_dos/manual' (with `manual_dir`), a
    prepared dataset directory (`<data_dir>/is_dos/<config>/<version>`), or a manual directory
    holding labels.csv (built as is_dos/manual). Builds on first use; reuses afterwards.
    """
    import tensorflow_datasets as tfds

    path = Path(str(name_or_dir)).expanduser()
    if path.is_dir() and is_prepared_dir(path):
        builder = tfds.builder_from_directory(os.fspath(path))
    elif path.is_dir() and (path / LABELS_FILE).is_file():
        builder = build_dataset("is_dos/manual", data_dir, path, skip_bad_inputs=skip_bad_inputs)
    elif path.is_dir():
        raise DatasetError(f"{path}: neither a prepared TFDS dataset (no dataset_info.json) nor a "
                           f"directory with {LABELS_FILE}")
    else:
        builder = build_dataset(str(name_or_dir), data_dir, manual_dir, skip_bad_inputs=skip_bad_inputs)
    available = list(builder.info.splits.keys())
    base_split = split.split("[")[0]
    if base_split not in available:
        raise DatasetError(f"{builder.data_dir}: no split {split!r} (available: {', '.join(available)}; "
                           "a split is absent when no chemical system fell into it)")
    return builder.as_dataset(split=split, shuffle_files=False)


def dataset_bytes(builder) -> int:
    """Bytes of the example shards of a prepared dataset."""
    return sum(Path(os.fspath(f)).stat().st_size
               for info in builder.info.splits.values() for f in info.filepaths)
