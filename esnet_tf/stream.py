"""Streaming `esnet predict`: the inputs in chunks, read and featurized ahead of the model, rows
written as they come, a killed run resumed; the same rows as one chunk.

- Plan (`plan_inputs`): the INPUTs become an ordered list of items, in the row order of
  `esnet_tf.predict.load_inputs`: the rows of every `.npz` features file and labels directory in the
  order given, then the DFT files (walked and checked as `featurize.featurize_paths` does).
- Chunks of `chunk_size` items are read `PREFETCH` chunks ahead of the model: DFT files and labels
  rows in worker processes (spawned, single-threaded, TensorFlow never imported there), each worker
  part (a batch of items) featurized and stacked there (`featurize_part`: the parent receives arrays,
  not an object per example); `.npz` rows by sequential reads of the zip members in a reader thread
  (`NpzRows`: only the chunk's rows are ever inflated, so a features file larger than memory
  streams; object arrays are refused, nothing is unpickled).
- The model sees the rows in batches of `batch_size` consecutive rows across chunk boundaries (the
  remainder waits for the next chunk): the same batches, hence the same numbers, as one chunk.
- Partial state beside `--out`: `<out>.partial/` holds rows.csv (the rows predicted so far, with
  the item and source of each), failures.txt and journal.json (fingerprint of the command, items
  done, byte sizes of the two files), committed after every model call. The same command again
  resumes from the journal (nothing predicted twice); another command starts over. At the end one
  sequential pass (`finalize`) gives the ids `featurize.unique_ids` gives (colliding path-derived
  ids re-derived, later duplicates left out), drops truth columns nobody has, writes `--out`
  atomically and removes the partial directory: an `--out` that exists is complete.

Memory: the chunk being predicted and `PREFETCH` more, in parts passed to the model without copies
(only a batch split across parts is joined); per row only the id and source are kept (resume, ids).
`esnet_tf.predict_beam` runs the same plan, chunks and rows as an Apache Beam pipeline.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import DOSInputError, UserError
from esnet_tf.isdos import DOMAIN_COLUMN, PREDICTION_COLUMN, PREDICTION_STD_COLUMN, EnergyGrid

#: chunks read ahead of the one the model is on (each `chunk_size` items): one is enough when reading a
#: chunk takes less than predicting one, and each costs memory (~55 MB of IS-DOS per 512 rows)
PREFETCH = 1
#: examples per chunk by default (2 batches of the default 256: ~55 MB of IS-DOS per chunk)
DEFAULT_CHUNK_SIZE = 512
#: the suffix of the partial-state directory beside `--out`
PARTIAL_SUFFIX = ".partial"
TRUTH_KEYS = ("formation_energy_per_atom", "e_above_hull")
#: row bookkeeping columns of rows.csv, before the CSV's own columns
_BOOK = ("item", "source")
_JOURNAL_VERSION = 1
_BIG = ("dos_up", "dos_down", "composition")
_SMALL = ("id", "formula", "chemsys", "code", "energies", "is_energy_per_atom", "is_formation_energy_per_atom")


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class Segment:
    """Consecutive items of one kind: 'npz' (rows of a features file), 'labels' (rows of a labels
    directory: (id, file) each) or 'dft' (DFT files: (path, walk root or '') each)."""

    kind: str
    spec: str
    n: int
    items: tuple = ()


@dataclass
class Plan:
    """What a streaming run reads, in row order: `segments`, and the inputs refused while planning
    (walk errors, empty directories, a calculation given twice; one line each)."""

    segments: list[Segment]
    grid: EnergyGrid
    labels: str | None = None
    references: dict[str, float] | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return sum(s.n for s in self.segments)

    def offsets(self) -> list[int]:
        """The global index of each segment's first item."""
        out, at = [], 0
        for s in self.segments:
            out.append(at)
            at += s.n
        return out

    def chunks(self, chunk_size: int, start: int = 0) -> Iterator[tuple[int, int, int]]:
        """(segment index, first, stop) item ranges inside segments, from global item `start` on."""
        for k, (seg, off) in enumerate(zip(self.segments, self.offsets())):
            lo = max(0, start - off)
            for a in range(lo, seg.n, chunk_size):
                yield k, a, min(seg.n, a + chunk_size)

    def digest(self) -> str:
        """A hash of the items (paths, and size / mtime of the features and labels files)."""
        h = hashlib.sha256()
        for s in self.segments:
            stat = _stat(s.spec if s.kind == "npz" else Path(s.spec) / "labels.csv") if s.kind != "dft" else ""
            h.update(json.dumps([s.kind, s.spec, s.n, stat]).encode())
            for it in s.items:
                h.update(("\0".join(map(str, it)) + "\n").encode())
        return h.hexdigest()


def _stat(path: str | Path) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def plan_inputs(paths: Sequence[str], labels: str | None, grid: EnergyGrid, *,
                references: dict[str, float] | None = None) -> Plan:
    """The plan of `esnet predict`'s INPUTs (as `esnet_tf.predict.load_inputs` reads them).

    `.npz` features: their arrays are checked (members, grid, shapes) without inflating the IS-DOS.
    A missing INPUT raises FileNotFoundError; a bad features file `UserError` naming it.
    """
    from esnet_tf.data import is_labels_dir
    from esnet_tf.labels import labels_by_id
    from esnet_tf.predict import _check_npz_grid, dft_files_of

    segments: list[Segment] = []
    raw: list[str] = []
    for spec in paths:
        if spec.endswith(".npz") and not spec.endswith(".gpawdos.npz"):
            with NpzRows(spec) as reader:
                _check_npz_grid(spec, reader.small.get("energies"), grid)
                if reader.n_points != grid.n_points:
                    raise UserError(f"{spec}: features of {reader.n_points} energy points, the model takes "
                                    f"{grid.n_points}: re-featurize with `esnet featurize --n-points {grid.n_points}`")
                segments.append(Segment("npz", spec, reader.n))
        elif is_labels_dir(spec):
            rows = labels_by_id(Path(spec) / "labels.csv", path_column="path", require_energy=False)
            segments.append(Segment("labels", spec, len(rows), tuple((rid, r.file) for rid, r in rows.items())))
        else:
            raw += dft_files_of(spec)
    failures: list[str] = []
    if raw:
        jobs, failures = _plan_files(raw)
        if jobs:
            segments.append(Segment("dft", "DFT files", len(jobs), PathPairs(jobs)))
    return Plan(segments, grid, labels, dict(references) if references else None, failures)


def _plan_files(paths: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, walk root or '') of every DFT file, and the refusals, as `featurize_paths` makes them."""
    from esnet_tf.featurize import collect_inputs
    from esnet_tf.readers import SUPPORTED

    walk_errors: list[DOSInputError] = []
    inputs = collect_inputs([str(p) for p in paths], [], errors=walk_errors)
    failures = [str(e) for e in walk_errors]
    for p in map(Path, paths):  # a directory that holds nothing readable is a failure, not silence
        if p.is_dir() and not any(root == p or f == p for f, root in inputs):
            failures.append(str(DOSInputError(p, "no DFT output found in this directory", f"expected {SUPPORTED}")))
    seen: dict[str, Path] = {}
    real_dirs: dict[str, str] = {}
    jobs = []
    for path, root in inputs:
        real = _real_path(str(path), real_dirs)
        if real in seen:  # the same calculation twice would become two examples with one id
            failures.append(str(DOSInputError(path, f"given twice (also as {seen[real]})",
                                              "pass each calculation once")))
            continue
        seen[real] = path
        jobs.append((str(path), str(root) if root is not None else ""))
    return jobs, failures


def _real_path(path: str, real_dirs: dict[str, str]) -> str:
    """`os.path.realpath(path)` (what `Path.resolve()` gives), with the folders' real paths cached in
    `real_dirs`: one lstat a file instead of one a path component."""
    folder, name = os.path.split(path)
    if not name or name in (".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    real = real_dirs.get(folder)
    if real is None:
        real = real_dirs[folder] = os.path.realpath(folder or ".")
    return os.path.join(real, name)


class PathPairs(Sequence):
    """A plan's (path, walk root or '') pairs, held as one string of paths and an index of roots: a tuple
    of string pairs costs ~1 KB a file once planning's temporaries are freed around it (146 MiB for
    150,000 files), this ~0.1 KB. Indexing and slicing give the pairs (slices as tuples)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        roots: dict[str, int] = {}
        ix = np.fromiter((roots.setdefault(r, len(roots)) for _, r in pairs), np.int32, len(pairs))
        lengths = np.fromiter((len(p) for p, _ in pairs), np.int64, len(pairs))
        self._text = "".join(p for p, _ in pairs)
        self._ends = np.cumsum(lengths)
        self._roots = list(roots)
        self._ix = ix

    def __len__(self) -> int:
        return len(self._ix)

    def _pair(self, i: int) -> tuple[str, str]:
        start = int(self._ends[i - 1]) if i else 0
        return self._text[start:int(self._ends[i])], self._roots[self._ix[i]]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self._pair(k) for k in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._pair(i)


# ---------------------------------------------------------------- reading

class NpzRows:
    """Rows of an `esnet featurize` `.npz`, read chunk by chunk without pickle.

    The small per-row arrays (id, formula, code, energies...) are read whole (bounded by
    `readers.limits.load_npz`); dos_up, dos_down and composition are read row range by row range
    from their zip members (a forward read continues where the last one stopped, so a sequential
    pass inflates each member once; a backward one reopens it). Errors name the file and the fix.
    """

    def __init__(self, path: str | Path) -> None:
        from esnet_tf.readers.limits import load_npz, npz_members

        self.path = Path(path)
        members = npz_members(self.path)
        for key in (*_BIG, "id"):
            if key not in members:
                raise DOSInputError(self.path, f"missing array '{key}'", "write it with `esnet featurize --out`")
        self.small = load_npz(self.path, _SMALL, fraction=0.5)
        self.n = len(self.small["id"])
        self._zf = zipfile.ZipFile(self.path)
        self._members = members
        self._open: dict[str, Any] = {}
        self._whole: dict[str, np.ndarray] = {}  # Fortran-ordered members, read whole
        self.shapes: dict[str, tuple] = {}
        for key in _BIG:
            self._member(key)
            if self.shapes[key][0] != self.n:
                raise DOSInputError(self.path, f"array '{key}' has {self.shapes[key][0]} rows, 'id' {self.n}",
                                    "write it again with `esnet featurize --out`")
        self.n_points = int(self.shapes["dos_up"][1]) if len(self.shapes["dos_up"]) == 3 else -1

    def _member(self, key: str):
        """(handle, header end, dtype, row bytes, next row) of `key`, opened at its first row."""
        from esnet_tf.readers.limits import read_npy_header

        info = self._members[key]
        try:
            fh = self._zf.open(info)
            shape, fortran, dtype = read_npy_header(fh, key)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
            raise self._error(exc) from None
        if dtype.hasobject:
            raise DOSInputError(self.path, f"member {key!r} holds Python objects (pickle)",
                                "esnet-tf never unpickles; write it again with esnet-tf")
        if not shape:
            raise DOSInputError(self.path, f"member {key!r} is not an array of rows",
                                "write it again with `esnet featurize --out`")
        if fortran:  # rows are not contiguous (numpy writes a one-row stack of a transposed DOS so): read it whole
            from esnet_tf.readers.limits import load_npz

            fh.close()
            self._whole[key] = np.ascontiguousarray(load_npz(self.path, (key,), fraction=0.5)[key])
            self.shapes[key] = tuple(self._whole[key].shape)
            self._open[key] = [None, 0, dtype, 0, 0]
            return self._open[key]
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if row * shape[0] > info.file_size:
            raise DOSInputError(self.path, f"member {key!r} declares more data than it holds",
                                "the file is corrupt: write it again")
        self.shapes[key] = tuple(shape)
        self._open[key] = [fh, fh.tell(), dtype, row, 0]
        return self._open[key]

    def _error(self, exc: Exception) -> DOSInputError:
        return DOSInputError(self.path, f"cannot read features npz ({type(exc).__name__}: {exc})",
                             "write it with `esnet featurize --out`")

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """dos_up, dos_down, composition of rows [start, stop), and the small arrays of those rows."""
        from esnet_tf.readers.limits import read_exact

        out: dict[str, np.ndarray] = {}
        for key in _BIG:
            if key in self._whole:
                out[key] = self._whole[key][start:stop]
                continue
            state = self._open[key]
            if state[4] > start:  # backwards: reopen
                state[0].close()
                state = self._member(key)
            fh, head, dtype, row, _ = state
            try:
                fh.seek(head + start * row)
                buf = read_exact(fh, (stop - start) * row, key)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
                raise self._error(exc) from None
            state[4] = stop
            out[key] = np.frombuffer(buf, dtype=dtype).reshape((stop - start, *self.shapes[key][1:]))
        for key, value in self.small.items():
            if key != "energies":
                out[key] = value[start:stop]
        return out

    def close(self) -> None:
        for state in self._open.values():
            if state[0] is not None:
                state[0].close()
        self._zf.close()

    def __enter__(self) -> "NpzRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def npz_chunk(reader: NpzRows, start: int, stop: int, label_rows: dict) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a features file as `load_inputs` gives them (truths and energy columns
    of `label_rows` joined by id)."""
    from esnet_tf.featurize import fill_energies

    part = reader.read(start, stop)
    n = stop - start
    arrays = {k: part[k] for k in _BIG}
    arrays["id"] = part["id"].astype(str)
    for key in ("formula", "chemsys", "code"):
        arrays[key] = part[key].astype(str) if key in part else np.full(n, "")
    for key in TRUTH_KEYS:
        arrays[key] = np.array([label_rows.get(i, {}).get(key, np.nan) for i in arrays["id"]], np.float32)
    for key in ("is_energy_per_atom", "is_formation_energy_per_atom"):
        arrays[key] = (np.asarray(part[key], np.float32).reshape(-1, 1) if key in part
                       else np.full((n, 1), np.nan, np.float32))
    fill_energies(arrays, label_rows)  # a labels column of that name wins over the .npz value
    arrays["source"] = np.full(n, "")
    return arrays


def npz_label_rows(spec: str, labels: str | None) -> dict:
    """The labels of a features file: `labels`, else a labels.csv beside it, else none."""
    from esnet_tf.labels import labels_by_id

    if labels is None and (Path(spec).parent / "labels.csv").is_file():
        labels = str(Path(spec).parent / "labels.csv")
    return labels_by_id(labels, path_column=None, require_energy=False) if labels is not None else {}


def featurize_job(job: tuple) -> tuple[list | None, tuple | None]:
    """One DFT file or labels row -> (examples, None) or (None, (path, problem, fix)); runs in a worker.

    `job`: ('dft', path, walk root or '', grid, references) or ('labels', file, id, grid, None)."""
    from esnet_tf.featurize import _featurize_file, featurize

    kind, path, extra, grid, references = job
    if kind == "dft":
        return _featurize_file((Path(path), Path(extra) if extra else None, grid, references))
    try:
        try:
            return [featurize(path, grid, id=extra)], None
        except (DOSInputError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a reader library failing on a malformed file: one line
            raise DOSInputError(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                                "the file looks corrupt or incomplete") from None
    except DOSInputError as exc:
        return None, (exc.path, exc.problem, exc.fix)


def chunk_jobs(plan: Plan, seg: Segment, start: int, stop: int) -> list[tuple]:
    """The `featurize_job` jobs of items [start, stop) of a 'dft' or 'labels' segment."""
    if seg.kind == "dft":
        return [("dft", p, root, plan.grid, plan.references) for p, root in seg.items[start:stop]]
    return [("labels", f, rid, plan.grid, None) for rid, f in seg.items[start:stop]]


def examples_chunk(plan: Plan, seg: Segment, first_item: int, results: Sequence[tuple],
                   truths: dict | None) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """Arrays of the featurized `results` of items first_item, first_item + 1, ... and the failures
    ((item, line) each). `truths`: labels rows by id (a labels directory's own, or `--labels` for DFT
    files). A labels row that fails raises (as `load_inputs` does)."""
    arrays, failures, fatal = _stack_results(seg.kind, plan.grid.n_points, first_item, results, truths)
    if fatal is not None:
        raise DOSInputError(*fatal)
    return arrays, failures


def _stack_results(kind: str, n_points: int, first_item: int, results: Sequence[tuple], truths: dict | None
                   ) -> tuple[dict[str, np.ndarray] | None, list[tuple[int, str]], tuple | None]:
    """`examples_chunk`'s (arrays, failures), and the error of the first labels row that failed (then no
    arrays): the caller raises it."""
    from esnet_tf.data import stack_examples

    examples, items, failures = [], [], []
    for k, (found, error) in enumerate(results):
        if error is not None:
            if kind == "labels":
                return None, [], error
            failures.append((first_item + k, str(DOSInputError(*error))))
            continue
        examples += found
        items += [first_item + k] * len(found)
    arrays = stack_examples(examples, truths, n_points)
    arrays["item"] = np.asarray(items, np.int64)
    arrays["source"] = np.array([e.source if kind == "dft" else "" for e in examples], dtype=str)
    arrays.pop("chemsys", None)
    return arrays, failures, None


#: a worker process's labels rows by segment (`_init_worker`): sent once, not with every part
_WORKER_TRUTHS: dict[int, dict | None] = {}


def _init_worker(truths: dict[int, dict | None]) -> None:
    _WORKER_TRUTHS.clear()
    _WORKER_TRUTHS.update(truths)


def featurize_part(task: tuple) -> tuple[dict[str, np.ndarray] | None, list[tuple[int, str]], tuple | None]:
    """One part of a chunk, read, featurized and stacked in a worker: task (kind, segment index, first item,
    `featurize_job` jobs, energy points) -> `_stack_results` with the worker's labels rows of that segment,
    the arrays cut to `ROW_KEYS`. The parent receives a few arrays (one copy through the pipe) instead of
    an object per example that it would unpickle and stack while the model waits."""
    kind, k, first_item, jobs, n_points = task
    arrays, failures, fatal = _stack_results(kind, n_points, first_item, [featurize_job(j) for j in jobs],
                                             _WORKER_TRUTHS.get(k))
    return (None if arrays is None else {key: arrays[key] for key in ROW_KEYS}), failures, fatal


def segment_truths(plan: Plan, seg: Segment) -> dict | None:
    """The labels rows (by id) a segment's rows take their truths from: a features file's labels
    (`npz_label_rows`), a labels directory's own labels.csv, `--labels` for DFT files."""
    from esnet_tf.labels import labels_by_id

    if seg.kind == "npz":
        return npz_label_rows(seg.spec, plan.labels)
    if seg.kind == "labels":
        return labels_by_id(Path(seg.spec) / "labels.csv", path_column="path", require_energy=False)
    return labels_by_id(plan.labels, path_column=None, require_energy=False) if plan.labels else None


def read_chunk(plan: Plan, k: int, start: int, stop: int, truths: dict | None, *,
               npz: NpzRows | None = None) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """Items [start, stop) of segment `k` read and featurized here, serially: (arrays, failures).
    `truths`: `segment_truths` of the segment; `npz`: an open reader of a features segment."""
    seg = plan.segments[k]
    first = plan.offsets()[k] + start
    if seg.kind == "npz":
        reader = NpzRows(seg.spec) if npz is None else npz
        try:
            arrays = npz_chunk(reader, start, stop, truths or {})
        finally:
            if npz is None:
                reader.close()
        arrays["item"] = np.arange(first, first + stop - start, dtype=np.int64)
        return arrays, []
    results = [featurize_job(j) for j in chunk_jobs(plan, seg, start, stop)]
    return examples_chunk(plan, seg, first, results, truths)


# ---------------------------------------------------------------- rows

def csv_columns(has_std: bool, has_interval: bool, has_domain: bool) -> list[str]:
    """The predictions CSV's columns before dropping truths nobody has (DESIGN.md section 6)."""
    from esnet_tf.predict import PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN

    return ["id", "formula", PREDICTION_COLUMN] + ([PREDICTION_STD_COLUMN] if has_std else []) \
        + ([PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN] if has_interval else []) \
        + ([DOMAIN_COLUMN] if has_domain else []) + list(TRUTH_KEYS)


def _f6(v: float) -> str:
    v = float(v)
    return f"{v:.6f}" if np.isfinite(v) else ""


def table_rows(arrays: dict, table) -> list[list[str]]:
    """rows.csv rows (item, source, then `csv_columns`) of a `PredictionTable` of `arrays`."""
    from esnet_tf.predict import PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN

    cols = table.columns
    out = []
    for i in range(len(table)):
        row = [str(int(arrays["item"][i])), str(arrays["source"][i]), cols["id"][i], cols["formula"][i],
               f"{cols[PREDICTION_COLUMN][i]:.6f}"]
        if PREDICTION_STD_COLUMN in cols:
            row.append(f"{cols[PREDICTION_STD_COLUMN][i]:.6f}")
        if PREDICTION_LOWER_COLUMN in cols:
            row += [f"{cols[PREDICTION_LOWER_COLUMN][i]:.6f}", f"{cols[PREDICTION_UPPER_COLUMN][i]:.6f}"]
        if DOMAIN_COLUMN in cols:
            row.append(cols[DOMAIN_COLUMN][i])
        row += [_f6(arrays[k][i]) if k in arrays else "" for k in TRUTH_KEYS]
        out.append(row)
    return out


def predict_rows(model, arrays: dict, *, batch_size: int, strict: bool, references: str | None,
                 uip=None) -> list[list[str]]:
    """Predict stacked `arrays` with an `ESNetModel` and give their rows.csv rows. `uip`: the
    `esnet_tf.uip.UIPInputs` of `--uip` (CHGNet's formation energy of each row by id), for a model that takes it."""
    from esnet_tf.predict import check_energy_inputs

    arrays = model.with_uip(arrays, uip)
    check_energy_inputs(arrays, model.predictor.energy_inputs, model.name, references)
    table = model.predict_arrays(arrays, batch_size=batch_size, strict=strict)
    return table_rows(arrays, table)


#: the arrays a chunk carries to the model and the rows
ROW_KEYS = (*_BIG, "id", "formula", "code", *TRUTH_KEYS, "is_energy_per_atom", "is_formation_energy_per_atom",
            "item", "source")


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in ROW_KEYS}


def _one_part(arrays: dict, fails: list) -> tuple[list[dict], list[tuple[int, str]]]:
    """A chunk read whole (a features file's rows, or DFT files read here): one part of `ROW_KEYS`."""
    return [{k: arrays[k] for k in ROW_KEYS}], list(fails)


def _joined_parts(results: list[tuple]) -> tuple[list[dict], list[tuple[int, str]]]:
    """The parts of a chunk (`featurize_part` results, in order) and their failures; a labels row that
    failed raises (the first in item order), as `examples_chunk` does."""
    parts, fails = [], []
    for arrays, failures, fatal in results:
        if fatal is not None:
            raise DOSInputError(*fatal)
        parts.append(arrays)
        fails += failures
    return parts, fails


def _take(arrays: dict, lo: int, hi: int) -> dict[str, np.ndarray]:
    return {k: v[lo:hi] for k, v in arrays.items()}


class IdGuard:
    """The duplicate-id rule of `featurize.unique_ids`, row by row over the DFT rows: a later row with a
    seen id is left out (a failure) unless the ids of both are path-derived from distinct files
    (`finalize` re-derives those ids from the files' common folder)."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # id -> source of its first row (150,000 rows: ~33 MiB)

    @staticmethod
    def renamable(rid: str, source: str) -> bool:
        from esnet_tf.featurize import default_id

        return bool(source) and rid == default_id(Path(source))

    def admit(self, rid: str, source: str) -> str | None:
        """None to keep the row, else the failure line."""
        prev = self.first.get(rid)
        if prev is None:
            self.first[rid] = source
            return None
        if self.renamable(rid, prev) and self.renamable(rid, source) and Path(prev).resolve() != Path(source).resolve():
            return None
        return str(DOSInputError(source, f"duplicate example id {rid!r} (also from {prev})",
                                 "ids must be unique: give the calculations distinct names or task_ids"))


# ---------------------------------------------------------------- partial state

class Partial:
    """`<out>.partial/`: rows.csv, failures.txt and journal.json (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        out = Path(out)
        self.dir = out.parent / f"{out.name}{PARTIAL_SUFFIX}"
        self.rows_path = self.dir / "rows.csv"
        self.failures_path = self.dir / "failures.txt"
        self.journal_path = self.dir / "journal.json"

    def load(self, fingerprint: str) -> dict | None:
        """The journal of the same command, with rows.csv and failures.txt cut back to it; else None
        (and a partial state of another command is removed, saying so)."""
        if not self.dir.exists():
            return None
        try:
            journal = json.loads(self.journal_path.read_text())
            same = journal.get("version") == _JOURNAL_VERSION and journal.get("fingerprint") == fingerprint
        except (OSError, ValueError):
            journal, same = {}, False
        if not same or not self.rows_path.is_file():
            print(f"note: {self.dir} holds a partial run of another command (model, inputs or settings differ); "
                  "starting over", file=sys.stderr)
            self.remove()
            return None
        for path, size in ((self.rows_path, journal["rows_bytes"]), (self.failures_path, journal["failures_bytes"])):
            with open(path, "r+b" if path.exists() else "w+b") as fh:
                fh.truncate(size)
        return journal

    def start(self, header: list[str]) -> None:
        import shutil

        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        with self.rows_path.open("w", newline="") as fh:
            csv.writer(fh).writerow(header)
        self.failures_path.write_text("")

    def commit(self, journal: dict) -> None:
        from esnet_tf.atomic import atomic_path

        with atomic_path(self.journal_path) as tmp:
            tmp.write_text(json.dumps({"version": _JOURNAL_VERSION, **journal}))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def fingerprint(config, model, plan: Plan) -> str:
    """What must not change for a resume: model (path, size, mtime), items, labels, references,
    strict, batch size, precision."""
    model_path = Path(model.predictor.path)
    files = sorted(model_path.rglob("*")) if model_path.is_dir() else [model_path]
    h = hashlib.sha256(json.dumps({
        "model": [str(model_path.resolve())] + [[str(f), *_stat(f)] for f in files if f.is_file()],
        "items": plan.digest(), "labels": [config.labels, *_stat(config.labels)] if config.labels else None,
        "references": [config.references, *_stat(config.references)] if config.references else None,
        **({"uip": [config.uip, *_stat(config.uip)]} if getattr(config, "uip", None) else {}),
        "strict": config.strict, "batch_size": config.batch_size, "precision": config.precision,
    }, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- the run

def stream_predict(config, model, plan: Plan, *, on_failure: Callable[[str], None] | None = None,
                   after_commit: Callable[[int], None] | None = None, uip=None) -> tuple[list[str], int]:
    """Predict every item of `plan` with `model` (an `ESNetModel`) into `<config.out>.partial/rows.csv`,
    resuming a partial run of the same command; returns (the failures of the streamed items, those of
    an earlier run of it included, and the rows written). `on_failure` sees each failure (an earlier
    run's first); `after_commit(rows
    written)` runs after each commit: the hook the tests stop a run with). `uip`: `model.uip_inputs(config.uip)`
    (CHGNet's formation energies by id) for a model that takes them. `finalize` then writes `config.out`."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from esnet_tf.featurize import AUTO_PARALLEL_FILES, default_workers

    batch = config.batch_size
    partial = Partial(config.out)
    header = list(_BOOK) + csv_columns(model.predictor.has_std, model.predictor.has_interval, model.domain is not None)
    fp = fingerprint(config, model, plan)
    journal = partial.load(fp)
    guard = IdGuard()
    failures: list[str] = []
    if journal is None:
        partial.start(header)
        journal = {"fingerprint": fp, "items_done": 0, "skip_rows": 0, "rows": 0,
                   "rows_bytes": partial.rows_path.stat().st_size, "failures_bytes": 0}
        partial.commit(journal)
    else:
        with partial.rows_path.open(newline="") as fh:
            r = csv.reader(fh)
            next(r)
            for row in r:
                if row[1]:
                    guard.admit(row[2], row[1])
        failures = [line for line in partial.failures_path.read_text().splitlines() if line]
        for line in failures:
            if on_failure is not None:
                on_failure(line)
        print(f"resuming {partial.dir}: {journal['rows']} row(s) written, {journal['items_done']} of "
              f"{plan.n_items} input(s) done", file=sys.stderr)
    start, skip = journal["items_done"], journal["skip_rows"]
    chunks = list(plan.chunks(config.chunk_size, start))
    n_work = sum(b - a for k, a, b in chunks if plan.segments[k].kind != "npz")
    workers = config.workers
    if workers is None:
        workers = default_workers() if n_work >= AUTO_PARALLEL_FILES else 1
    workers = min(workers, max(1, n_work))
    offsets = plan.offsets()
    truths = {k: segment_truths(plan, s) for k, s in enumerate(plan.segments)}
    readers: dict[int, NpzRows] = {}
    state = {"written": journal["rows"], "last": start, "count": skip, "consumed": start}
    buffer: list[dict] = []  # rows read and not yet predicted: arrays of ROW_KEYS, in row order
    held: list[tuple[int, str]] = []  # failures of items not yet committed: (item, line)
    rows_fh = partial.rows_path.open("a", newline="")
    fail_fh = partial.failures_path.open("a")
    writer = csv.writer(rows_fh)
    bar = tqdm(total=plan.n_items, initial=start, unit="input", desc="predict", disable=None)
    pool = None
    thread = ThreadPoolExecutor(1)  # .npz rows are read beside the model
    try:
        if n_work and (workers > 1 or n_work > config.chunk_size):  # featurizing beside the model
            import multiprocessing

            from esnet_tf.threads import inherited_thread_env

            with inherited_thread_env(1):  # spawned (not forked: TensorFlow is loaded), single-threaded
                pool = multiprocessing.get_context("spawn").Pool(
                    workers, initializer=_init_worker,
                    initargs=({k: t for k, t in truths.items() if plan.segments[k].kind != "npz"},))

        def submit(k: int, a: int, b: int) -> tuple[int, int, Callable[[], tuple]]:
            """Start reading items [a, b) of segment k; (first item, stop, a function giving (parts, failures))."""
            seg, first = plan.segments[k], offsets[k] + a
            if seg.kind == "npz":
                if k not in readers:
                    readers[k] = NpzRows(seg.spec)
                future = thread.submit(read_chunk, plan, k, a, b, truths[k], npz=readers[k])
                return first, offsets[k] + b, lambda: _one_part(*future.result())
            jobs = chunk_jobs(plan, seg, a, b)
            if pool is None:
                return first, offsets[k] + b, lambda: _one_part(*examples_chunk(
                    plan, seg, first, list(map(featurize_job, jobs)), truths[k]))
            size = max(1, min(batch, -(-len(jobs) // workers)))  # parts of one batch: no copy to join them
            tasks = [(seg.kind, k, first + i, jobs[i:i + size], plan.grid.n_points) for i in range(0, len(jobs), size)]
            res = pool.map_async(featurize_part, tasks, chunksize=1)
            return first, offsets[k] + b, lambda: _joined_parts(res.get())

        def commit() -> None:
            """Journal: items before the first buffered row are done (and that item's rows written so far)."""
            nonlocal held
            if buffer:
                position = int(buffer[0]["item"][0])
                skip_rows = state["count"] if state["last"] == position else 0
            else:
                position, skip_rows = state["consumed"], 0
            rows_fh.flush()
            for item, line in held:
                if item < position:
                    fail_fh.write(" ".join(line.splitlines()) + "\n")
            held = [(item, line) for item, line in held if item >= position]
            fail_fh.flush()
            journal.update(items_done=position, skip_rows=skip_rows, rows=state["written"],
                           rows_bytes=rows_fh.tell(), failures_bytes=fail_fh.tell())
            partial.commit(journal)
            if after_commit is not None:
                after_commit(state["written"])

        def predict(done: dict) -> None:
            writer.writerows(predict_rows(model, done, batch_size=batch, strict=config.strict,
                                          references=config.references, uip=uip))
            state["written"] += len(done["id"])
            for item in done["item"]:
                if item == state["last"]:
                    state["count"] += 1
                else:
                    state["last"], state["count"] = int(item), 1

        def flush(final: bool) -> None:
            """Predict the whole batches of the buffer (all of it when `final`) and write their rows. The
            model sees consecutive rows in batches of `batch` from the first row on, as in one chunk; a part
            of whole batches goes to it as it is, only rows of a batch split across parts are joined."""
            nonlocal buffer
            n = sum(len(part["id"]) for part in buffer)
            while n >= batch or (final and n):
                need = min(batch, n)
                if len(buffer[0]["id"]) < need:  # a batch split across parts: join its parts (a copy)
                    j, got = 0, 0
                    while got < need:
                        got += len(buffer[j]["id"])
                        j += 1
                    buffer = [_concat(buffer[:j])] + buffer[j:]
                head = buffer[0]
                m = len(head["id"])
                take = (m // batch) * batch or m
                predict(_take(head, 0, take))
                buffer = ([_take(head, take, m)] if take < m else []) + buffer[1:]
                n -= take
            commit()

        it = iter(chunks)
        pending = [submit(*c) for c in (next(it, None) for _ in range(PREFETCH + 1)) if c is not None]
        while pending:
            first, stop, result = pending.pop(0)
            parts, fails = result()
            del result  # its parts are in `buffer` from here on, and leave memory as they are predicted
            nxt = next(it, None)
            for arrays in parts:
                keep = np.ones(len(arrays["id"]), bool)
                if first == start and skip:  # rows of the first item written before the stop (all in one part)
                    keep[np.flatnonzero(arrays["item"] == start)[:skip]] = False
                for i in np.flatnonzero(keep):
                    if arrays["source"][i]:
                        rid, source = str(arrays["id"][i]), str(arrays["source"][i])
                        if uip is not None and rid in guard.first:
                            # the row would be renamed by `finalize` after it was predicted with the CHGNet
                            # energy of the id it has now, which belongs to the other input
                            raise UserError(f"{source}: its id {rid!r} is also the id of {guard.first[rid]}, and "
                                            "--uip matches CHGNet's rows by id: give each input its own id (rename "
                                            "one of the folders)")
                        line = guard.admit(rid, source)
                        if line is not None:
                            keep[i] = False
                            fails.append((int(arrays["item"][i]), line))
                if not keep.all():
                    arrays = {k: v[keep] for k, v in arrays.items()}
                if len(arrays["id"]):
                    buffer.append(arrays)
            for item, line in sorted(fails):
                failures.append(line)
                held.append((item, line))
                if on_failure is not None:
                    on_failure(line)
            state["consumed"] = stop
            flush(final=not pending and nxt is None)
            bar.update(stop - first)
            if nxt is not None:  # read ahead while the model works on what is buffered
                pending.append(submit(*nxt))
    finally:
        bar.close()
        rows_fh.close()
        fail_fh.close()
        thread.shutdown(wait=True, cancel_futures=True)
        for reader in readers.values():
            reader.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return failures, state["written"]


def finalize(partial_rows: str | Path, out: str | Path, labels: str | None = None) -> tuple[dict[str, list], list[str]]:
    """rows.csv -> the predictions CSV `out` (atomically): ids as `featurize.unique_ids` gives them (the
    path-derived ids that collide re-derived from the files' common folder, truths of `labels` joined by
    the new id), a later duplicate left out (a failure), truth columns nobody has dropped.
    Returns (the columns, as lists of strings, and the failures)."""
    from esnet_tf.atomic import atomic_path
    from esnet_tf.featurize import default_id

    ids, sources = [], []
    truth_any = dict.fromkeys(TRUTH_KEYS, False)
    with open(partial_rows, newline="") as fh:
        r = csv.reader(fh)
        header = next(r)
        tcol = {k: header.index(k) for k in TRUTH_KEYS}
        for row in r:
            ids.append(row[2])
            sources.append(row[1])
            for k, j in tcol.items():
                truth_any[k] = truth_any[k] or bool(row[j])
    first_row: dict[str, int] = {}
    groups: dict[str, list[int]] = {}  # the ids of several DFT rows: their rows (a list only for those)
    for i, (rid, src) in enumerate(zip(ids, sources)):
        if src:
            j = first_row.setdefault(rid, i)
            if j != i:
                groups.setdefault(rid, [j]).append(i)
    del first_row
    new_ids = list(ids)
    renamed: set[int] = set()
    for members in groups.values():
        real = [Path(sources[i]).resolve() for i in members]
        if len(set(real)) == len(real) and all(IdGuard.renamable(ids[i], sources[i]) for i in members):
            root = Path(os.path.commonpath([str(s.parent) for s in real]))
            for i, src in zip(members, real):
                new_ids[i] = default_id(src, root)
                renamed.add(i)
    drop: set[int] = set()
    failures: list[str] = []
    first: dict[str, str] = {}
    for i, (rid, src) in enumerate(zip(new_ids, sources)):
        if not src:
            continue
        if rid in first:
            drop.add(i)
            failures.append(str(DOSInputError(src, f"duplicate example id {rid!r} (also from {first[rid]})",
                                              "ids must be unique: give the calculations distinct names or task_ids")))
        else:
            first[rid] = src
    truths = None
    if renamed and labels:
        from esnet_tf.labels import labels_by_id

        truths = labels_by_id(labels, path_column=None, require_energy=False)
        for i in renamed:
            truth_any.update({k: True for k in TRUTH_KEYS if truths.get(new_ids[i]) is not None
                              and np.isfinite(float(truths[new_ids[i]][k]))})
    keep_cols = [j for j, name in enumerate(header) if j >= len(_BOOK) and (name not in TRUTH_KEYS or truth_any[name])]
    columns: dict[str, list] = {header[j]: [] for j in keep_cols}
    from esnet_tf.predict import PREDICTION_LOWER_COLUMN, PREDICTION_UPPER_COLUMN

    unique = {"id", PREDICTION_COLUMN, PREDICTION_STD_COLUMN, PREDICTION_LOWER_COLUMN,  # one string a row;
              PREDICTION_UPPER_COLUMN}  # the other columns repeat a few values: each held once

    shared: dict[str, str] = {}
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fo, open(partial_rows, newline="") as fh:
        w = csv.writer(fo)
        w.writerow([header[j] for j in keep_cols])
        r = csv.reader(fh)
        next(r)
        for i, row in enumerate(r):
            if i in drop:
                continue
            if i in renamed:
                row[2] = new_ids[i]
                row_truth = truths.get(new_ids[i]) if truths is not None else None
                for k, j in tcol.items():
                    row[j] = _f6(row_truth[k]) if row_truth is not None else ""
            values = [row[j] for j in keep_cols]
            w.writerow(values)
            for name, v in zip(columns, values):
                columns[name].append(v if name in unique else shared.setdefault(v, v))
    return columns, failures
