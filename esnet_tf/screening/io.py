"""Screening files: the predictions CSV in, reference-entry JSON in, candidates.csv / metrics.json / PNGs out.

The predictions CSV is the table `esnet predict` writes (columns named in `esnet_tf.isdos`);
labels.csv files (references, truths, costs) are read by `esnet_tf.labels.read_labels`, not here.
Every output is written to a temporary name beside its target and renamed into place.
"""
from __future__ import annotations

import csv
import json
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esnet_tf import safe_json
from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.errors import UserError

if TYPE_CHECKING:
    from esnet_tf.screening.pipeline import ScreenResult

#: pymatgen classes a reference JSON may hold (decoded with `from_dict`, never MontyDecoder or pickle).
ENTRY_CLASSES = ("ComputedEntry", "ComputedStructureEntry", "PDEntry")


def _open_text(path: Path):
    """The file's text (plain or .gz), bounded (`esnet_tf.labels.open_table`: special files refused, an eighth
    of the per-file limit of bounded reading)."""
    from esnet_tf.labels import open_table

    return open_table(path)


def read_csv_rows(path: str | Path, required: Sequence[str] = ("id",)) -> list[dict[str, str]]:
    """Rows of a predictions CSV as dicts; checks the `required` columns and unique, non-empty ids."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            cols = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in cols]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing} (has {cols})")
    if "id" in required:
        ids = [r["id"] for r in rows]
        if any(not i for i in ids):
            raise UserError(f"{path}: empty id on row {ids.index('') + 2}")
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            raise UserError(f"{path}: duplicate id(s) {dup[:5]}: ids must be unique")
    return rows


def _entry_from_dict(d: dict, path: Path) -> Any:
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    cls = d.get("@class", "ComputedEntry")
    classes = {"ComputedEntry": ComputedEntry, "ComputedStructureEntry": ComputedStructureEntry,
               "PDEntry": PDEntry}
    if cls not in classes or "energy" not in d or "composition" not in d:
        raise UserError(f"{path}: expected entry dicts of class {ENTRY_CLASSES} with 'energy' "
                        f"and 'composition', got {cls!r}")
    try:
        return classes[cls].from_dict(d)
    except Exception as exc:  # pymatgen raises several types on malformed dicts
        raise UserError(f"{path}: a {cls} dict could not be decoded ({type(exc).__name__}: {exc})") from None


def load_entries(path: str | Path) -> list:
    """Entries from JSON (.json / .json.gz): a list of entry dicts, {"entries": [...]} or {symbol: entry dict}.

    Decoded with `json` and the allowlisted classes' `from_dict` (never pickle). Energies in eV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    from esnet_tf.readers.limits import check_json_size

    try:
        with _open_text(path) as fh:
            text = fh.read()
        check_json_size(text.encode("utf-8"), path)  # [[],[],...] decodes to 20 times its text
        data = safe_json.loads(text, path)  # too deep: one line, not a RecursionError
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(data, dict) and "entries" in data:
        data = data["entries"]
    if isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UserError(f"{path}: expected a list of pymatgen entry dicts")
    from esnet_tf.safe_json import check_modules

    check_modules(data, path)  # nested @module dicts would be imported by pymatgen's MontyDecoder
    return [_entry_from_dict(d, path) for d in data]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6f}"
    return v


def write_candidates(result: "ScreenResult", path: str | Path) -> Path:
    """candidates.csv: one row per candidate in rank order (unranked last, by id)."""
    rows = result.rows
    cols = list(result.columns)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r.get("rank", math.inf), r["id"])):
            w.writerow({c: _cell(r.get(c, "")) for c in cols})
    return Path(path)


#: the files `write_outputs` writes in its directory (nothing else there is touched)
OUTPUT_FILES = ("candidates.csv", "metrics.json", "recall_vs_cost.png", "predicted_vs_true.png")


def write_outputs(result: "ScreenResult", out_dir: str | Path) -> list[Path]:
    """candidates.csv, metrics.json, recall_vs_cost.png (with a cost curve), predicted_vs_true.png in `out_dir`.

    Each is written atomically; an output of `OUTPUT_FILES` an earlier screen left there and this one
    does not write (a cost plot without costs now) is removed, so the folder never mixes two runs.
    """
    from esnet_tf.screening.plots import screen_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_candidates(result, out_dir / "candidates.csv"),
               write_text(out_dir / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")]
    written += screen_plots(result, out_dir)
    for name in set(OUTPUT_FILES) - {p.name for p in written}:
        (out_dir / name).unlink(missing_ok=True)
    return written
