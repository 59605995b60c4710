"""The one `labels.csv` schema and its strict reader.

A labels table has one row per calculation (DESIGN.md section 3):

| column | meaning |
|---|---|
| `id` | unique, non-empty |
| `path` | the calculation file, relative to the CSV's directory (or absolute) |
| `formation_energy_per_atom` | relaxed formation energy, eV/atom |
| `e_above_hull` | eV/atom, blank = unknown (NaN) |
| `prototype`, `formula` | optional text; a given formula is checked against the file |
| anything else | kept as text in `LabelRow.extra` (e.g. `is_wall_time_s`, `relax_wall_time_s`) |

Every consumer (the TFDS builder, the array loaders, screening, the demo, the benchmarks) reads
labels through `read_labels`; errors name `file:line`. `.csv.gz` is read too.
"""
from __future__ import annotations

import csv
import zlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from esnet_tf.errors import DatasetError

#: Name of the labels file in a manual / demo directory.
LABELS_FILE = "labels.csv"
ENERGY_COLUMNS = ("formation_energy_per_atom", "e_above_hull")
_NAMED = ("id", "path", "formation_energy_per_atom", "e_above_hull", "prototype", "formula")


@dataclass(frozen=True)
class LabelRow:
    """One row of a labels table: where the calculation is and its labels (eV/atom).

    `row["column"]` reads any column by name (named fields first, then `extra`).
    """

    id: str
    path: str  # as written (relative to the table's directory, or absolute); '' when absent
    file: str  # resolved path of the calculation; '' when absent
    formation_energy_per_atom: float  # eV/atom, NaN when blank and not required
    e_above_hull: float  # eV/atom, NaN when unknown
    prototype: str = ""
    formula: str = ""  # '' when unknown; when given, checked against the file and used for routing
    extra: Mapping[str, str] = field(default_factory=dict)
    line: int = 0  # line in the CSV (header = 1)

    def __getitem__(self, column: str):
        if column in _NAMED:
            return getattr(self, column)
        try:
            return self.extra[column]
        except KeyError:
            raise KeyError(f"labels row {self.id!r} has no column {column!r}") from None

    def get(self, column: str, default=None):
        try:
            return self[column]
        except KeyError:
            return default

    def float(self, column: str, source: str | Path = "labels", unit: str = "") -> float:
        """A numeric extra column (e.g. `relax_wall_time_s`, unit "s"); blank -> NaN; text -> DatasetError."""
        unit = unit or ("s" if column.endswith("_s") else "eV/atom")
        return label_float(self.get(column), Path(source), self.line, column, required=False, unit=unit)


def label_float(value: str | float | None, labels: Path, line: int, column: str, required: bool,
                unit: str = "eV/atom") -> float:
    """A labels-CSV cell (in `unit`): blank/nan -> NaN (an error when `required`), not a number -> error."""
    if isinstance(value, float):
        return value
    text = (value or "").strip()
    if not text or text.lower() in ("nan", "none", "null"):
        if required:
            raise DatasetError(f"{labels}:{line}: empty '{column}' (give a number in {unit})")
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{labels}:{line}: '{column}' is {text!r}, not a number ({unit})") from None


#: the share of the per-file limit of bounded reading (`esnet_tf.readers.limits`) a CSV table may inflate to:
#: an eighth (256 MiB of text by default, some millions of rows), as for a JSON document
TABLE_FRACTION = 0.125


def open_table(path: str | Path):
    """A CSV table (plain or .gz) as text, streamed through `esnet_tf.readers.limits.open_bounded`: a special
    file is refused and the text stops with one line at `TABLE_FRACTION` of the per-file limit (a gzip bomb
    never inflates past it)."""
    import io

    from esnet_tf.readers.limits import open_bounded

    return io.TextIOWrapper(open_bounded(path, TABLE_FRACTION), encoding="utf-8", newline="")


def _open(path: Path):
    return open_table(path)


def read_labels(labels_csv: str | Path, *, path_column: str | None = "path", require_energy: bool = True,
                required_columns: Sequence[str] = ()) -> list[LabelRow]:
    """Rows of a labels table, strictly checked; paths resolved relative to its directory.

    `path_column`: the column holding the calculation path (None: not needed, `path` read if present).
    `require_energy`: every row needs a `formation_energy_per_atom` (else blank -> NaN).
    `required_columns`: further columns that must exist (e.g. `formula`).
    Rows whose cells are all empty are skipped (a partly written trailing line of a growing file);
    an empty id, a duplicate id or a number that is not one is an error naming `file:line`.
    """
    labels = Path(labels_csv).expanduser()
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels}: no labels file (expected a {LABELS_FILE} with columns id, path, "
            "formation_energy_per_atom[, e_above_hull, prototype] next to the calculation files)")
    root = labels.parent
    column_of_path = path_column or "path"
    try:
        with _open(labels) as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            need = ["id", *([path_column] if path_column else []),
                    *(["formation_energy_per_atom"] if require_energy else []), *required_columns]
            missing = [c for c in need if c not in columns]
            if missing:
                raise DatasetError(f"{labels}: missing column(s) {', '.join(missing)} "
                                   f"(found: {', '.join(columns) or 'none'})")
            rows: list[LabelRow] = []
            seen: dict[str, int] = {}
            for line, raw in enumerate(reader, start=2):
                rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not any(rec.values()):
                    continue
                id_ = rec.get("id", "")
                if not id_:
                    raise DatasetError(f"{labels}:{line}: empty id")
                if id_ in seen:
                    raise DatasetError(f"{labels}:{line}: duplicate id {id_!r} (first on line {seen[id_]})")
                seen[id_] = line
                rel = rec.get(column_of_path, "")
                file = str(Path(rel).expanduser() if Path(rel).expanduser().is_absolute() else root / rel) if rel else ""
                rows.append(LabelRow(
                    id=id_, path=rel, file=file,
                    formation_energy_per_atom=label_float(rec.get("formation_energy_per_atom"), labels, line,
                                                          "formation_energy_per_atom", require_energy),
                    e_above_hull=label_float(rec.get("e_above_hull"), labels, line, "e_above_hull", False),
                    prototype=rec.get("prototype", ""), formula=rec.get("formula", ""),
                    extra={k: v for k, v in rec.items() if k not in _NAMED and k != column_of_path},
                    line=line))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{labels}: not a UTF-8 text CSV ({exc.reason})") from None
    except (csv.Error, OSError, EOFError, zlib.error) as exc:  # a corrupt .gz too
        raise DatasetError(f"{labels}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    return rows


def labels_by_id(labels_csv: str | Path, **kwargs) -> dict[str, LabelRow]:
    """`read_labels` keyed by id (ids are unique)."""
    return {r.id: r for r in read_labels(labels_csv, **kwargs)}
