"""The hypothetical screening pool: element substitution on ternary prototypes, with the competing
binaries of every chemical system and the elemental phases of the elements the demo lacks.

Rebuild (many process-hours on 2 cores, resumable, computed in chunks): `esnet dft pool --workers 2`.

What the pool is (fixed before any result is seen; the rule is written into provenance.json):

- Families of candidates, each a Cartesian product of element sets with the demo's own chemical
  systems removed, shuffled with `POOL_SEED` and cut at a fixed count:
  half-Heusler XYZ (C1_b), full Heusler X2YZ (L2_1) and inverse Heusler (XA) on the same
  (X, Y, Z) systems; cubic perovskite ABO3 with A on the A site and swapped; and a non-cubic family,
  the layered rocksalt ABO2 (alpha-NaFeO2, R-3m), relaxed with the optimizer.
- Competitors: for every pair of elements of a candidate's system, the binaries of `PAIR_PROTOTYPES`
  (metal pairs: B2, and L1_2 on both sides; metal-oxygen pairs: rocksalt AO, fluorite AO2 and
  anti-fluorite A2O), and the elemental phases; `e_above_hull` is then against the hull of the demo
  and the pool together, over the prototypes computed (not the full ICSD hull: a missing competitor
  can only make a candidate look more stable).
- New elements (`NEW_ELEMENTS`, so that the domain grows past 45 elements): fcc and bcc for each,
  hcp (optimizer) for those whose ground state is hcp, alpha-Sn (diamond) and sc Bi.
- Label range (role `label_range`, added 2026-12-07): every pair of the demo's gas elements
  (`LABEL_RANGE_ELEMENTS`: N, O, F, Cl, whose references are molecules) in the 2-atom cubic prototypes
  rocksalt, B2 and zincblende (`LABEL_RANGE_PROTOTYPES`), EOS-relaxed like every cubic cell but with
  up to `LABEL_RANGE_EOS_MAX_EXTRA` extra scan points (the contact rule compresses them far more). Strongly
  unstable by construction (formation energies of several eV/atom against the molecules), so that the
  training data reaches past 3 eV/atom and a model has seen what a strongly unstable compound's IS-DOS
  looks like; they are trained on (`POOL_TRAINING_ROLES`), never candidates. Their chemical systems'
  known molecular compounds (NO2, OF2, ...) are not computed: their `e_above_hull` is against the
  elements only.

Order (`computing_order`): new elemental phases first; then the label-range compounds (18 cheap
2-atom cells, added 2026-12-07 after 120 rows were done); then one chemical system at a time in the
order of the draw, its cubic candidates followed by the competitors no earlier system needed, so that
the out-of-sample set and the hull-complete set grow together; the layered family's optimizer
relaxations (about 3 process-hours each) last, each after its system's competitors. The order decides
only when a task runs, never which tasks are planned; it changed twice (the pool README lists how).
Tasks the demo has already computed (same structure and settings, same cache key) are read from the
demo's cache and not recomputed.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.dft.prototypes import noncubic_structure, prototype_structure
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task

#: seed of the shuffles that pick the systems of each family (the date the pool was fixed)
POOL_SEED = 20261206
#: elements the demo lacks, with the prototypes computed for their elemental reference
NEW_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Be": ("fcc", "bcc", "hcp"), "Cd": ("fcc", "bcc", "hcp"), "Hf": ("fcc", "bcc", "hcp"),
    "Ta": ("fcc", "bcc"), "Mo": ("fcc", "bcc"), "W": ("fcc", "bcc"), "Re": ("fcc", "bcc", "hcp"),
    "Ru": ("fcc", "bcc", "hcp"), "Rh": ("fcc", "bcc"), "Ir": ("fcc", "bcc"), "Sn": ("fcc", "bcc", "diamond"),
    "Pb": ("fcc", "bcc"), "Bi": ("fcc", "bcc", "sc"),
}
#: element sets of each family (X, Y, Z) / (A, B); O is the anion of the oxide families
HEUSLER_SETS = (("Co", "Ni", "Rh", "Ir", "Ru", "Pd"), ("Ti", "Zr", "Hf", "Nb", "Ta", "Mn"),
                ("Al", "Ga", "Ge", "Sn", "Sb", "Bi"))
PEROVSKITE_SETS = (("Ca", "Sr", "Ba", "Na", "K", "Cd", "Pb", "Bi", "Y"),
                   ("Ti", "Zr", "Hf", "Nb", "Ta", "Mo", "W", "Sn", "Ru", "Rh", "Ir", "Re", "V", "Al", "Ga", "Sc"))
LAYERED_SETS = (("Li", "Na", "K"),
                ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Y", "Nb", "Mo", "Ru", "Rh", "Al", "Ga", "In",
                 "Ir", "Ta", "Sn", "Bi"))
#: systems drawn per family (candidates: 3 per Heusler system, 2 per perovskite, 1 per layered)
N_SYSTEMS = {"heusler": 84, "perovskite": 60, "layered_abo2": 40}
FAMILIES = tuple(N_SYSTEMS)
ANION = "O"
#: the label-range compounds: every pair of these elements in each of these prototypes
LABEL_RANGE_ELEMENTS = ("N", "O", "F", "Cl")
LABEL_RANGE_PROTOTYPES = ("rocksalt", "cscl", "zincblende")
#: extra EOS points the label-range compounds may take (the contact rule starts these gas-element pairs so
#: compressed that the default 4 extra points end with the energy still falling: NO rocksalt at 1.46 times
#: the contact lattice constant, 2026-12-07)
LABEL_RANGE_EOS_MAX_EXTRA = 14
#: roles of the pool's rows; the pool's rows of POOL_TRAINING_ROLES are trained on, its candidates are the
#: out-of-sample test set
ROLES = ("candidate", "competitor", "element", "label_range")
POOL_TRAINING_ROLES = ("element", "competitor", "label_range")
#: binaries of a pair: metal-metal, and metal-oxygen
PAIR_PROTOTYPES = {"metal": (("cscl", "AB"), ("l12", "AB"), ("l12", "BA")),
                   "oxide": (("rocksalt", "MO"), ("fluorite", "MO2"), ("fluorite", "OM2"))}

#: the demo's ternary systems (kept out of the pool: out-of-sample use needs systems the demo lacks)
def demo_systems() -> set[frozenset[str]]:
    """Chemical systems of the demo plan (element sets)."""
    from esnet_tf.dft.demo import demo_tasks, parent_of

    return {frozenset(el.symbol for el in t.structure.composition.elements)
            for t in demo_tasks(DFTSettings()) if not parent_of(t.id)[1]}


def _shuffled(items: list, family: str) -> list:
    """`items` in a fixed pseudo-random order (sha256 of seed, family and item)."""
    def key(item) -> str:
        return hashlib.sha256(f"{POOL_SEED}:{family}:{item}".encode()).hexdigest()

    return sorted(items, key=key)


def pool_systems(exclude: set[frozenset[str]] | None = None) -> dict[str, list[tuple[str, ...]]]:
    """The systems of each family: the product of its element sets minus the demo's systems,
    shuffled (`POOL_SEED`) and cut at `N_SYSTEMS`."""
    exclude = demo_systems() if exclude is None else exclude
    products = {"heusler": list(itertools.product(*HEUSLER_SETS)),
                "perovskite": list(itertools.product(*PEROVSKITE_SETS)),
                "layered_abo2": list(itertools.product(*LAYERED_SETS))}
    out = {}
    for fam, items in products.items():
        anion = () if fam == "heusler" else (ANION,)
        items = [s for s in items if len(set(s)) == len(s) and frozenset(s + anion) not in exclude]
        out[fam] = _shuffled(items, fam)[: N_SYSTEMS[fam]]
    return out


@dataclass(frozen=True)
class PoolTask:
    """A pool task and its role (`ROLES`: 'candidate', 'competitor', 'element', 'label_range');
    `family` for candidates."""

    task: Task
    role: str
    family: str = ""


def _eos(proto: str, species: list[str], st: DFTSettings, timeout: float) -> Task:
    s = prototype_structure(proto, species)
    return Task(id=f"{s.composition.reduced_formula}_{proto}", structure=s, settings=st, relax="eos",
                prototype=proto, timeout=timeout)


def _opt(proto: str, species: list[str], st: DFTSettings, timeout: float) -> Task:
    s = noncubic_structure(proto, species)
    return Task(id=f"{s.composition.reduced_formula}_{proto}", structure=s, settings=st, relax="optimizer",
                prototype=proto, timeout=timeout)


def pair_tasks(a: str, b: str, st: DFTSettings, timeout: float) -> list[Task]:
    """The competing binaries of the pair (a, b) (`PAIR_PROTOTYPES`)."""
    if ANION in (a, b):
        m = b if a == ANION else a
        slots = {"MO": [m, ANION], "MO2": [m, ANION], "OM2": [ANION, m]}
        return [_eos(p, slots[s], st, timeout) for p, s in PAIR_PROTOTYPES["oxide"]]
    a, b = sorted((a, b))
    slots = {"AB": [a, b], "BA": [b, a]}
    return [_eos(p, slots[s], st, timeout) for p, s in PAIR_PROTOTYPES["metal"]]


def element_tasks(st: DFTSettings, timeout: float, optimizer_timeout: float) -> list[Task]:
    """Elemental phases of `NEW_ELEMENTS` (hcp with the optimizer, the rest EOS)."""
    out = []
    for el, protos in NEW_ELEMENTS.items():
        for p in protos:
            out.append(_opt(p, [el], st, optimizer_timeout) if p == "hcp" else _eos(p, [el], st, timeout))
    return out


def label_range_tasks(st: DFTSettings, timeout: float) -> list[Task]:
    """The label-range compounds: each pair of `LABEL_RANGE_ELEMENTS` in each of `LABEL_RANGE_PROTOTYPES`
    (EOS, with up to `LABEL_RANGE_EOS_MAX_EXTRA` extra points; the physics settings are `st`'s)."""
    st = replace(st, eos_max_extra=max(st.eos_max_extra, LABEL_RANGE_EOS_MAX_EXTRA))
    return [_eos(p, [a, b], st, timeout) for a, b in itertools.combinations(LABEL_RANGE_ELEMENTS, 2)
            for p in LABEL_RANGE_PROTOTYPES]


def candidate_tasks(family: str, system: tuple[str, ...], st: DFTSettings, timeout: float,
                    optimizer_timeout: float) -> list[Task]:
    """The candidates of one system of `family`."""
    if family == "heusler":
        x, y, z = system
        return [_eos("half_heusler", [z, y, x], st, timeout), _eos("heusler", [x, y, z], st, timeout),
                _eos("inverse_heusler", [x, x, y, z], st, timeout)]
    if family == "perovskite":
        a, b = system
        out = [_eos("perovskite", [a, b, ANION], st, timeout)]
        swapped = _eos("perovskite", [b, a, ANION], st, timeout)
        swapped.id = swapped.id.replace("_perovskite", "_perovskite_swapped")
        swapped.prototype = "perovskite_swapped"
        return out + [swapped]
    if family == "layered_abo2":
        a, b = system
        return [_opt("layered_abo2", [a, b, ANION], st, optimizer_timeout)]
    raise ValueError(f"unknown pool family {family!r}; known: {FAMILIES}")


def pool_tasks(settings: DFTSettings | None = None, timeout: float = 1800.0,
               optimizer_timeout: float | None = None) -> list[PoolTask]:
    """The pool plan in computing order (see the module docstring)."""
    from esnet_tf.dft.demo import OPTIMIZER_TIMEOUT_FACTOR, demo_tasks

    st = settings or DFTSettings()
    opt_timeout = OPTIMIZER_TIMEOUT_FACTOR * timeout if optimizer_timeout is None else optimizer_timeout
    demo = [t for t in demo_tasks(st)]
    demo_ids = {t.id for t in demo}
    plan: list[PoolTask] = [PoolTask(t, "element") for t in element_tasks(st, timeout, opt_timeout)]
    seen = {p.task.id for p in plan} | demo_ids
    for t in label_range_tasks(st, timeout):
        if t.id not in seen:
            seen.add(t.id)
            plan.append(PoolTask(t, "label_range"))
    systems = pool_systems({frozenset(el.symbol for el in t.structure.composition.elements) for t in demo})
    pairs_done: set[frozenset[str]] = set()
    cursors = {fam: iter(systems[fam]) for fam in FAMILIES}
    while cursors:
        for fam in list(cursors):
            system = next(cursors[fam], None)
            if system is None:
                del cursors[fam]
                continue
            els = tuple(system) + (() if fam == "heusler" else (ANION,))
            for a, b in itertools.combinations(els, 2):
                if frozenset((a, b)) in pairs_done:
                    continue
                pairs_done.add(frozenset((a, b)))
                for t in pair_tasks(a, b, st, timeout):
                    if t.id not in seen:
                        seen.add(t.id)
                        plan.append(PoolTask(t, "competitor"))
            for t in candidate_tasks(fam, system, st, timeout, opt_timeout):
                if t.id in seen:  # a candidate the demo or another family already holds
                    continue
                seen.add(t.id)
                plan.append(PoolTask(t, "candidate", fam))
    return computing_order(plan)


def computing_order(plan: list[PoolTask]) -> list[PoolTask]:
    """`plan` reordered: elements; the label-range compounds; then one chemical system at a time, in the
    order the draw gives the candidates' systems: its EOS candidates, then the competitors no earlier system
    needed, so that each system's hull completes before the next system starts; the optimizer candidates
    last (their systems' competitors at the end of the previous part). Stable within each part."""
    def phase(p: PoolTask) -> int:
        if p.role == "element":
            return 0
        if p.role == "label_range":
            return 1
        if p.role == "candidate" and p.task.relax == "optimizer":
            return 3
        return 2

    ordered = sorted(plan, key=phase)
    position: dict[frozenset[str], int] = {}
    for p in ordered:
        if p.role == "candidate":
            position.setdefault(_system(p), len(position))
    systems = list(position)

    def system_index(p: PoolTask) -> int:
        if p.role == "candidate":
            return position[_system(p)]
        els = _system(p)
        return next((k for k, sys_ in enumerate(systems) if els <= sys_), len(systems))

    def key(p: PoolTask) -> tuple[int, int, int]:
        ph = phase(p)
        if ph != 2:
            return ph, 0, 0
        return ph, system_index(p), 0 if p.role == "candidate" else 1

    return sorted(ordered, key=key)


def _system(p: PoolTask) -> frozenset[str]:
    return frozenset(el.symbol for el in p.task.structure.composition.elements)


def selection_rule() -> dict:
    """The pool's selection rule, as written into provenance.json."""
    return {"seed": POOL_SEED, "n_systems": dict(N_SYSTEMS),
            "element_sets": {"heusler (X, Y, Z)": HEUSLER_SETS, "perovskite (A, B) + O": PEROVSKITE_SETS,
                             "layered_abo2 (A, B) + O": LAYERED_SETS},
            "rule": "product of the element sets, without repeated elements and without the demo's chemical "
                    "systems, ordered by sha256(seed:family:system), first n_systems",
            "candidates": {"heusler": "half-Heusler XYZ (X on 4c), L2_1 X2YZ, inverse Heusler X2YZ",
                           "perovskite": "cubic ABO3 and swapped BAO3", "layered_abo2": "alpha-NaFeO2 ABO2 (optimizer)"},
            "competitors": {k: [f"{p} {s}" for p, s in v] for k, v in PAIR_PROTOTYPES.items()},
            "new_elements": {k: list(v) for k, v in NEW_ELEMENTS.items()},
            "label_range": {"rule": "every pair of the elements in each prototype (EOS); trained on, never "
                                    "candidates; added 2026-12-07 so that the labels reach past 3 eV/atom",
                            "elements": list(LABEL_RANGE_ELEMENTS), "prototypes": list(LABEL_RANGE_PROTOTYPES)}}


def assemble_pool(pool_dir: Path, demo_dir: Path, settings: DFTSettings | None = None) -> dict:
    """Write the pool's labels.csv and provenance.json from what the caches hold.

    Formation energies against the lowest elemental phase of demo and pool together; `e_above_hull`
    against the hull of every relaxed entry of both. labels.csv holds the pool's own rows (role
    candidate, competitor or element; paths relative to `pool_dir`); competitors the demo computed
    count in the hulls but stay demo rows. Candidates of systems whose competitors are not all
    computed yet get `hull_complete` False.
    """
    import tempfile

    from esnet_tf.dft.demo import demo_tasks, parent_of
    from esnet_tf.dft.labels import assemble, summarize
    from esnet_tf.dft.runner import cached_outcome

    st = settings or DFTSettings()
    pool_dir, demo_dir = Path(pool_dir), Path(demo_dir)
    plan = pool_tasks(st)
    demo_relaxed = [t for t in demo_tasks(st) if not parent_of(t.id)[1]]
    outcomes, pending, where = [], [], {}
    for t in demo_relaxed:
        o = cached_outcome(t, demo_dir / "calcs")
        if o is not None:
            outcomes.append(o)
            where[t.id] = "demo"
    for p in plan:
        o = cached_outcome(p.task, pool_dir / "calcs") or cached_outcome(p.task, demo_dir / "calcs")
        if o is None:
            pending.append(p.task.id)
        else:
            outcomes.append(o)
            where.setdefault(p.task.id, "pool")
    with tempfile.TemporaryDirectory() as tmp:
        prov = assemble(outcomes, Path(tmp), st)
        with open(Path(tmp) / "labels.csv", newline="") as fh:
            all_rows = {r["id"]: r for r in csv.DictReader(fh)}
        with open(Path(tmp) / "failures.csv", newline="") as fh:
            failures = list(csv.DictReader(fh))
    role = {p.task.id: p for p in plan}
    done = {o.task_id for o in outcomes if o.result is not None}
    systems_pending = {}
    for p in plan:
        els = frozenset(el.symbol for el in p.task.structure.composition.elements)
        if p.task.id not in done:
            systems_pending[els] = systems_pending.get(els, 0) + 1
    rows = []
    for tid, r in sorted(all_rows.items()):
        if tid not in role or where.get(tid) != "pool":
            continue
        p = role[tid]
        els = frozenset(el.symbol for el in p.task.structure.composition.elements)
        complete = not any(systems_pending.get(sub, 0) for sub in _subsystems(els))
        rows.append(dict(r, role=p.role, family=p.family, hull_complete=complete))
    cols = list(next(iter(all_rows.values())).keys()) + ["role", "family", "hull_complete"] if all_rows else []
    with atomic_path(pool_dir / "labels.csv") as tmp_path, tmp_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    pool_failures = [f for f in failures if f["id"] in role]
    with atomic_path(pool_dir / "failures.csv") as tmp_path, tmp_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "reason"])
        w.writeheader()
        w.writerows(pool_failures)
    cands = [r for r in rows if r["role"] == "candidate"]
    per_family = {}
    for fam in FAMILIES:
        fr = [r for r in cands if r["family"] == fam]
        fc = [r for r in fr if r["hull_complete"]]
        n_stable = sum(float(r["e_above_hull"]) <= 1e-9 for r in fc)
        planned = sum(p.role == "candidate" and p.family == fam for p in plan)
        per_family[fam] = {
            "planned": planned, "done": len(fr), "hull_complete": len(fc), "stable": n_stable,
            "stable_fraction": round(n_stable / len(fc), 3) if fc else None,
            "process_hours": round(sum(float(r["is_wall_time_s"]) + float(r["relax_wall_time_s"]) for r in fr) / 3600, 3)}
    comp = [r for r in rows if r["role"] in ("competitor", "element")]
    label_range = [r for r in rows if r["role"] == "label_range"]

    def hours(rs: list[dict]) -> float:
        return round(sum(float(r["is_wall_time_s"]) + float(r["relax_wall_time_s"]) for r in rs) / 3600, 3)

    out = {
        "description": "hypothetical screening pool (esnet dft pool): element substitution on ternary prototypes, "
                       "with the competing binaries and new elemental phases",
        "selection": selection_rule(), "settings": st.to_dict(), "code": prov.get("code"),
        "elemental_references": prov["elemental_references"],
        "hull": "pymatgen PhaseDiagram over the relaxed entries of the demo and the pool together",
        "n_planned": len(plan), "n_pending": len(pending), "n_rows": len(rows), "n_failed": len(pool_failures),
        "candidates": per_family,
        "n_candidates_done": len(cands),
        "n_candidates_hull_complete": sum(bool(r["hull_complete"]) for r in cands),
        "stable_fraction_hull_complete": (round(sum(float(r["e_above_hull"]) <= 1e-9 for r in cands if r["hull_complete"])
                                                / max(1, sum(bool(r["hull_complete"]) for r in cands)), 3)),
        "competitors_and_elements": {"done": len(comp), "process_hours": hours(comp)},
        "label_range": {"planned": sum(p.role == "label_range" for p in plan), "done": len(label_range),
                        "process_hours": hours(label_range),
                        "max_formation_energy_per_atom": max((float(r["formation_energy_per_atom"]) for r in label_range),
                                                             default=None),
                        "n_above_3_ev_per_atom": sum(float(r["formation_energy_per_atom"]) >= 3.0 for r in label_range)},
        "elements": sorted({el for r in rows for el in _elements(r["formula"])}
                           | set(prov["elemental_references"])),
        "assembled": prov.get("assembled"), "pending": pending[:50],
        "summary": summarize(rows) if rows else {},
    }
    write_text(pool_dir / "provenance.json", json.dumps(out, indent=1, default=str))
    readme = pool_dir / "README.md"
    if readme.exists():
        write_text(readme, readme_with_counts(readme.read_text(encoding="utf-8"), out))
    return out


#: markers of the counts block in the pool README
COUNTS_MARKERS = ("<!-- pool-counts:start", "<!-- pool-counts:end -->")


def counts_markdown(prov: dict) -> str:
    """Markdown table of provenance.json's per-family counts (stable fraction over complete hulls)."""
    lines = ["| family | planned | done | complete hull | stable | stable fraction | process-h |",
             "|---|---|---|---|---|---|---|"]
    for fam, f in prov["candidates"].items():
        frac = "" if f["stable_fraction"] is None else f"{f['stable_fraction']:.2f}"
        lines.append(f"| {fam} | {f['planned']} | {f['done']} | {f['hull_complete']} | {f['stable']} | {frac} | "
                     f"{f['process_hours']:.2f} |")
    ce = prov["competitors_and_elements"]
    lr = prov.get("label_range")
    lr_text = (f"Label-range compounds done: {lr['done']} of {lr['planned']} ({lr['process_hours']:.2f} process-hours; "
               f"highest E_f {lr['max_formation_energy_per_atom']:.2f} eV/atom, {lr['n_above_3_ev_per_atom']} at or above "
               "3 eV/atom). " if lr and lr["done"] else
               f"Label-range compounds done: 0 of {lr['planned']}. " if lr else "")
    lines += ["", f"Competitors and elemental phases done: {ce['done']} ({ce['process_hours']:.2f} process-hours). "
              + lr_text +
              f"Tasks pending: {prov['n_pending']} of {prov['n_planned']}; failed: {prov['n_failed']}. "
              f"Elements in the pool's rows and references: {len(prov['elements'])}. Assembled {prov['assembled']}."]
    return "\n".join(lines)


def readme_with_counts(text: str, prov: dict) -> str:
    """`text` with the block between COUNTS_MARKERS replaced by `counts_markdown(prov)` (unchanged without them)."""
    start, end = COUNTS_MARKERS
    if start not in text or end not in text:
        return text
    i = text.index("-->", text.index(start)) + 3
    j = text.index(end)
    return text[:i] + "\n" + counts_markdown(prov) + "\n" + text[j:]


def _subsystems(els: frozenset[str]) -> list[frozenset[str]]:
    return [frozenset(c) for k in range(1, len(els) + 1) for c in itertools.combinations(sorted(els), k)]


def _elements(formula: str) -> list[str]:
    from pymatgen.core import Composition

    return [el.symbol for el in Composition(formula).elements]
