"""The GPAW engine's DOS files (`*.gpawdos.npz`, written by `esnet dft`): reader and writer.

Content (npz, no pickle): the PDOS (n_spin, 9, n_E) float32, states/eV per cell summed over
sites, channels in `isdos.ORBITALS` order, symmetrised over the crystal's rotations, n_spin = 1
meaning the total of both spins, on an absolute energy axis (eV); the Fermi level `efermi` (eV);
the structure (pymatgen Structure dict); `code`; `settings_json` (the DFT settings' key);
`energy` (total, eV); `id`. Two layouts, both read:
- compact (written since 2026-12), two arrays: `pdos_bytes` uint8 (4, n_spin, 9, n_E), byte b of
  each little-endian float32 in plane b (grouping the bytes lets zlib find the zeroed low
  mantissa bits), and `meta_json`, one UTF-8 JSON bytes scalar with `energy_start` and
  `energy_step` (the axis is `energy_start + energy_step * arange(n_E)`), `efermi`, `energy`,
  `id`, `code`, `settings_json` and `structure`: about half the size of the full layout, the same
  float32 values and energies within `GRID_TOLERANCE_EV`;
- full (before 2026-12, and for a non-uniform axis): `energies` (n_E,), `pdos`, `efermi`,
  `structure_json`, `code`, `settings_json`, `energy`, `id`.
`compact_gpaw_dos` rewrites a full file in the compact layout.

The IS total energy of an example is the file's `energy` (the single point that gave the DOS). The
engine's own elemental references (eV/atom) come from the `provenance.json` that `esnet dft` writes
at the top of its data directory (`elemental_references`), found in the file's parent folders and
used only when its `settings` are the file's `settings_json` (same code, same settings).
"""
from __future__ import annotations

import json
import os
import stat
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from esnet_tf.isdos import N_ORBITALS, DOSInputError, ProjectedDOS

#: provenance.json of an `esnet dft` data directory: the engine's settings and elemental references
PROVENANCE_FILE = "provenance.json"
#: how many parent folders of a *.gpawdos.npz are searched for PROVENANCE_FILE (data_dir/calcs/<key>/is.gpawdos.npz)
PROVENANCE_DEPTH = 4
#: largest |stored - uniform| energy (eV) for which an axis is written as start + step
GRID_TOLERANCE_EV = 1e-9
_FIX = "regenerate it with `esnet dft`"
_META = ("efermi", "energy", "id", "code", "settings_json")


def _pdos_to_bytes(pdos: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(pdos, dtype="<f4")[..., None].view(np.uint8), -1, 0))


def _pdos_from_bytes(planes: np.ndarray) -> np.ndarray:
    out = np.empty(planes.shape[1:] + (4,), np.uint8)
    for b in range(4):  # plane by plane (3x faster than one transposing copy)
        out[..., b] = planes[b]
    return out.view("<f4")[..., 0]


#: the arrays of both layouts; nothing else in a file is read
_MEMBERS = ("pdos_bytes", "meta_json", "energies", "pdos", "efermi", "structure_json", "code", "settings_json",
            "energy", "id")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The layouts' arrays of `path` (others never inflated), bounded by `esnet_tf.readers.limits`:
    special files refused, at most an eighth of the per-file limit read, no pickle."""
    from esnet_tf.readers.limits import InputLimitError, load_npz

    try:
        return load_npz(path, _MEMBERS, fraction=0.125)
    except InputLimitError:
        raise
    except DOSInputError as exc:
        if not Path(path).is_file():
            raise
        raise DOSInputError(path, exc.problem, "the file is truncated or corrupt: rerun `esnet dft` (the cache "
                            "resumes)") from None


def _content(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """The file's content in one form for both layouts: `energies` (eV) and float32 `pdos`
    arrays, `structure` (dict), and the scalars of `_META`."""
    if "pdos_bytes" in arrays:
        planes = arrays["pdos_bytes"]
        if planes.dtype != np.uint8 or planes.ndim != 4 or planes.shape[0] != 4:
            raise DOSInputError(path, f"pdos_bytes has dtype {planes.dtype} and shape {planes.shape}, "
                                      "expected uint8 (4, n_spin, 9, n_E)", _FIX)
        try:
            meta = json.loads(arrays["meta_json"].item())
            content = {k: meta[k] for k in _META + ("structure",)}
            start, step = float(meta["energy_start"]), float(meta["energy_step"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DOSInputError(path, f"meta_json is missing or incomplete ({type(exc).__name__}: {exc})",
                                _FIX) from None
        pdos = _pdos_from_bytes(planes)
        return {**content, "pdos": pdos, "energies": start + step * np.arange(pdos.shape[-1])}
    missing = [k for k in ("energies", "pdos", "efermi", "structure_json", "code") if k not in arrays]
    if missing:
        raise DOSInputError(path, f"missing arrays {missing}", _FIX)
    content = {k: (arrays[k].item() if k in arrays else None) for k in _META}
    return {**content, "energies": arrays["energies"].astype(np.float64), "pdos": arrays["pdos"].astype(np.float32),
            "structure": json.loads(str(arrays["structure_json"]))}


def read_gpaw_dos(path: str | Path) -> ProjectedDOS:
    """Read one `*.gpawdos.npz` (either layout)."""
    from pymatgen.core import Structure

    path = Path(path)
    c = _content(path, _arrays(path))
    pdos, energies = c["pdos"].astype(np.float64), c["energies"]
    if pdos.ndim != 3 or pdos.shape[1] != N_ORBITALS or pdos.shape[0] not in (1, 2) \
            or pdos.shape[2] != energies.shape[0]:
        raise DOSInputError(path, f"pdos has shape {pdos.shape}, expected (1|2, 9, {energies.shape[0]})", _FIX)
    dos = ProjectedDOS(energies=energies, pdos=pdos, efermi=float(c["efermi"]),
                       structure=Structure.from_dict(c["structure"]), spin_polarized=pdos.shape[0] == 2,
                       source=str(path), code=str(c["code"]))
    dos.doc_id = str(c["id"]) if c["id"] is not None else None
    energy = c.get("energy")
    if energy is not None and np.isfinite(float(energy)):
        dos.total_energy = float(energy)
        dos.energy_source = "GPAW single point (esnet dft)"
    if c.get("settings_json"):
        dos.references = engine_references(path, str(c["settings_json"]))
    return dos


def engine_references(path: str | Path, settings_json: str) -> dict[str, float] | None:
    """The GPAW engine's elemental references {element: eV/atom} for a file computed with
    `settings_json`: from the nearest `provenance.json` in its parent folders whose settings are
    the same; None when there is none."""
    settings = _canonical_settings(settings_json)
    if settings is None:
        return None
    folder = os.path.dirname(os.path.realpath(path))  # Path(path).resolve().parents, as strings
    for _ in range(PROVENANCE_DEPTH):
        candidate = os.path.join(folder, PROVENANCE_FILE)
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            found = _provenance_references(candidate, st.st_mtime_ns)
            if found is not None and found[0] == settings:
                return dict(found[1])
        parent = os.path.dirname(folder)
        if parent == folder:  # the root has no parent
            break
        folder = parent
    return None


@lru_cache(maxsize=64)
def _canonical_settings(settings_json) -> str | None:
    """`settings_json` with sorted keys (None when it is not JSON); a pool's files share a few settings."""
    try:
        return json.dumps(json.loads(settings_json), sort_keys=True)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=16)
def _provenance_references(path: str, mtime_ns: int) -> tuple[str, tuple] | None:
    """(canonical settings JSON, ((element, eV/atom), ...)) of one provenance.json (cached while unchanged)."""
    try:
        prov = json.loads(Path(path).read_text(encoding="utf-8"))
        refs = tuple(sorted((str(el), float(v["energy_per_atom"])) for el, v in prov["elemental_references"].items()))
        return json.dumps(prov["settings"], sort_keys=True), refs
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _layout(c: dict) -> dict[str, np.ndarray]:
    """The compact layout's arrays for content `c`; the full layout's when its axis is not uniform."""
    energies = np.asarray(c["energies"], dtype=np.float64)
    pdos = np.asarray(c["pdos"], dtype=np.float32)
    n = energies.shape[0]
    step = float(energies[-1] - energies[0]) / (n - 1) if n > 1 else 0.0
    if n > 1 and np.abs(energies[0] + step * np.arange(n) - energies).max() <= GRID_TOLERANCE_EV:
        meta = {"energy_start": float(energies[0]), "energy_step": step,
                **{k: c[k] for k in _META}, "structure": c["structure"]}
        return {"pdos_bytes": _pdos_to_bytes(pdos), "meta_json": np.bytes_(json.dumps(meta).encode("utf-8"))}
    return {"energies": energies, "pdos": pdos, "efermi": np.float64(c["efermi"]), "energy": np.float64(c["energy"]),
            "structure_json": np.str_(json.dumps(c["structure"])), "code": np.str_(c["code"]),
            "settings_json": np.str_(c["settings_json"]), "id": np.str_(c["id"])}


def write_gpaw_dos(path: str | Path, *, energies: np.ndarray, efermi: float, pdos: np.ndarray, structure: dict,
                   code: str, settings_json: str, energy: float, doc_id: str) -> Path:
    """Write one `*.gpawdos.npz` atomically: energies and `efermi` in eV (absolute), `pdos`
    (n_spin, 9, n_E) states/eV per cell, `structure` a pymatgen Structure dict, `energy` eV."""
    from esnet_tf.atomic import atomic_path

    content = {"energies": energies, "pdos": pdos, "efermi": float(efermi), "energy": float(energy),
               "id": str(doc_id), "code": str(code), "settings_json": str(settings_json), "structure": structure}
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **_layout(content))
    return Path(path)


def has_full_layout(path: str | Path) -> bool:
    """Whether `path` holds the full layout (`energies` + `pdos`), i.e. `compact_gpaw_dos` may shrink it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"energies.npy", "pdos.npy"} <= names


def compact_gpaw_dos(path: str | Path) -> bool:
    """Rewrite a full-layout `*.gpawdos.npz` in the compact layout; False when there is nothing
    to do (already compact, or a non-uniform energy axis).

    The new file is read back before it replaces the old one: the same PDOS values, energies
    within `GRID_TOLERANCE_EV` and the same metadata. Raises `DOSInputError` otherwise.
    """
    from esnet_tf.atomic import atomic_path

    path = Path(path)
    arrays = _arrays(path)
    if "pdos_bytes" in arrays:
        return False
    old = _content(path, arrays)
    new = _layout(old)
    if "pdos_bytes" not in new:
        return False
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **new)
        back = _content(tmp, _arrays(tmp))
        same = (np.array_equal(back["pdos"], old["pdos"])
                and np.abs(back["energies"] - old["energies"]).max() <= GRID_TOLERANCE_EV
                and all(back[k] == old[k] for k in _META + ("structure",)))
        if not same:
            raise DOSInputError(path, "the compact copy does not reproduce the file", "leave it in the full layout")
    return True
