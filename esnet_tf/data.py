"""tf.data input pipelines for ESNet.

A dataset spec (`--dataset`) is one of:
- `features.npz` written by `esnet featurize` (several may be joined with commas), plus a labels
  CSV (`--labels`, default `labels.csv` next to the first .npz) with columns `id`,
  `formation_energy_per_atom` (eV/atom) and optionally `e_above_hull` (eV/atom);
- a directory holding `labels.csv` (`id`, `path` of the calculation relative to the directory,
  `formation_energy_per_atom`, ...) and the calculation files: featurized on the fly;
- anything else: a TFDS dataset name or directory, read with `esnet_tf.dataset.load_tfds_split`.

For the first two, splits come from `esnet_tf.splits.split_of(chemsys)`, the same rule as the
TFDS builder, so no chemical system appears in two splits. Every source yields the same
unbatched example dicts: dos_up, dos_down (n_points, 9) float32 states/eV/atom, composition
(118,) float32, formation_energy_per_atom and e_above_hull float32 eV/atom (NaN where unknown),
id, formula, chemsys (strings).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from esnet_tf.isdos import N_ELEMENTS, N_ORBITALS, PAPER_GRID, EnergyGrid, ISDOSExample
from esnet_tf.isdos import ENERGY_FIX, INPUT_NAMES, OUTPUT_NAME, negative_dos_floor
from esnet_tf.featurize import energy_arrays, fill_energies  # energy inputs: (N, 1) eV/atom, NaN unknown
from esnet_tf.splits import DEFAULT_FRACTIONS, SPLITS, split_of
from esnet_tf.errors import UserError
from esnet_tf.labels import LabelRow, labels_by_id

LABEL_KEYS = ("formation_energy_per_atom", "e_above_hull")
#: |sum of a composition vector - 1| accepted (float32 rounding of 118 fractions)
COMPOSITION_TOLERANCE = 1e-4
STRING_KEYS = ("id", "formula", "chemsys")


# ---------------------------------------------------------------- data settings

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_split_fractions(values) -> tuple[float, float, float]:
    """Three fractions >= 0 summing to 1 (the rule of esnet_tf.splits), as a tuple."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 0 or abs(sum(out) - 1.0) > 1e-9:
        raise UserError(f"--split-fractions must be three fractions >= 0 summing to 1 (train, validation, "
                        f"test), e.g. 0.8,0.1,0.1; got {values!r}")
    return out


def parse_split_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); `UserError` unless three fractions >= 0 summing to 1."""
    try:
        parts = [float(x) for x in str(text).split(",")]
    except ValueError:
        parts = text
    return check_split_fractions(parts)


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they split into train / validation / test.

    The data fields shared by `esnet_tf.train.TrainConfig` and `esnet_tf.tuning.search.TuneConfig`
    (both extend this class; each field is a flag of the same name). Invalid values raise
    `UserError` naming the flag.
    """

    dataset: str | None = None      #: features .npz (with `labels`), labels directory, or TFDS name/dir
    labels: str | None = None       #: labels CSV for an .npz: id, formation_energy_per_atom (eV/atom)
    data_dir: str | None = None     #: TFDS data_dir (TFDS datasets only)
    split_fractions: tuple[float, float, float] | None = None  #: train/validation/test fractions of
    #: chemical systems for .npz / labels-directory datasets (None: 0.8, 0.1, 0.1)
    split_seed: int = 0             #: seed of the chemical-system split

    def __post_init__(self) -> None:
        for name in ("dataset", "labels", "data_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.split_fractions is not None:
            object.__setattr__(self, "split_fractions", check_split_fractions(self.split_fractions))
        for name in ("dataset", "labels", "data_dir"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise UserError(f"{_flag(name)} must be a path or name (a string), got {getattr(self, name)!r}")
        seed = self.split_seed
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise UserError(f"--split-seed must be an integer >= 0, got {seed!r} (setting 'split_seed')")

    def data_config(self) -> "DataConfig":
        """Only the data fields, as a `DataConfig`."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})

    def split_options(self) -> dict:
        """Keyword arguments of `load_split` (labels, data_dir, split fractions / seed)."""
        return {"labels": self.labels, "data_dir": self.data_dir, "split_fractions": self.split_fractions,
                "split_seed": int(self.split_seed)}


def model_input_names(model_config: Any = None) -> tuple[str, ...]:
    """The model inputs a pipeline feeds: dos_up, dos_down, composition, then the named scalar energy
    inputs (eV/atom, (N, 1)) that `model_config` lists in `energy_inputs` (none for the paper's model)."""
    extra = tuple(getattr(model_config, "energy_inputs", ()) or ())
    return (*INPUT_NAMES, *extra)


# ---------------------------------------------------------------- labels and raw sources

def is_labels_dir(spec: str | Path) -> bool:
    """True for a directory holding labels.csv and calculation files."""
    return Path(spec).is_dir() and (Path(spec) / "labels.csv").is_file()


def is_npz_spec(spec: str) -> bool:
    """True for `a.npz[,b.npz...]`."""
    return all(p.strip().endswith(".npz") for p in str(spec).split(","))


def stack_examples(examples: Sequence[ISDOSExample], labels: Mapping[str, LabelRow] | None = None,
                   n_points: int = PAPER_GRID.n_points) -> dict[str, np.ndarray]:
    """The one conversion from IS-DOS examples to arrays.

    dos_up, dos_down (N, n_points, 9) float32 states/eV/atom; composition (N, 118); id, formula,
    chemsys, code (N,) str (code: the DFT code that computed the DOS); formation_energy_per_atom, e_above_hull (N,) float32 eV/atom from `labels`
    by id (NaN where unknown). `n_points` shapes the empty result.
    """
    labels = labels or {}
    if examples:
        n_points = examples[0].dos_up.shape[0]
    return {
        "dos_up": np.stack([e.dos_up for e in examples]) if examples else np.zeros((0, n_points, N_ORBITALS), np.float32),
        "dos_down": np.stack([e.dos_down for e in examples]) if examples else np.zeros((0, n_points, N_ORBITALS), np.float32),
        "composition": np.stack([e.composition for e in examples]) if examples else np.zeros((0, N_ELEMENTS), np.float32),
        **{k: np.array([labels[e.id][k] if e.id in labels else math.nan for e in examples], np.float32)
           for k in LABEL_KEYS},
        "id": np.array([e.id for e in examples], dtype=str),
        "formula": np.array([e.formula for e in examples], dtype=str),
        "chemsys": np.array([e.chemsys for e in examples], dtype=str),
        "code": np.array([e.code for e in examples], dtype=str),  # DFT code of each IS-DOS (the domain check reads it)
        **energy_arrays(examples, labels),  # is_energy_per_atom, is_formation_energy_per_atom (N, 1) eV/atom
    }


def load_npz_arrays(spec: str, labels: str | Path | None = None, require_labels: bool = True) -> dict[str, np.ndarray]:
    """All examples of `a.npz[,b.npz]` joined with their labels (by id), as numpy arrays.

    Ids without a label row are left out (and counted in the message) when `require_labels`;
    otherwise their energies are NaN.
    """
    from esnet_tf.featurize import load_examples

    paths = [Path(p.strip()) for p in str(spec).split(",") if p.strip()]
    parts = [load_examples(p) for p in paths]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("dos_up", "dos_down", "composition", "id")}
    n = len(arrays["id"])
    for key in ("formula", "chemsys"):
        arrays[key] = np.concatenate([p[key] if key in p else np.full(len(p["id"]), "", dtype=object)
                                      for p in parts]).astype(str)
    if labels is None and (paths[0].parent / "labels.csv").is_file():
        labels = paths[0].parent / "labels.csv"
    rows = labels_by_id(labels, path_column=None, require_energy=False) if labels is not None else {}
    if require_labels and not rows:
        raise UserError(f"{spec}: no labels; pass --labels CSV with columns id, formation_energy_per_atom (eV/atom)")
    for key in LABEL_KEYS:
        arrays[key] = np.array([rows.get(i, {}).get(key, math.nan) for i in arrays["id"]], dtype=np.float32)
    arrays["id"] = arrays["id"].astype(str)
    arrays.update({k: np.concatenate([p[k] for p in parts]) for k in ("is_energy_per_atom", "is_formation_energy_per_atom")})
    fill_energies(arrays, rows)  # a labels column of that name wins over the .npz value
    if require_labels:
        keep = np.array([i in rows for i in arrays["id"]], dtype=bool)
        if not keep.any():
            raise UserError(f"{spec}: none of the {n} ids appear in {labels}")
        if not keep.all():
            print(f"note: {n - int(keep.sum())} of {n} examples in {spec} have no row in {labels}; left out")
        arrays = {k: v[keep] for k, v in arrays.items()}
    return arrays


@lru_cache(maxsize=4)
def _load_dir_cached(directory: str, mtime: float, grid: EnergyGrid) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    from esnet_tf.featurize import featurize

    root = Path(directory)
    rows = labels_by_id(root / "labels.csv", path_column="path", require_energy=False)
    examples = [featurize(row.file, grid, id=rid)
                for rid, row in tqdm(rows.items(), desc=f"featurize {root.name}", unit="file", disable=None)]
    return stack_examples(examples, rows, grid.n_points)


def load_dir_arrays(directory: str | Path, grid: EnergyGrid = PAPER_GRID) -> dict[str, np.ndarray]:
    """Featurize every row of `directory/labels.csv` (cached per process while the CSV is unchanged)."""
    labels = Path(directory) / "labels.csv"
    return _load_dir_cached(str(Path(directory).resolve()), labels.stat().st_mtime, grid)


def select_split(arrays: dict[str, np.ndarray], split: str, fractions: tuple[float, float, float] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """The examples of one split ('train', 'validation', 'test' or 'all') by `split_of(chemsys)`.

    `fractions` (of chemical systems) and `seed` are passed to `split_of` (default 0.8/0.1/0.1, 0).
    """
    if split == "all":
        return arrays
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    fractions = tuple(fractions) if fractions else DEFAULT_FRACTIONS
    try:
        keep = np.array([split_of(c, fractions, seed) == split for c in arrays["chemsys"]], dtype=bool)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return {k: v[keep] for k, v in arrays.items()}


def check_finite(arrays: dict, source: str = "", input_names: Sequence[str] = INPUT_NAMES) -> None:
    """Refuse NaN/inf in the model inputs (`input_names`: the IS-DOS fields and any energy inputs),
    naming the first offending id and input; then `check_values` (negative DOS, compositions that
    are not fractions)."""
    for key in input_names:
        if key not in arrays:
            raise UserError(f"{source + ': ' if source else ''}missing model input '{key}' "
                            f"(the model takes {', '.join(input_names)})")
        a = np.asarray(arrays[key])
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            idx = np.flatnonzero(bad)
            ids = [_str(arrays["id"][i]) for i in idx[:3]] if "id" in arrays else [str(i) for i in idx[:3]]
            more = f" and {len(idx) - 3} more" if len(idx) > 3 else ""
            where = f"{source}: " if source else ""
            fix = "re-featurize those calculations" if key in INPUT_NAMES else \
                ENERGY_FIX.get(key, f"give every example a finite {key} (eV/atom)")
            raise UserError(f"{where}input '{key}' holds NaN or inf for id {', '.join(ids)}{more}; {fix}")
    check_values(arrays, source)


def check_values(arrays: dict, source: str = "") -> None:
    """Refuse model inputs that are finite but not IS-DOS: negative DOS beyond rounding, or
    compositions that are not atomic fractions (negative, or not summing to 1), naming the id."""
    where = f"{source}: " if source else ""

    def ids(mask) -> str:
        idx = np.flatnonzero(mask)
        names = [_str(arrays["id"][i]) if "id" in arrays else str(i) for i in idx[:3]]
        return ", ".join(names) + (f" and {len(idx) - 3} more" if len(idx) > 3 else "")

    for key in ("dos_up", "dos_down"):
        a = np.asarray(arrays[key], dtype=np.float32).reshape(len(arrays[key]), -1)
        low = a.min(axis=1) if len(a) else np.zeros(0)
        bad = low < negative_dos_floor(a, axis=1)  # the featurizer's rule (esnet_tf.isdos)
        if bad.any():
            raise UserError(f"{where}input '{key}' holds negative DOS (down to {low.min():.3g} states/eV/atom) "
                            f"for id {ids(bad)}; re-featurize those calculations")
    comp = np.asarray(arrays["composition"], dtype=np.float64)
    if len(comp):
        bad = (comp.min(axis=1) < 0) | (np.abs(comp.sum(axis=1) - 1.0) > COMPOSITION_TOLERANCE)
        if bad.any():
            raise UserError(f"{where}input 'composition' is not a set of atomic fractions (>= 0, sum 1) for id "
                            f"{ids(bad)} (sums {', '.join(f'{x:.4g}' for x in comp.sum(axis=1)[bad][:3])}); "
                            "re-featurize those calculations")


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def check_shapes(arrays: dict, n_points: int = PAPER_GRID.n_points, source: str = "") -> None:
    """Refuse missing inputs or wrong shapes with a message listing the expected ones."""
    expected = {"dos_up": (n_points, N_ORBITALS), "dos_down": (n_points, N_ORBITALS), "composition": (N_ELEMENTS,)}
    want = ", ".join(f"{k} (N, {', '.join(map(str, s))})" for k, s in expected.items())
    where = f"{source}: " if source else ""
    for key, shape in expected.items():
        if key not in arrays:
            raise UserError(f"{where}missing input '{key}'; ESNet needs {want}")
        got = tuple(np.shape(arrays[key]))
        if got[1:] != shape:
            raise UserError(f"{where}input '{key}' has shape {got}, expected (N, {', '.join(map(str, shape))}); "
                              f"ESNet needs {want}")
    n = {len(arrays[k]) for k in expected}
    if len(n) != 1:
        raise UserError(f"{where}inputs have different numbers of examples: "
                          + ", ".join(f"{k} {len(arrays[k])}" for k in expected))


# ---------------------------------------------------------------- tf.data

def load_split(spec: str, split: str, *, labels: str | None = None, data_dir: str | None = None,
               split_fractions: tuple[float, float, float] | None = None, split_seed: int = 0):
    """Unbatched `tf.data.Dataset` of example dicts for one split of a dataset spec (see module doc).

    `split_fractions` / `split_seed` apply to .npz and labels-directory sources (TFDS datasets
    carry their own splits).
    """
    import tensorflow as tf

    if is_npz_spec(spec) or is_labels_dir(spec):
        arrays = load_arrays(spec, labels=labels)
        return tf.data.Dataset.from_tensor_slices(select_split(arrays, split, split_fractions, split_seed))
    if Path(spec).is_dir() and any(Path(spec).glob("*.gpawdos.npz")):
        raise UserError(f"{spec}: holds calculation files but no labels.csv (columns id, path, "
                          "formation_energy_per_atom)")
    try:
        from esnet_tf.dataset import load_tfds_split
    except ImportError as exc:
        raise UserError(f"{spec}: not an .npz or a labels directory, and the TFDS loader is unavailable ({exc})")
    return load_tfds_split(spec, split, data_dir=data_dir)


def load_arrays(spec: str, *, labels: str | None = None, require_labels: bool = True) -> dict[str, np.ndarray]:
    """All examples of an .npz or labels-directory spec as numpy arrays (checked for shape)."""
    if is_labels_dir(spec):
        arrays = load_dir_arrays(spec)
    elif is_npz_spec(spec):
        arrays = load_npz_arrays(spec, labels, require_labels=require_labels)
    else:
        raise UserError(f"{spec}: expected an .npz of `esnet featurize` or a directory with labels.csv")
    check_shapes(arrays, source=str(spec))
    return arrays


def to_model_io(example: dict, input_names: Sequence[str] = INPUT_NAMES):
    """(inputs dict, targets dict) from a batch of example dicts (a `tf.data` map function).

    Inputs beyond the IS-DOS fields (named scalar energies, eV/atom) become (batch, 1) float32.
    """
    import tensorflow as tf

    inputs = {k: tf.cast(example[k], tf.float32) for k in input_names}
    for k in input_names:
        if k not in INPUT_NAMES:
            inputs[k] = tf.reshape(inputs[k], (-1, 1))
    target = tf.reshape(tf.cast(example[OUTPUT_NAME], tf.float32), (-1, 1))
    return inputs, {OUTPUT_NAME: target}


def training_pipeline(ds, batch_size: int = 64, *, shuffle: bool = True, seed: int = 0,
                      cache: str = "memory", shuffle_buffer: int = 10_000,
                      input_names: Sequence[str] = INPUT_NAMES):
    """examples -> cached, shuffled (each epoch), batched, prefetched (inputs, targets) pairs.

    `cache`: 'memory', 'none', or a file prefix for `Dataset.cache(filename)`. `input_names`: the
    model inputs taken from each example (`model_input_names`; extra ones are scalars, eV/atom).
    """
    import tensorflow as tf

    keys = (*input_names, OUTPUT_NAME)
    ds = ds.map(lambda e: {k: e[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
    if cache == "memory":
        ds = ds.cache()
    elif cache and cache != "none":
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(cache))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(functools.partial(to_model_io, input_names=tuple(input_names)),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def iterate_numpy(ds, batch_size: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Batches of an example dataset as numpy dicts (strings decoded)."""
    for batch in ds.batch(batch_size).as_numpy_iterator():
        for k in STRING_KEYS:
            if k in batch:
                batch[k] = np.array([_str(x) for x in batch[k]], dtype=str)
        yield batch


def scan(ds, source: str = "", *, statistics: bool = False, batch_size: int = 256,
         input_names: Sequence[str] = INPUT_NAMES, digest: Any = None) -> tuple[int, dict | None]:
    """One streaming pass over a split: count examples, refuse NaN/inf inputs or missing targets
    (naming the id), and with `statistics` fit the input normalisation (`model.dos_statistics`).

    `digest` (a `hashlib` object) is updated with every example's inputs, target and id, in order:
    the fingerprint that tells one dataset from another (a resumed run checks it).
    """
    from esnet_tf.model import dos_statistics

    count = [0]
    keys = (*input_names, OUTPUT_NAME)

    def checked():
        for batch in iterate_numpy(ds, batch_size):
            n = len(batch[OUTPUT_NAME])
            ids = batch["id"] if "id" in batch else np.array([str(count[0] + i) for i in range(n)])
            check_finite({**batch, "id": ids}, source, input_names)
            missing = ~np.isfinite(np.asarray(batch[OUTPUT_NAME], dtype=np.float64).reshape(n, -1)).all(axis=1)
            if missing.any():
                bad = [str(ids[i]) for i in np.flatnonzero(missing)[:3]]
                raise UserError(f"{source}: formation_energy_per_atom is missing or not finite for id "
                                  f"{', '.join(bad)}")
            if digest is not None:
                for k in keys:
                    digest.update(np.ascontiguousarray(batch[k], dtype=np.float32).tobytes())
                digest.update("\0".join(map(str, ids)).encode())
            count[0] += n
            yield batch

    if statistics:
        try:
            stats = dos_statistics(checked())
        except ValueError:
            raise UserError(f"{source}: the training split is empty") from None
        return count[0], stats
    for _ in checked():
        pass
    return count[0], None


class TrainingData(NamedTuple):
    """The train and validation examples of one run, scanned (`train_and_validation`)."""

    train: Any              #: unbatched tf.data.Dataset of example dicts
    validation: Any         #: unbatched tf.data.Dataset of example dicts
    n_train: int
    n_validation: int
    statistics: dict        #: input normalisation fitted on train (`model.dos_statistics`)
    fingerprint: str        #: sha256 of both splits' inputs, targets and ids (in order)
    source: str             #: the dataset spec, or "arrays" / "tf.data" for examples given directly


def train_and_validation(spec: str | None, split_options: dict, purpose: str, *, train_data: Any = None,
                         validation_data: Any = None, input_names: Sequence[str] = INPUT_NAMES) -> TrainingData:
    """The train and validation splits, scanned once (checked, counted, fingerprinted; statistics of train).

    Either `spec` (a dataset spec, split by `split_options`) or both `train_data` and
    `validation_data` (examples given directly: a dict of numpy arrays or an unbatched
    `tf.data.Dataset` of example dicts, see `examples_dataset`). An empty validation split is
    refused, naming `purpose` (what needs it: "model selection", "the tuning objective").
    """
    given = train_data is not None or validation_data is not None
    if given and spec:
        raise UserError(f"give either a dataset ({spec}) or train/validation examples, not both")
    if given:
        if train_data is None or validation_data is None:
            raise UserError(f"examples given directly need both the train and the validation examples; "
                            f"{purpose} needs validation data")
        source = "tf.data" if _is_tf_dataset(train_data) else "arrays"
        train_ds = examples_dataset(train_data, f"{source} [train]")
        val_ds = examples_dataset(validation_data, f"{source} [validation]")
    elif spec:
        source = str(spec)
        train_ds = load_split(source, "train", **split_options)
        val_ds = load_split(source, "validation", **split_options)
    else:
        raise UserError("--dataset is required (an .npz with --labels, a labels directory, or a TFDS name), "
                        "or train and validation examples")
    digest = hashlib.sha256()
    n_train, stats = scan(train_ds, f"{source} [train]", statistics=True, input_names=input_names, digest=digest)
    digest.update(b"|validation|")
    n_val, _ = scan(val_ds, f"{source} [validation]", input_names=input_names, digest=digest)
    if n_val == 0:
        raise UserError(f"{source}: the validation split is empty; {purpose} needs validation data")
    return TrainingData(train_ds, val_ds, n_train, n_val, stats, digest.hexdigest(), source)


# ---------------------------------------------------------------- examples given directly

def _is_tf_dataset(obj: Any) -> bool:
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(obj, tf.data.Dataset)


def example_arrays(arrays: Mapping[str, Any], source: str = "arrays") -> dict[str, np.ndarray]:
    """Examples given as arrays, checked and completed: the example dict layout of this module.

    Needs dos_up, dos_down (N, n_points, 9) states/eV/atom, composition (N, 118) and
    formation_energy_per_atom (N,) or (N, 1) eV/atom. Optional: id, formula, chemsys (N,) text
    (default: the row number, ''), e_above_hull (N,) eV/atom (default NaN). Every other key passes
    through unchanged in meaning: a numeric (N,) or (N, 1) array becomes (N, 1) float32, a named
    scalar input such as `is_formation_energy_per_atom` (eV/atom) that a model takes when its
    name is one of the model's inputs; other numeric arrays keep their shape, text stays text.
    """
    if not isinstance(arrays, Mapping):
        raise UserError(f"{source}: examples must be a dict of numpy arrays or a tf.data.Dataset, "
                        f"not {type(arrays).__name__}")
    need = (*INPUT_NAMES, OUTPUT_NAME)
    missing = [k for k in need if k not in arrays]
    if missing:
        raise UserError(f"{source}: missing array(s) {', '.join(missing)}; examples need {', '.join(need)} "
                        "(IS-DOS states/eV/atom, atomic fractions, eV/atom)")
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype == object and k in STRING_KEYS:
            a = a.astype(str)
        elif a.dtype == object or (k in need and not np.issubdtype(a.dtype, np.number)):
            raise UserError(f"{source}: array '{k}' holds {a.dtype} values; give numbers (text only for "
                            f"{', '.join(STRING_KEYS)})")
        out[str(k)] = a
    dos = out["dos_up"]
    if dos.ndim != 3:
        raise UserError(f"{source}: 'dos_up' has shape {dos.shape}, expected (N, n_points, {N_ORBITALS})")
    check_shapes(out, dos.shape[1], source=source)
    n = len(dos)
    for k, a in out.items():
        if a.ndim == 0 or len(a) != n:
            raise UserError(f"{source}: array '{k}' has {a.shape[0] if a.ndim else 'no'} rows, the inputs {n}; "
                            "give every array one row per example")
    for k in ("dos_up", "dos_down", "composition"):
        out[k] = out[k].astype(np.float32)
    target = out[OUTPUT_NAME]
    if target.shape not in ((n,), (n, 1)) or not np.issubdtype(target.dtype, np.number):
        raise UserError(f"{source}: '{OUTPUT_NAME}' must be numbers of shape (N,) or (N, 1) eV/atom, "
                        f"got {target.dtype} {target.shape}")
    out[OUTPUT_NAME] = target.reshape(n).astype(np.float32)
    out.setdefault("id", np.array([str(i) for i in range(n)]))
    for k in ("formula", "chemsys"):
        out.setdefault(k, np.full(n, "", dtype=str))
    for k in STRING_KEYS:
        out[k] = out[k].astype(str)
    out["e_above_hull"] = np.asarray(out.get("e_above_hull", np.full(n, np.nan)), dtype=np.float32).reshape(n)
    for k, a in out.items():
        if k in (*INPUT_NAMES, *LABEL_KEYS, *STRING_KEYS) or not np.issubdtype(a.dtype, np.number):
            continue
        out[k] = a.reshape(n, 1).astype(np.float32) if a.shape in ((n,), (n, 1)) else a
    return out


def examples_dataset(examples: Any, source: str = "arrays"):
    """An unbatched `tf.data.Dataset` of example dicts from examples given directly.

    `examples`: a dict of numpy arrays (checked and completed by `example_arrays`), or an unbatched
    `tf.data.Dataset` whose elements are dicts with at least dos_up (n_points, 9), dos_down,
    composition (118,) and formation_energy_per_atom (eV/atom); its values are checked when scanned.
    """
    import tensorflow as tf

    if isinstance(examples, tf.data.Dataset):
        spec = examples.element_spec
        if not isinstance(spec, Mapping):
            raise UserError(f"{source}: a tf.data.Dataset of example dicts is needed (keys dos_up, dos_down, "
                            f"composition, {OUTPUT_NAME}), got elements {spec}")
        missing = [k for k in (*INPUT_NAMES, OUTPUT_NAME) if k not in spec]
        if missing:
            raise UserError(f"{source}: dataset elements lack {', '.join(missing)}")
        if spec["dos_up"].shape.rank != 2:
            raise UserError(f"{source}: 'dos_up' elements have shape {spec['dos_up'].shape}, expected "
                            f"(n_points, {N_ORBITALS}); give an unbatched dataset (ds.unbatch())")
        return examples
    return tf.data.Dataset.from_tensor_slices(example_arrays(examples, source))
