"""Screening files: the predictions CSV in, reference-entry JSON in, candidates.csv / metrics.json / PNGs out.

The predictions CSV is the table `esnet predict` writes (columns named in `esnet_tf.isdos`);
labels.csv files (references, truths, costs) are read by `esnet_tf.labels.read_labels`, not here.
Every output is written to a temporary name beside its target and renamed into place.
"""
from __future__ import annotations

import csv
import gzip
import json
import math
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
    return gzip.open(path, "rt", encoding="utf-8", newline="") if path.name.endswith(".gz") \
        else open(path, newline="", encoding="utf-8")


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
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
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
    try:
        with _open_text(path) as fh:
            data = safe_json.load(fh, path)  # too deep: one line, not a RecursionError
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
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


def write_outputs(result: "ScreenResult", out_dir: str | Path) -> list[Path]:
    """candidates.csv, metrics.json, recall_vs_cost.png (with a cost curve), predicted_vs_true.png in `out_dir`."""
    from esnet_tf.screening.plots import screen_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_candidates(result, out_dir / "candidates.csv"),
               write_text(out_dir / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")]
    return written + screen_plots(result, out_dir)
