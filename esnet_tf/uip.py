"""Universal interatomic potential (UIP): relaxed energies and formation energies without DFT.

    from esnet_tf.uip import UIPConfig, relax_structures, demo_structures
    results = relax_structures(demo_structures(), UIPConfig(workers=2), cache_dir="uip_cache")
    results[0].energy_per_atom, results[0].steps, results[0].converged   # eV/atom, -, -

The potential is CHGNet (`model="chgnet"`, the default) or SevenNet (`model="sevennet"`, its 7net-0
weights); both ship their pretrained weights in their wheels (no network) and install with the optional
extra `esnet-tf[uip]` (torch, CPU build). Nothing else in esnet-tf imports torch, chgnet or sevenn:
this module imports them only inside the functions that relax, and `require_uip` turns a missing
extra into one line.

Relaxation: ASE FIRE on positions and cell (FrechetCellFilter), the settings of CHGNet's own
`StructOptimizer`, until the largest force (and cell-filter stress) is below `fmax` eV/Å, or the
step or time limit stops it (the result is kept and flagged `converged=False`). Each worker process
runs torch on one thread. Results are cached as one JSON file per (structure, model, settings) key
in `cache_dir`, written atomically; a rerun reads them back (never pickled).

Formation energies (eV/atom) are taken against the potential's own elemental references: the
lowest relaxed energy per atom among the demo's crystalline elemental phases of each element
(fcc, bcc, hcp, diamond, sc; `elemental_references`). N, O, F and Cl have no crystalline phase in
the data (their DFT references are molecules, which a potential trained on crystals does not
describe); their chemical potentials are fitted (`fit_gas_references`) by least squares of the
potential's formation energies against the DFT ones, on the rows a caller names as training rows
only, so a test fold never informs its own predictions. Until such a fit is supplied, rows with
those elements have no UIP formation energy (NaN).

As a model input (`esnet predict MODEL ... --uip CSV`): `UIPInputs` reads a results CSV (no torch) and
gives each input's formation energy, matched by id, with the chemical potentials the model stored at
training (its model.json `uip` record), so a prediction uses the references the model was trained with.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import importlib.util
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.errors import UserError
from esnet_tf.threads import SINGLE_THREAD_ENV

#: Elements whose reference is fitted (no crystalline elemental phase in the demo data).
GAS_ELEMENTS: tuple[str, ...] = ("N", "O", "F", "Cl")
#: Potentials this module knows: name -> (pip package, weight versions shipped in its wheel).
#: The first version of each is its default.
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {"chgnet": ("chgnet", ("0.3.0", "0.2.0", "r2scan")),
                                                  "sevennet": ("sevenn", ("7net-0",))}
#: Columns of the CSV `write_csv` writes (energies eV/atom, wall time s).
CSV_COLUMNS = ("id", "formula", "uip_energy_per_atom", "uip_formation_energy_per_atom", "steps", "wall_time_s",
               "cpu_time_s", "converged", "stop_reason", "model", "model_version", "error")
#: Bumped when the relaxation procedure changes, so that old cache files are not reused.
RELAX_REVISION = 1
INSTALL_HINT = "install esnet-tf[uip] (pip install 'esnet-tf[uip]'; CHGNet, SevenNet and a CPU build of torch)"


@dataclass(frozen=True)
class UIPConfig:
    """How to relax. `model`: the potential ("chgnet" or "sevennet", `MODELS`); `model_version`: its
    weights ('' = the model's default: CHGNet "0.3.0", the MPtrj model it loads by default; SevenNet
    "7net-0"); `fmax`: force threshold, eV/Å; `max_steps`: FIRE step limit per structure; `timeout_s`:
    wall-time limit per structure, s (checked after every step); `workers`: processes (each with one
    torch thread; 1 runs in this process); `relax_cell`: relax the cell too (FrechetCellFilter), else
    positions only."""

    model: str = "chgnet"
    model_version: str = ""
    fmax: float = 0.05
    max_steps: int = 500
    timeout_s: float = 300.0
    workers: int = 1
    relax_cell: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UserError(f"uip model {self.model!r} unknown; choose one of {sorted(MODELS)}")
        versions = MODELS[self.model][1]
        if not self.model_version:
            object.__setattr__(self, "model_version", versions[0])
        if self.model_version not in versions:
            raise UserError(f"uip model version {self.model_version!r} unknown for {self.model}; "
                            f"choose one of {', '.join(versions)}")
        if not (isinstance(self.fmax, (int, float)) and self.fmax > 0):
            raise UserError(f"uip fmax is {self.fmax!r}; give a positive force threshold in eV/Å (e.g. 0.05)")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise UserError(f"uip max steps is {self.max_steps!r}; give an integer >= 0")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise UserError(f"uip timeout is {self.timeout_s!r}; give a positive number of seconds")
        if not (isinstance(self.workers, int) and self.workers >= 1):
            raise UserError(f"uip workers is {self.workers!r}; give an integer >= 1")

    def key(self) -> dict:
        """What changes a result (part of the cache key); `timeout_s` and `workers` do not."""
        return {"model": self.model, "model_version": self.model_version, "fmax": float(self.fmax),
                "max_steps": self.max_steps, "relax_cell": self.relax_cell, "revision": RELAX_REVISION}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UIPConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class UIPResult:
    """One relaxation. `energy_per_atom`: the potential's energy of the relaxed structure, eV/atom
    (NaN on error); `structure`: the relaxed structure (pymatgen dict); `steps`: optimizer steps;
    `wall_time_s`: wall time of the relaxation, s; `cpu_time_s`: CPU time of the (single-threaded) process
    during it, s (NaN in cache files written before it was recorded); `converged`: max force below fmax; `stop_reason`:
    "converged", "step limit", "time limit" or "error"; `error`: why it failed ('' when it did not)."""

    id: str
    formula: str
    energy_per_atom: float
    structure: dict | None
    steps: int
    wall_time_s: float
    converged: bool
    stop_reason: str
    model: str
    model_version: str
    package_version: str
    key: str = ""
    cached: bool = False
    error: str = ""
    cpu_time_s: float = math.nan
    composition: dict[str, float] = field(default_factory=dict)  # atomic fractions

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("cached")
        return d


# ----------------------------------------------------------------------------------------------
# the optional extra


def uip_available(model: str = "chgnet") -> bool:
    """True when the potential's package and torch are importable (found, not imported)."""
    return all(importlib.util.find_spec(m) is not None for m in (MODELS[model][0], "torch"))


def require_uip(model: str = "chgnet") -> None:
    """Raise a one-line UserError naming the extra when the potential is not installed."""
    if not uip_available(model):
        raise UserError(f"the universal potential {model} is not installed: {INSTALL_HINT}")


def package_version(model: str = "chgnet") -> str:
    """The installed version of the potential's package (read from metadata; imports nothing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(MODELS[model][0])
    except PackageNotFoundError:
        return ""


# ----------------------------------------------------------------------------------------------
# inputs and keys


def structure_hash(structure: Any) -> str:
    """Hash of a structure (lattice, species, fractional coordinates to 1e-6), 16 hex digits."""
    s = structure
    payload = {"lattice": [[round(x, 6) for x in row] for row in s.lattice.matrix.tolist()],
               "species": [sp.symbol for sp in s.species],
               "frac": [[round(x % 1.0, 6) % 1.0 for x in site.frac_coords] for site in s]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(structure: Any, config: UIPConfig, version: str) -> str:
    """The cache key of (structure, model + weights + package version, settings), 16 hex digits."""
    payload = {"structure": structure_hash(structure), "settings": config.key(), "package_version": version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_inputs(paths: Iterable[str | Path]) -> list[tuple[str, Any]]:
    """(id, Structure) of every structure in CIF, POSCAR, pymatgen JSON (or `esnet dft` spec) files.

    Ids are the readers' (file stem; POSCAR/CONTCAR: the folder's name); a duplicate id is an error.
    """
    from esnet_tf.dft.structures import StructureInputError, read_structures

    out: list[tuple[str, Any]] = []
    seen: dict[str, str] = {}
    for p in paths:
        try:
            items = read_structures(p)
        except StructureInputError as exc:
            raise UserError(str(exc)) from None
        for id_, s, _proto in items:
            if id_ in seen:
                raise UserError(f"{p}: structure id {id_!r} is also given by {seen[id_]}; rename one of the files")
            if not s.is_ordered:
                raise UserError(f"{p}: structure {id_!r} is disordered (partial occupancies); a potential needs "
                                "an ordered cell (order it first, e.g. with pymatgen's "
                                "OrderDisorderedStructureTransformation)")
            seen[id_] = str(p)
            out.append((id_, s))
    return out


def demo_structures(labels_csv: str | Path | None = None) -> list[tuple[str, Any]]:
    """(id, initial structure) of every row of the demo's labels.csv (or another labels table made
    by `esnet dft`): the IS is the `structure` of the `task.json` beside each row's IS-DOS file."""
    from pymatgen.core import Structure

    from esnet_tf.labels import read_labels
    from esnet_tf.resources import demo_labels
    from esnet_tf.safe_json import UnsafeJSONError, check_modules

    labels = Path(labels_csv) if labels_csv else demo_labels()
    out = []
    for row in read_labels(labels, require_energy=False):
        task = Path(row.file).parent / "task.json"
        try:
            doc = json.loads(task.read_text())
            check_modules(doc.get("structure"), task)
            out.append((row.id, Structure.from_dict(doc["structure"])))
        except UnsafeJSONError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{task}: no initial structure for {labels}:{row.line} ({row.id}): "
                            f"{type(exc).__name__}: {exc} (each row's calculation folder needs the task.json "
                            "that `esnet dft` writes)") from None
    return out


# ----------------------------------------------------------------------------------------------
# relaxation (worker side: imports torch and the potential)

_MODEL: Any = None
_MODEL_ID: tuple[str, str] | None = None


class _TimeLimit(Exception):
    pass


def _load_model(config: UIPConfig) -> Any:
    """The potential, loaded once per process; torch on one thread."""
    global _MODEL, _MODEL_ID
    if _MODEL_ID != (config.model, config.model_version):
        for k, v in SINGLE_THREAD_ENV.items():
            os.environ.setdefault(k, v)
        import torch

        torch.set_num_threads(1)
        if config.model == "sevennet":
            from sevenn.calculator import SevenNetCalculator

            _MODEL = SevenNetCalculator(model=config.model_version, device="cpu")  # an ASE calculator
        else:
            from chgnet.model import CHGNet

            _MODEL = CHGNet.load(model_name=config.model_version, use_device="cpu", verbose=False)
        _MODEL_ID = (config.model, config.model_version)
    return _MODEL


def _worker_init(config_dict: dict) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    _load_model(UIPConfig.from_dict(config_dict))


def _relax_one(id_: str, structure_dict: dict, config_dict: dict) -> dict:
    """Relax one structure; returns the fields of UIPResult (no exception escapes)."""
    import warnings

    from pymatgen.core import Structure

    config = UIPConfig.from_dict(config_dict)
    s = Structure.from_dict(structure_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _load_model(config)  # once per process, before the clock starts
    t0, c0 = time.monotonic(), time.process_time()
    out: dict[str, Any] = {"id": id_, "formula": s.composition.reduced_formula, "energy_per_atom": math.nan,
                           "structure": None, "steps": 0, "converged": False, "stop_reason": "error", "error": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ase.filters import FrechetCellFilter
            from ase.optimize import FIRE
            from pymatgen.io.ase import AseAtomsAdaptor

            atoms = AseAtomsAdaptor.get_atoms(s)
            if config.model == "sevennet":
                atoms.calc = model
            else:
                from chgnet.model.dynamics import CHGNetCalculator

                with contextlib.redirect_stdout(io.StringIO()):  # it prints the device it runs on
                    atoms.calc = CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="ignore")
            target = FrechetCellFilter(atoms) if config.relax_cell else atoms
            opt = FIRE(target, logfile=None)

            def _clock() -> None:
                if time.monotonic() - t0 > config.timeout_s:
                    raise _TimeLimit

            opt.attach(_clock, interval=1)
            try:
                converged = bool(opt.run(fmax=config.fmax, steps=config.max_steps))
                reason = "converged" if converged else "step limit"
            except _TimeLimit:
                converged, reason = False, "time limit"
            energy = float(atoms.get_potential_energy()) / len(atoms)
            if not math.isfinite(energy):
                raise ValueError(f"the potential returned a non-finite energy ({energy})")
            relaxed = AseAtomsAdaptor.get_structure(atoms)
            for prop in list(relaxed.site_properties):  # ASE's momenta, CHGNet's magmoms: not part of the result
                relaxed.remove_site_property(prop)
            out.update(energy_per_atom=energy, structure=relaxed.as_dict(), steps=int(opt.nsteps),
                       converged=converged, stop_reason=reason)
    except Exception as exc:  # one structure's failure is recorded in its row, not fatal to the run
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
    out["wall_time_s"] = time.monotonic() - t0
    out["cpu_time_s"] = time.process_time() - c0
    return out


# ----------------------------------------------------------------------------------------------
# the cache and the driver


def _read_cache(path: Path, config: UIPConfig) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # missing or unreadable: compute again
    if not isinstance(d, dict) or d.get("settings") != config.key():
        return None
    # a relaxation the time limit stopped is computed again when more time is given
    if d.get("stop_reason") == "time limit" and config.timeout_s > float(d.get("timeout_s", 0.0)):
        return None
    return d


def relax_structures(structures: Sequence[tuple[str, Any]], config: UIPConfig | None = None, *,
                     cache_dir: str | Path | None = None, progress: bool = True) -> list[UIPResult]:
    """Relax every (id, pymatgen Structure) with the potential; results in input order.

    Cached per structure in `cache_dir` (default `$XDG_CACHE_HOME/esnet-tf/uip`, else
    `~/.cache/esnet-tf/uip`), one JSON file per key (`cache_key`); failed relaxations are not
    cached. `config.workers` processes (spawned; each with one torch thread), a tqdm bar.
    """
    config = config or UIPConfig()
    require_uip(config.model)
    version = package_version(config.model)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ids = [i for i, _ in structures]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"duplicate structure ids: {', '.join(dup[:5])}; give each structure its own id")
    from tqdm.auto import tqdm

    results: dict[int, UIPResult] = {}
    todo: list[tuple[int, str, Any, str]] = []
    for n, (id_, s) in enumerate(structures):
        key = cache_key(s, config, version)
        hit = _read_cache(cache / f"{key}.json", config)
        if hit is not None:
            results[n] = _result(hit, id_, s, config, version, key, cached=True)
        else:
            todo.append((n, id_, s, key))

    def _store(n: int, id_: str, s: Any, key: str, raw: dict) -> None:
        res = _result(raw, id_, s, config, version, key, cached=False)
        if not res.error:
            doc = {**res.to_dict(), "settings": config.key(), "timeout_s": float(config.timeout_s),
                   "input_structure_hash": structure_hash(s)}
            write_text(cache / f"{key}.json", json.dumps(doc, indent=1))
        results[n] = res

    bar = tqdm(total=len(structures), initial=len(results), desc=f"uip relax ({config.model})", unit="structure",
               disable=not progress or None)
    try:
        if todo and config.workers == 1:
            for n, id_, s, key in todo:
                _store(n, id_, s, key, _relax_one(id_, s.as_dict(), config.to_dict()))
                bar.update(1)
        elif todo:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            for k, v in SINGLE_THREAD_ENV.items():  # inherited by the spawned workers before torch loads
                os.environ.setdefault(k, v)
            with ProcessPoolExecutor(max_workers=min(config.workers, len(todo)),
                                     mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(config.to_dict(),)) as pool:
                futures = {pool.submit(_relax_one, id_, s.as_dict(), config.to_dict()): (n, id_, s, key)
                           for n, id_, s, key in todo}
                try:
                    for fut in as_completed(futures):
                        n, id_, s, key = futures[fut]
                        _store(n, id_, s, key, fut.result())
                        bar.update(1)
                except BrokenProcessPool:
                    raise UserError(f"a uip worker process died (out of memory? {config.workers} workers): rerun "
                                    f"with fewer --workers; the {len(results)} finished relaxations are cached in "
                                    f"{cache}") from None
    finally:
        bar.close()
    return [results[n] for n in range(len(structures))]


def _result(d: Mapping[str, Any], id_: str, s: Any, config: UIPConfig, version: str, key: str,
            cached: bool) -> UIPResult:
    comp = s.composition.fractional_composition
    return UIPResult(id=id_, formula=s.composition.reduced_formula, energy_per_atom=float(d["energy_per_atom"]),
                     structure=d.get("structure"), steps=int(d["steps"]), wall_time_s=float(d["wall_time_s"]),
                     converged=bool(d["converged"]), stop_reason=str(d["stop_reason"]), model=config.model,
                     model_version=config.model_version, package_version=version, key=key, cached=cached,
                     error=str(d.get("error", "")), cpu_time_s=float(d.get("cpu_time_s", math.nan)),
                     composition={str(e): float(x) for e, x in comp.items()})


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/esnet-tf/uip`, else `~/.cache/esnet-tf/uip`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "esnet-tf" / "uip"


# ----------------------------------------------------------------------------------------------
# references and formation energies


def elemental_references(results: Iterable[UIPResult]) -> dict[str, dict[str, Any]]:
    """The potential's reference per element: the lowest energy per atom (eV/atom) among the
    relaxed single-element crystals in `results` ({element: {"energy_per_atom", "id"}}).
    Failed relaxations and the GAS_ELEMENTS (no crystalline phase) are left out."""
    refs: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.error or len(r.composition) != 1 or not math.isfinite(r.energy_per_atom):
            continue
        (el,) = r.composition
        if el in GAS_ELEMENTS:
            continue
        if el not in refs or r.energy_per_atom < refs[el]["energy_per_atom"]:
            refs[el] = {"energy_per_atom": r.energy_per_atom, "id": r.id}
    return dict(sorted(refs.items()))


def formation_energy(energy_per_atom: float, composition: Mapping[str, float], mu: Mapping[str, float]) -> float:
    """E_f = E - sum_i x_i mu_i (eV/atom; x_i atomic fractions); NaN when an element has no mu."""
    if not math.isfinite(energy_per_atom) or any(el not in mu for el in composition):
        return math.nan
    return float(energy_per_atom - sum(x * mu[el] for el, x in composition.items()))


def fit_gas_references(train_ids: Iterable[str], energies: Mapping[str, float],
                       compositions: Mapping[str, Mapping[str, float]], dft_formation: Mapping[str, float],
                       crystal_mu: Mapping[str, float], elements: Sequence[str] = GAS_ELEMENTS) -> dict[str, float]:
    """Chemical potentials (eV/atom) of `elements` fitted on TRAINING rows only.

    For each training row r holding a fitted element, at least one crystalline element and no element
    without a reference, the potential's formation energy is E_r - sum_c x_rc mu_c - sum_g x_rg mu_g (c: crystalline
    references `crystal_mu`, g: fitted elements). The mu_g minimise the squared difference to the
    DFT formation energies `dft_formation[r]` (numpy lstsq). Only `dft_formation[id]` for ids in
    `train_ids` is ever read: pass a fold's training ids, never its test ids. An element that no
    usable training row holds gets no mu (its rows' E_f stay NaN). A row of fitted elements only (the
    pool's label-range solids NO, ClF, ...) is skipped: it fixes sums of the fitted potentials alone, and
    there the potential's error is the compound's (compressed gas-element solids lie outside what it was
    trained on), not the elements' (docs/study.md, "Training on the label-range compounds").
    """
    rows, targets = [], []
    for id_ in dict.fromkeys(train_ids):
        comp = compositions[id_]
        gas = [el for el in comp if el in elements]
        if not gas or len(gas) == len(comp) or any(el not in crystal_mu and el not in elements for el in comp):
            continue
        e = energies[id_]
        y = dft_formation[id_]
        if not (math.isfinite(e) and math.isfinite(y)):
            continue
        rows.append([comp.get(el, 0.0) for el in elements])
        targets.append(e - sum(x * crystal_mu[el] for el, x in comp.items() if el not in elements) - y)
    if not rows:
        return {}
    a, b = np.asarray(rows, float), np.asarray(targets, float)
    present = a.any(axis=0)
    sol, *_ = np.linalg.lstsq(a[:, present], b, rcond=None)
    return {el: float(v) for el, v in zip([e for e, p in zip(elements, present) if p], sol)}


# ----------------------------------------------------------------------------------------------
# the CSV and the demo's column source


def write_csv(results: Sequence[UIPResult], out: str | Path, mu: Mapping[str, float]) -> Path:
    """The results as a CSV (CSV_COLUMNS; eV/atom, s), written atomically. `mu`: references
    (eV/atom) per element; a row with an element outside `mu` gets an empty formation energy."""
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results:
            ef = formation_energy(r.energy_per_atom, r.composition, mu)
            w.writerow([r.id, r.formula, _num(r.energy_per_atom), _num(ef), r.steps, f"{r.wall_time_s:.3f}",
                        f"{r.cpu_time_s:.3f}" if math.isfinite(r.cpu_time_s) else "", r.converged, r.stop_reason,
                        r.model, r.model_version, r.error])
    return out


def _num(x: float) -> str:
    return f"{x:.6f}" if math.isfinite(x) else ""


def write_metadata(results: Sequence[UIPResult], out: str | Path, config: UIPConfig,
                   refs: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> Path:
    """The JSON beside a results CSV: potential, versions, settings, elemental references, counts."""
    import platform

    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:  # noqa: BLE001 - metadata only
        torch_version = ""
    doc = {
        "model": config.model, "model_version": config.model_version,
        "package": MODELS[config.model][0], "package_version": package_version(config.model),
        "torch_version": torch_version, "python": platform.python_version(),
        "settings": {**config.key(), "timeout_s": config.timeout_s, "optimizer": "ASE FIRE",
                     "cell_filter": "FrechetCellFilter" if config.relax_cell else "none",
                     "units": {"fmax": "eV/Å", "timeout_s": "s", "energies": "eV/atom"}},
        "elemental_references": {el: dict(v) for el, v in refs.items()},
        "fitted_elements": list(GAS_ELEMENTS),
        "fitted_elements_rule": "no crystalline phase in the data: mu fitted per training fold with "
                                "esnet_tf.uip.fit_gas_references (least squares against DFT E_f on training rows only)",
        "n_structures": len(results), "n_converged": sum(r.converged for r in results),
        "n_failed": sum(bool(r.error) for r in results),
        "total_wall_time_s": round(sum(r.wall_time_s for r in results), 3),
        "total_cpu_time_s": round(sum(r.cpu_time_s for r in results), 3)
        if all(math.isfinite(r.cpu_time_s) for r in results) else None,
    }
    doc.update(extra or {})
    return write_text(out, json.dumps(doc, indent=1) + "\n")


@dataclass
class UIPTable:
    """A results CSV read back (e.g. the demo's `uip_chgnet.csv`) with its JSON's references."""

    energies: dict[str, float]                # id -> eV/atom
    compositions: dict[str, dict[str, float]]  # id -> atomic fractions
    crystal_mu: dict[str, float]              # element -> eV/atom
    meta: dict[str, Any]

    def formation_energies(self, mu: Mapping[str, float] | None = None) -> dict[str, float]:
        """id -> E_f (eV/atom) with the crystalline references plus `mu` (e.g. a fold's fitted gas mu)."""
        allmu = {**self.crystal_mu, **(mu or {})}
        return {i: formation_energy(e, self.compositions[i], allmu) for i, e in self.energies.items()}

    def fold_formation_energies(self, train_ids: Iterable[str], dft_formation: Mapping[str, float]) -> dict[str, float]:
        """E_f of every row with the gas references fitted on `train_ids` only (their DFT E_f)."""
        mu = fit_gas_references(train_ids, self.energies, self.compositions, dft_formation, self.crystal_mu)
        return self.formation_energies(mu)


def demo_uip_csv(model: str = "chgnet") -> Path:
    """The demo's committed UIP column source, `datasets/is_dos/demo/uip_<model>.csv`."""
    from esnet_tf.resources import demo_dir

    return demo_dir() / f"uip_{model}.csv"


def read_table(csv_path: str | Path | None = None, json_path: str | Path | None = None) -> UIPTable:
    """Read a results CSV (default: the demo's) and its JSON (default: same name, .json)."""
    from pymatgen.core import Composition

    path = Path(csv_path) if csv_path else demo_uip_csv()
    meta_path = Path(json_path) if json_path else path.with_suffix(".json")
    if not path.is_file():
        raise UserError(f"{path}: no UIP results (make them with `esnet uip relax ... --out {path.name}`)")
    try:
        meta = json.loads(meta_path.read_text())
        crystal_mu = {el: float(v["energy_per_atom"]) for el, v in meta["elemental_references"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta_path}: not the JSON `esnet uip relax` writes beside {path.name} "
                        f"({type(exc).__name__}: {exc})") from None
    energies, comps = {}, {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("id", "formula", "uip_energy_per_atom") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (not a `esnet uip relax` CSV)")
        for line, row in enumerate(reader, start=2):
            try:
                text = row["uip_energy_per_atom"].strip()
                energies[row["id"]] = float(text) if text else math.nan
                comps[row["id"]] = {str(e): float(x) for e, x in
                                    Composition(row["formula"]).fractional_composition.items()}
            except (ValueError, KeyError) as exc:
                raise UserError(f"{path}:{line}: unreadable row ({exc})") from None
    return UIPTable(energies, comps, crystal_mu, meta)


# ----------------------------------------------------------------------------------------------
# references for new structures, and the accuracy against DFT


def read_references(path: str | Path) -> dict[str, float]:
    """Chemical potentials (eV/atom) from a JSON file: the JSON `esnet uip relax` writes (its
    `elemental_references`, plus `fitted_mu` where present), or a plain {element: eV/atom}."""
    from pymatgen.core import Element

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read references JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: references must be a JSON object {{element: energy in eV/atom}}")
    if "elemental_references" in doc:
        mu = {el: v["energy_per_atom"] if isinstance(v, dict) else v for el, v in doc["elemental_references"].items()}
        mu.update(doc.get("fitted_mu") or {})
    else:
        mu = dict(doc)
    bad = [f"{k}={v!r}" for k, v in mu.items() if not Element.is_valid_symbol(str(k)) or isinstance(v, bool)
           or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise UserError(f"{path}: {', '.join(bad[:3])}: references must map element symbols to finite energies "
                        "in eV/atom")
    return {str(k): float(v) for k, v in mu.items()}


def demo_references(config: UIPConfig, *, cache_dir: str | Path | None = None,
                    progress: bool = True) -> dict[str, dict[str, Any]]:
    """The potential's elemental references (`elemental_references`) from the demo's elemental
    crystals: read from the shipped JSON when it was made with the same model and settings, else
    computed by relaxing the demo's single-element structures (cached)."""
    shipped = demo_uip_csv(config.model).with_suffix(".json")
    try:
        meta = json.loads(shipped.read_text())
        same = ({k: v for k, v in meta["settings"].items() if k in config.key()} == config.key()
                and meta["package_version"] == package_version(config.model))
        if same:
            return dict(meta["elemental_references"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    elementals = [(i, s) for i, s in demo_structures() if len(s.composition.elements) == 1]
    return elemental_references(relax_structures(elementals, config, cache_dir=cache_dir, progress=progress))


def cross_fitted_formation_energies(table: UIPTable, dft_formation: Mapping[str, float],
                                    fold_of: Mapping[str, int]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Each row's E_f (eV/atom) predicted as a test row: for every fold k, the gas references are fitted
    on the rows of the other folds (`fit_gas_references`) and applied to fold k's rows.

    `fold_of`: id -> fold index (e.g. `esnet_tf.splits.kfold_of` of its chemical system); the ids are
    the rows predicted. Returns (id -> E_f, the fitted mu of each fold in fold order). This is what a
    study row or a campaign strategy built on the potential uses, so no row informs its own prediction.
    """
    ids = list(fold_of)
    pred: dict[str, float] = {}
    mus = []
    for k in sorted(set(fold_of.values())):
        train = [i for i in ids if fold_of[i] != k]
        mu = fit_gas_references(train, table.energies, table.compositions, {i: dft_formation[i] for i in train},
                                table.crystal_mu)
        mus.append(mu)
        ef = table.formation_energies(mu)
        pred.update({i: ef[i] for i in ids if fold_of[i] == k})
    return pred, mus


def evaluate(table: UIPTable, dft_formation: Mapping[str, float], chemsys: Mapping[str, str], *,
             folds: int = 5, seeds: Sequence[int] = (0,)) -> dict[str, Any]:
    """MAE (eV/atom) of the potential's formation energies against DFT ones.

    `crystalline_only`: rows whose elements all have crystalline references (no fitting).
    `folds`: per seed, grouped k-fold by chemical system (`esnet_tf.splits.kfold_of`); the gas
    references of each fold are fitted on its training folds only and applied to its test fold;
    the MAE is over every row (each predicted once, as a test row). Rows without a prediction
    (an element no training row held, or a failed relaxation) are counted in `n_missing`.
    """
    from esnet_tf.splits import kfold_of

    ids = [i for i in table.energies if i in dft_formation]
    crystal = table.formation_energies()
    ok = [i for i in ids if math.isfinite(crystal[i])]
    out: dict[str, Any] = {"n_rows": len(ids), "crystalline_only": {
        "n": len(ok), "mae": float(np.mean([abs(crystal[i] - dft_formation[i]) for i in ok])) if ok else math.nan}}
    per_seed = []
    for seed in seeds:
        pred, mus = cross_fitted_formation_energies(table, dft_formation, {i: kfold_of(chemsys[i], folds, seed)
                                                                           for i in ids})
        have = [i for i in ids if math.isfinite(pred[i])]
        gas = [i for i in have if any(el in GAS_ELEMENTS for el in table.compositions[i])]
        per_seed.append({"seed": seed, "n": len(have), "n_missing": len(ids) - len(have),
                         "mae": float(np.mean([abs(pred[i] - dft_formation[i]) for i in have])),
                         "mae_rows_with_fitted_elements": float(np.mean([abs(pred[i] - dft_formation[i]) for i in gas]))
                         if gas else math.nan, "n_rows_with_fitted_elements": len(gas),
                         "fitted_mu_per_fold": mus})
    out["grouped_kfold"] = {"folds": folds, "per_seed": per_seed,
                            "mae_mean_over_seeds": float(np.mean([p["mae"] for p in per_seed]))}
    return out


# ----------------------------------------------------------------------------------------------
# the potential's formation energy as a model input (`esnet predict ... --uip CSV`)

#: the model input CHGNet's formation energy feeds (eV/atom; `esnet_tf.model.UIP_FORMATION_ENERGY`)
UIP_INPUT = "uip_formation_energy_per_atom"
#: how to make the CSV a model that takes UIP_INPUT needs
UIP_RELAX_HINT = "esnet uip relax STRUCTURES... --out uip.csv"


class UIPInputs:
    """CHGNet's formation energies (eV/atom) of a model's inputs, from a CSV of `esnet uip relax` (CSV_COLUMNS).

    Rows are matched by `id` to the inputs' ids. E_f = uip_energy_per_atom - sum_i x_i mu_i with the chemical
    potentials the MODEL was trained with (its model.json `uip` record: `references`, eV/atom), never the CSV's
    own formation-energy column, whose references may differ. Refused in one line: a CSV made with another
    potential or weights version than the model's, an input id the CSV lacks, a failed relaxation, an element
    without a stored reference, a formula that differs from the input's. No torch: the CSV is only read.
    """

    def __init__(self, path: str | Path, record: Mapping[str, Any], model: str) -> None:
        self.path, self.model = Path(path), model
        self.references = {str(k): float(v) for k, v in dict(record.get("references") or {}).items()}
        self.potential = (str(record.get("model", "")), str(record.get("model_version", "")))
        if not self.references or not all(self.potential):
            raise UserError(f"model {model}: its model.json `uip` record lacks the potential's references or version; "
                            "re-ship the model (scripts/train_pretrained.py)")
        if not self.path.is_file():
            raise UserError(f"--uip {self.path}: no such file; make it with `{UIP_RELAX_HINT}` on the inputs' "
                            "structures")
        self.rows: dict[str, tuple[float, str, str]] = {}  # id -> (eV/atom, formula, error)
        with open(self.path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = ("id", "formula", "uip_energy_per_atom", "model", "model_version")
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"--uip {self.path}: missing column(s) {', '.join(missing)}: not a CSV of "
                                f"`{UIP_RELAX_HINT}`")
            for line, row in enumerate(reader, start=2):
                made = (row["model"], row["model_version"])
                if made != self.potential:
                    raise UserError(f"--uip {self.path}:{line}: made with {made[0]} {made[1]}, but model {model} was "
                                    f"trained with {self.potential[0]} {self.potential[1]} energies: rerun "
                                    f"`esnet uip relax ... --model {self.potential[0]} --model-version "
                                    f"{self.potential[1]} --out uip.csv`")
                text = row["uip_energy_per_atom"].strip()
                try:
                    energy = float(text) if text else math.nan
                except ValueError:
                    raise UserError(f"--uip {self.path}:{line}: uip_energy_per_atom {text!r} is not a number "
                                    "(eV/atom)") from None
                self.rows[row["id"]] = (energy, row["formula"], (row.get("error") or "").strip())
        self._fractions: dict[str, dict[str, float]] = {}

    def fractions(self, formula: str) -> dict[str, float]:
        """Atomic fractions of `formula` (cached; formulas repeat across rows)."""
        if formula not in self._fractions:
            from pymatgen.core import Composition

            try:
                comp = Composition(formula)
            except (ValueError, KeyError):
                raise UserError(f"--uip {self.path}: formula {formula!r} unreadable") from None
            self._fractions[formula] = {str(e): float(x) for e, x in comp.fractional_composition.items()}
        return self._fractions[formula]

    def formation_energies(self, ids: Sequence[str], formulas: Sequence[str] | None = None) -> np.ndarray:
        """E_f (eV/atom), float32 (N, 1), of the inputs `ids` (their `formulas`, when given, must be the CSV's)."""
        ids = [str(i) for i in ids]
        absent = [i for i in ids if i not in self.rows]
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise UserError(f"--uip {self.path}: no row for input id {', '.join(absent[:3])}{more} ({len(absent)} of "
                            f"{len(ids)}); relax their structures with `{UIP_RELAX_HINT}` under the same ids (model "
                            f"{self.model} takes {UIP_INPUT})")
        out = np.empty((len(ids), 1), np.float32)
        for n, id_ in enumerate(ids):
            energy, formula, error = self.rows[id_]
            if error or not math.isfinite(energy):
                raise UserError(f"--uip {self.path}: id {id_}: no CHGNet energy ({error or 'empty'}); rerun "
                                f"`{UIP_RELAX_HINT}` for it or leave the input out")
            frac = self.fractions(formula)
            if formulas is not None and str(formulas[n]) and not _same_fractions(self.fractions(str(formulas[n])), frac):
                raise UserError(f"--uip {self.path}: id {id_} is {formula} there but {formulas[n]} in the inputs: "
                                "the ids must name the same structures")
            lacking = sorted(el for el in frac if el not in self.references)
            if lacking:
                raise UserError(f"--uip {self.path}: id {id_} ({formula}): model {self.model} stores no "
                                f"{self.potential[0]} reference for {', '.join(lacking)} (it has "
                                f"{len(self.references)} elements: model.json `uip.references`); it cannot take "
                                "this input")
            out[n, 0] = formation_energy(energy, frac, self.references)
        return out


def _same_fractions(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)
