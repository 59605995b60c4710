"""The study's data: a snapshot of the labels files, featurized once, and the rows each unit trains on.

A study reads a *snapshot* of the demo labels (`labels.csv`: one IS-DOS and one RS-DOS per relaxed
structure; `labels_augmented.csv`: the same rows plus IS-augmentation variants, each an IS single
point of a perturbed initial structure labelled with its parent's relaxed energy), copied into the
study's folder once (the DFT job may still be adding rows). Every cached result is keyed by the
content hash of the snapshot files it reads (`file_hash`). Energies in eV/atom.
"""
from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from esnet_tf.dft.pool import POOL_TRAINING_ROLES  # the pool's rows trained on; its candidates are the test set
from esnet_tf.errors import UserError

if TYPE_CHECKING:
    from esnet_tf.screening.cost import Costs
    from esnet_tf.uip import UIPTable

#: the snapshot files in a study's folder (POOL_SNAPSHOT: the test set's labels, with grouping POOL only)
SNAPSHOT, AUG_SNAPSHOT = "labels_snapshot.csv", "labels_augmented_snapshot.csv"
POOL_SNAPSHOT = "pool_labels_snapshot.csv"
#: the arrays a unit trains and predicts on (one row per example)
ARRAY_KEYS = ("dos_up", "dos_down", "composition", "id", "formula", "chemsys", "formation_energy_per_atom",
              "e_above_hull")
#: what the outer (test) folds can be grouped by, each an array of `StudyData.is_`: the chemical system
#: (the default), or the structure prototype (leave-prototype-out folds: the test fold's crystal
#: structures are absent from training; the elements' fcc/bcc/hcp/... are ordinary groups), or POOL: no folds, an
#: external test set (train on every demo row and the pool's elements, competitors and label-range rows, test on
#: the pool's candidates: hypothetical ternaries in chemical systems no training row has)
GROUPINGS = ("chemsys", "prototype", "pool")
#: the grouping whose test set is the pool: one unit per seed, test fold POOL_TEST_FOLD of POOL_FOLDS (the training
#: rows carry fold index POOL_FOLDS, outside 0..POOL_FOLDS-1, so that `Unit.train_idx` is exactly the training rows)
POOL, POOL_FOLDS, POOL_TEST_FOLD = "pool", 1, 0


def file_hash(*paths: str | Path) -> str:
    """First 12 hex digits of the sha256 of the files' contents (in order, each followed by a NUL byte)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:  # streamed: the hash never holds a whole file
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:12]


def take_pool_snapshot(out: Path, pool: Path, new: bool = False) -> bool:
    """Copy pool/labels.csv into `out` as POOL_SNAPSHOT unless it is there and `new` is false; True if copied
    (the pool grows while its DFT job runs: committed results never follow it silently)."""
    from esnet_tf.atomic import write_text
    from esnet_tf.readers.limits import read_bounded

    if not new and (out / POOL_SNAPSHOT).is_file():
        return False
    src = pool / "labels.csv"
    if not src.is_file():
        raise UserError(f"{src}: no such labels file: give the pool dataset's folder (--pool DIR)")
    write_text(out / POOL_SNAPSHOT, read_bounded(src, 0.125).decode("utf-8"))
    return True


def take_snapshot(out: Path, demo: Path, new: bool = False) -> bool:
    """Copy demo/labels.csv and demo/labels_augmented.csv into `out` unless a snapshot is there and
    `new` is false; True if copied."""
    from esnet_tf.atomic import write_text
    from esnet_tf.readers.limits import read_bounded

    if not new and (out / SNAPSHOT).is_file() and (out / AUG_SNAPSHOT).is_file():
        return False
    for src, dst in ((demo / "labels.csv", SNAPSHOT), (demo / "labels_augmented.csv", AUG_SNAPSHOT)):
        if not src.is_file():
            raise UserError(f"{src}: no such labels file: give the demo dataset's folder (--demo DIR)")
        write_text(out / dst, read_bounded(src, 0.125).decode("utf-8"))  # bounded, like every labels table
    return True


def load_rows(labels: Path, column: str, demo: Path, *, only_variants: bool = False,
              require_energy: bool = True) -> dict[str, np.ndarray]:
    """Featurize every row's DOS file (`path` = IS, `rs_path` = RS) of a labels snapshot into arrays.

    Paths in the snapshot are relative to `demo`. `only_variants`: the augmented table's variant
    rows (id != parent_id), with `parent_id` and `variant` columns. `require_energy` false: rows
    without a relaxed formation energy are read (NaN) instead of refused.
    """
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    rows = read_labels(labels, path_column=column, require_energy=require_energy)
    if only_variants:
        rows = [r for r in rows if r.get("parent_id", r.id) not in ("", r.id)]
    arrays = stack_examples([featurize(demo / r.path, id=r.id) for r in rows], {r.id: r for r in rows})
    arrays["prototype"] = np.array([r.prototype for r in rows], dtype=str)
    if only_variants:
        arrays["parent_id"] = np.array([r["parent_id"] for r in rows], dtype=str)
        arrays["variant"] = np.array([r.get("variant", "") for r in rows], dtype=str)
    return arrays


def cached_arrays(work: Path, name: str, build: Callable[[], dict]) -> dict[str, np.ndarray]:
    """Featurized arrays kept in work/<name>.npz (name carries the snapshot hash)."""
    from esnet_tf.atomic import atomic_path

    path = work / f"{name}.npz"
    if path.is_file():
        from esnet_tf.readers.limits import load_npz, npz_members

        return load_npz(path, list(npz_members(path)))  # bounded; no pickle
    arrays = build()
    work.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return arrays


def _keys(arrays: dict) -> tuple[str, ...]:
    """ARRAY_KEYS plus the named energy inputs present (`esnet_tf.isdos.ENERGY_INPUTS`, (N, 1) eV/atom)."""
    from esnet_tf.isdos import ENERGY_INPUTS

    return ARRAY_KEYS + tuple(k for k in ENERGY_INPUTS if k in arrays)


def take(arrays: dict, idx: np.ndarray, id_suffix: str = "") -> dict[str, np.ndarray]:
    """The ARRAY_KEYS (and energy inputs) of some rows; ids suffixed (to keep ids unique when two views of
    a row are stacked)."""
    out = {k: arrays[k][idx] for k in _keys(arrays)}
    if id_suffix:
        out["id"] = np.char.add(out["id"], id_suffix)
    return out


def concat(*parts: dict) -> dict[str, np.ndarray]:
    """The ARRAY_KEYS (and the energy inputs all parts have) of several row sets, stacked in order."""
    keys = [k for k in _keys(parts[0]) if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def kfold(chemsys: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each row: grouped k-fold by the rows' group labels (`esnet_tf.splits.kfold_of`:
    the chemical system, or another group label such as the structure prototype)."""
    from esnet_tf.splits import kfold_of

    return np.array([kfold_of(str(c), folds, seed) for c in chemsys], int)


def stack_all(a: dict, b: dict, source: str) -> dict[str, np.ndarray]:
    """Every array of `a` and `b` (the same keys, the same row shapes) stacked, `a`'s rows first; UserError naming
    `source` when they do not match."""
    if set(a) != set(b) or any(np.shape(a[k])[1:] != np.shape(b[k])[1:] for k in a):
        raise UserError(f"{source}: its featurized rows do not match the demo's (arrays "
                        f"{sorted(set(a) ^ set(b)) or [k for k in a if np.shape(a[k])[1:] != np.shape(b[k])[1:]]}): "
                        "featurize both with the same esnet-tf")
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def check_training_roles(roles: Iterable[str], flag: str = "--pool-training-roles") -> tuple[str, ...]:
    """`roles` as a tuple if each is one of POOL_TRAINING_ROLES (the pool's rows a study may train on), else a
    UserError naming the choices; the default trains on all of them, fewer is an ablation."""
    roles = tuple(roles)
    bad = [r for r in roles if r not in POOL_TRAINING_ROLES] + sorted({r for r in roles if roles.count(r) > 1})
    if bad:
        raise UserError(f"pool training role(s) {bad} unknown or repeated: choose from "
                        f"{', '.join(POOL_TRAINING_ROLES)} ({flag}; "
                        "candidates are the test set, never trained on)")
    return roles


def check_grouping(grouping: str) -> str:
    """`grouping` if it names one of GROUPINGS, else a one-line UserError."""
    if grouping not in GROUPINGS:
        raise UserError(f"unknown grouping {grouping!r} of the outer folds: choose --group-by from "
                        f"{', '.join(GROUPINGS)}")
    return grouping


def fold_sizes(fold_of: np.ndarray, folds: int) -> list[int]:
    """Structures in each fold 0..folds-1."""
    return np.bincount(np.asarray(fold_of, int), minlength=folds).tolist()


class StudyData:
    """A snapshot's arrays: `is_` and `rs` (one row per structure, same order), `aug` (variants only).

    `hash`: labels.csv's snapshot; `aug_hash`: labels.csv's and labels_augmented.csv's together.
    Variants whose parent is not (yet) in labels.csv are left out (`n_orphan_variants`).

    With `pool` (the hypothetical pool's folder, grouping POOL): the pool snapshot's rows follow the demo's in
    `is_` and `rs` (`is_pool` marks them; both hashes then include POOL_SNAPSHOT). A pool row enters only with a
    relaxed formation energy and a chemical system no demo row has (`pool_left_out` names the others). Its
    elements, competitors and label-range rows (`pool_training_roles`, default POOL_TRAINING_ROLES; an ablation
    names fewer and the others are left out, `pool_left_out["role_not_trained_on"]`, its hashes tagged) are
    trained on; its candidates
    (`is_pool_test`) are the test set, which shares neither structures nor chemical systems with training
    (candidates are ternaries; the pool holds no other row of their systems).
    """

    def __init__(self, out: Path, work: Path, demo: Path, pool: Path | None = None,
                 pool_training_roles: Sequence[str] = POOL_TRAINING_ROLES) -> None:
        self.labels, self.aug_labels = out / SNAPSHOT, out / AUG_SNAPSHOT
        self.hash = file_hash(self.labels)
        self.aug_hash = file_hash(self.labels, self.aug_labels)
        t = time.time()
        self.is_ = cached_arrays(work, f"is_{self.hash}", lambda: load_rows(self.labels, "path", demo))
        self.rs = cached_arrays(work, f"rs_{self.hash}", lambda: load_rows(self.labels, "rs_path", demo))
        self.aug = cached_arrays(work, f"aug_{self.aug_hash}",
                                 lambda: load_rows(self.aug_labels, "path", demo, only_variants=True))
        if not np.array_equal(self.is_["id"], self.rs["id"]):
            raise UserError(f"{self.labels}: IS and RS rows of the snapshot are not in the same order")
        known = set(self.is_["id"].tolist())
        keep = np.array([p in known for p in self.aug["parent_id"]], bool)
        self.n_orphan_variants = int((~keep).sum())
        self.aug = {k: v[keep] for k, v in self.aug.items()}
        chemsys_of = dict(zip(self.is_["id"].tolist(), self.is_["chemsys"].tolist()))
        bad = [v for v, p, c in zip(self.aug["id"], self.aug["parent_id"], self.aug["chemsys"]) if chemsys_of[p] != c]
        if bad:
            raise UserError(f"{self.aug_labels}: variants {bad[:3]} do not share their parent's chemical system")
        self.featurize_s = time.time() - t
        self._costs = None
        self.demo = Path(demo)
        self._add_is_energies()
        self.pool: Path | None = None
        self.pool_labels: Path | None = None
        self.is_pool = np.zeros(len(self.is_["id"]), bool)
        self.is_pool_test = np.zeros(len(self.is_["id"]), bool)
        self.pool_left_out: dict[str, list[str]] = {}
        self.pool_training_roles = check_training_roles(pool_training_roles)
        if pool is not None:
            self._add_pool(out, work, Path(pool))
            self.featurize_s = time.time() - t

    def _add_pool(self, out: Path, work: Path, pool: Path) -> None:
        """Append the pool snapshot's rows (see the class docstring) to `is_` and `rs`; re-key both hashes."""
        from esnet_tf.featurize import fill_energies
        from esnet_tf.labels import labels_by_id

        self.pool, self.pool_labels = pool, out / POOL_SNAPSHOT
        p_hash = file_hash(self.pool_labels)
        p_is = cached_arrays(work, f"pool_is_{p_hash}",
                             lambda: load_rows(self.pool_labels, "path", pool, require_energy=False))
        p_rs = cached_arrays(work, f"pool_rs_{p_hash}",
                             lambda: load_rows(self.pool_labels, "rs_path", pool, require_energy=False))
        if not np.array_equal(p_is["id"], p_rs["id"]):
            raise UserError(f"{self.pool_labels}: IS and RS rows of the pool snapshot are not in the same order")
        fill_energies(p_is, labels_by_id(self.pool_labels, path_column=None, require_energy=False))
        shared = sorted(set(p_is["id"].tolist()) & set(self.is_["id"].tolist()))
        if shared:
            raise UserError(f"{self.pool_labels}: id(s) {shared[:3]} are also demo rows: a test set shares no row "
                            "with training")
        demo_systems = set(self.is_["chemsys"].tolist())
        no_energy = ~np.isfinite(p_is["formation_energy_per_atom"].astype(float))
        in_demo = np.array([c in demo_systems for c in p_is["chemsys"].tolist()], bool)
        self.pool_left_out = {"no_relaxed_formation_energy": p_is["id"][no_energy].tolist(),
                              "chemical_system_in_the_demo": p_is["id"][in_demo & ~no_energy].tolist()}
        with open(self.pool_labels, newline="", encoding="utf-8") as fh:
            role = {r["id"]: r.get("role") or "" for r in csv.DictReader(fh)}
        roles = [role.get(i, "") for i in p_is["id"].tolist()]
        not_trained = set(POOL_TRAINING_ROLES) - set(self.pool_training_roles)  # an ablation's left-out roles
        dropped = np.array([r in not_trained for r in roles], bool)
        if not_trained:
            self.pool_left_out["role_not_trained_on"] = p_is["id"][dropped & ~no_energy & ~in_demo].tolist()
        keep = ~no_energy & ~in_demo & ~dropped
        test = np.array([r not in POOL_TRAINING_ROLES for r in roles], bool)
        if not (keep & test).any():
            raise UserError(f"{self.pool_labels}: no pool candidate with a relaxed formation energy in a chemical "
                            "system absent from the demo: nothing to test on")
        train_systems = set(p_is["chemsys"][keep & ~test].tolist())
        shared_sys = sorted({c for c in p_is["chemsys"][keep & test].tolist() if c in train_systems})
        if shared_sys:
            raise UserError(f"{self.pool_labels}: candidates share chemical system(s) {shared_sys[:3]} with the "
                            "pool's training rows: a test set shares no chemical system with training")
        n_demo = len(self.is_["id"])
        self.is_ = stack_all(self.is_, {k: v[keep] for k, v in p_is.items()}, str(self.pool_labels))
        self.rs = stack_all(self.rs, {k: v[keep] for k, v in p_rs.items()}, str(self.pool_labels))
        self.is_pool = np.arange(len(self.is_["id"])) >= n_demo
        self.is_pool_test = np.concatenate([np.zeros(n_demo, bool), test[keep]])
        self.demo_hash = self.hash  # labels.csv's snapshot alone (what the training rows come from)
        self.hash = file_hash(self.labels, self.pool_labels)
        self.aug_hash = file_hash(self.labels, self.aug_labels, self.pool_labels)
        if not_trained:  # an ablation's units never pass for the full training set's
            tag = "-train-" + "+".join(self.pool_training_roles or ("demo",))
            self.hash, self.aug_hash = self.hash + tag, self.aug_hash + tag

    @property
    def y(self) -> np.ndarray:
        """Relaxed formation energy of each structure (eV/atom)."""
        return self.is_["formation_energy_per_atom"].astype(float)

    def folds(self, folds: int, seed: int, grouping: str = "chemsys") -> np.ndarray:
        """Fold of each structure, grouped by `grouping` (GROUPINGS: chemical system or prototype; POOL: the pool's
        candidates POOL_TEST_FOLD, every training row POOL_FOLDS, whatever the seed)."""
        if check_grouping(grouping) == POOL:
            if self.pool is None:
                raise UserError("the pool test set needs the pool's rows: StudyData(..., pool=DIR) (--pool DIR)")
            return np.where(self.is_pool_test, POOL_TEST_FOLD, POOL_FOLDS)
        return kfold(self.is_[grouping], folds, seed)

    # ------------------------------------------------ energy inputs of the cheap baselines (issues 32, 33)

    def _add_is_energies(self) -> None:
        """Give `is_` and `aug` the IS energies of their snapshot rows (`esnet_tf.featurize.fill_energies`:
        is_formation_energy_per_atom, is_energy_per_atom, (N, 1) eV/atom, NaN where a row has none); the
        featurized arrays cached before the energy inputs existed lack them."""
        from esnet_tf.featurize import fill_energies
        from esnet_tf.labels import labels_by_id

        fill_energies(self.is_, labels_by_id(self.labels, path_column=None, require_energy=False))
        if len(self.aug["id"]):
            fill_energies(self.aug, labels_by_id(self.aug_labels, path_column=None, require_energy=False))

    @property
    def is_formation_energy(self) -> np.ndarray:
        """IS single point's formation energy of each structure (eV/atom; NaN where unknown)."""
        from esnet_tf.isdos import IS_FORMATION_ENERGY

        return self.is_[IS_FORMATION_ENERGY].reshape(-1).astype(float)

    def uip_table(self, model: str = "chgnet") -> "UIPTable":
        """The potential's relaxations of the demo's initial structures (`<demo>/uip_<model>.csv` and its JSON,
        `esnet_tf.uip.read_table`); UserError naming the file when absent. Read once."""
        from esnet_tf.uip import read_table

        cache = self.__dict__.setdefault("_uip", {})
        if model not in cache:
            cache[model] = read_table(self.demo / f"uip_{model}.csv")
            if self.pool is not None:
                cache[model] = merge_uip_tables(cache[model], read_table(self.pool / f"uip_{model}.csv"),
                                                self.pool / f"uip_{model}.csv")
        for folder, rows in ((self.demo, ~self.is_pool), (self.pool, self.is_pool)):
            missing = [i for i in self.is_["id"][rows].tolist() if i not in cache[model].energies]
            if missing:
                raise UserError(f"{folder / f'uip_{model}.csv'}: no relaxation of {len(missing)} snapshot structure(s) "
                                f"({', '.join(missing[:3])}): rerun `esnet uip relax --demo --labels "
                                f"{folder / 'labels.csv'} --out {folder / f'uip_{model}.csv'}`")
        return cache[model]

    def costs(self) -> "Costs":
        """DFT wall times by id (`esnet_tf.screening.Costs`) from the snapshot."""
        from esnet_tf.screening import costs_from_labels

        if self._costs is None:
            self._costs = costs_from_labels(self.labels)
            if self.pool_labels is not None:
                from esnet_tf.screening.cost import Costs

                pool_costs = costs_from_labels(self.pool_labels)
                self._costs = Costs({**self._costs.by_id, **pool_costs.by_id},
                                    f"{self._costs.source} and {pool_costs.source}")
        return self._costs


def merge_uip_tables(demo: "UIPTable", pool: "UIPTable", source: Path) -> "UIPTable":
    """The demo's and the pool's potential results as one table: every row of both; each element's crystalline
    reference the lower of the two (eV/atom), as `esnet uip relax` merges references. UserError naming `source`
    when the potential, its version or its settings differ, or when an id is in both."""
    from esnet_tf.uip import UIPTable

    keys = ("model", "model_version", "package_version", "settings")
    differ = [k for k in keys if demo.meta.get(k) != pool.meta.get(k)]
    if differ:
        raise UserError(f"{source}: made with another {', '.join(differ)} than the demo's: rerun `esnet uip relax` "
                        "on the pool with the demo's settings")
    shared = sorted(set(demo.energies) & set(pool.energies))
    if shared:
        raise UserError(f"{source}: id(s) {shared[:3]} are also in the demo's results")
    mu = dict(demo.crystal_mu)
    for el, v in pool.crystal_mu.items():
        mu[el] = min(v, mu.get(el, v))
    return UIPTable({**demo.energies, **pool.energies}, {**demo.compositions, **pool.compositions}, mu, dict(demo.meta))


def augmented_training_rows(data: StudyData, fold_of_is: np.ndarray, k: int, folds: int, seed: int,
                            grouping: str = "chemsys") -> np.ndarray:
    """Indices into data.aug of the variants allowed in fold k's training set (their group outside fold k).

    `grouping` (GROUPINGS) as the structures' `fold_of_is`: a variant's chemical system is its own (the
    snapshot checks it is its parent's); any other group label (the prototype) is its parent's, so a
    variant always follows its parent's fold. Raises AssertionError if a selected variant's parent is a
    test-fold structure or not a training structure.
    """
    if check_grouping(grouping) == POOL:  # every structure outside the test set trains, with all its variants
        groups, vfold = None, np.full(len(data.aug["id"]), POOL_FOLDS)
    elif grouping == "chemsys":
        groups = data.aug["chemsys"]
    else:
        group_of = dict(zip(data.is_["id"].tolist(), data.is_[grouping].tolist()))
        groups = np.array([group_of.get(p, "") for p in data.aug["parent_id"].tolist()], dtype=str)
    if groups is not None:
        vfold = kfold(groups, folds, seed)
    sel = np.flatnonzero(vfold != k)
    test_ids = set(data.is_["id"][fold_of_is == k].tolist())
    train_ids = set(data.is_["id"][fold_of_is != k].tolist())
    parents = set(data.aug["parent_id"][sel].tolist())
    if parents & test_ids:
        raise AssertionError(f"variants of test-fold structures in training: {sorted(parents & test_ids)[:5]}")
    if not parents <= train_ids:
        raise AssertionError(f"variants whose parent is not a training structure: {sorted(parents - train_ids)[:5]}")
    return sel


# ---------------------------------------------------------------- CPU seconds per candidate


def candidate_cpu_seconds(demo: Path, ids: list[str] | np.ndarray) -> dict[str, dict]:
    """Mean CPU seconds per structure of each per-candidate calculation, over the `ids` of the demo at `demo`.

    `is_single_point`: the DFT IS single point (`is_cpu_time` of the calculation's result.json; where a result
    predates CPU timing, its `is_wall_time`: the engine runs serially, CPU / wall = 0.99 in the median where
    both are recorded); `dft_relaxation`: the DFT relaxation after it (`relax_cpu_time`, else
    `relax_wall_time`); `uip_relaxation`: CHGNet's relaxation (`cpu_time_s` of `uip_chgnet.csv`);
    `sevennet_relaxation`: SevenNet's (`uip_sevennet.csv`). Each:
    {"mean_s", "n", "n_cpu_timed"}; a step with no id found is left out.
    """
    import csv
    import json

    from esnet_tf.labels import open_table
    from esnet_tf.readers.limits import read_bounded

    wanted = {str(i) for i in ids}
    by_step: dict[str, list[tuple[float, bool]]] = {"is_single_point": [], "dft_relaxation": [], "uip_relaxation": [],
                                                    "sevennet_relaxation": []}
    labels = demo / "labels.csv"
    if labels.is_file():
        with open_table(labels) as fh:
            for row in csv.DictReader(fh):
                if row.get("id") not in wanted or not row.get("path"):
                    continue
                result = demo / Path(row["path"]).parent / "result.json"
                try:
                    doc = json.loads(read_bounded(result, 0.125))
                except (OSError, ValueError):  # missing, unreadable, too large (InputLimitError), not JSON
                    continue
                for step, key in (("is_single_point", "is"), ("dft_relaxation", "relax")):
                    cpu, wall = doc.get(f"{key}_cpu_time"), doc.get(f"{key}_wall_time")
                    value = cpu if cpu is not None else wall
                    if value is not None:
                        by_step[step].append((float(value), cpu is not None))
    for step, model in (("uip_relaxation", "chgnet"), ("sevennet_relaxation", "sevennet")):
        uip = demo / f"uip_{model}.csv"  # the file name `uip_table` reads
        if uip.is_file():
            with open_table(uip) as fh:
                for row in csv.DictReader(fh):
                    if row.get("id") in wanted and (row.get("cpu_time_s") or "").strip():
                        by_step[step].append((float(row["cpu_time_s"]), True))
    return {step: {"mean_s": float(np.mean([v for v, _ in got])), "n": len(got),
                   "n_cpu_timed": int(sum(c for _, c in got))}
            for step, got in by_step.items() if got}
