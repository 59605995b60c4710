"""The embedded IS2RE demo dataset: which structures, and how labels are assembled.

Rebuild (hours on 2 cores, resumable): `esnet dft demo --workers 2`.
Three parts (`part=` of `demo_tasks`, `--part` of `esnet dft demo`):

- "base": cubic prototypes without internal degrees of freedom, so the EOS relaxation is exact;
- "harder": non-cubic prototypes with internal coordinates or a free c/a (hcp, wurtzite, NiAs,
  L1_0, rutile, anatase, CdI2, P4mm perovskite), relaxed with BFGS on positions and cell
  (`relax="optimizer"`), each composition with cubic (EOS) competitors;
- "augment": IS augmentation (Gibson et al., arXiv 2202.13947): for every relaxed structure,
  more initial structures (lattice scalings and a uniaxial strain drawn from the spread of the
  contact rule's own error, rattled positions in small cells with few k-points), each with its own IS single point
  and the relaxed label of its parent (`labels_augmented.csv`, not `labels.csv`).

Formation energies are against the lowest computed elemental phase (O, F, Cl, N: the dimer in
a box); `e_above_hull` comes from pymatgen's PhaseDiagram over the dataset's own relaxed entries.
"""
from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.dft.prototypes import DIMER_BONDS, molecule_in_box, noncubic_structure, prototype_structure
from esnet_tf.dft.labels import assemble
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task

if TYPE_CHECKING:
    from pymatgen.core import Structure

GASES = ("O", "F", "Cl")
#: molecular references added with the non-cubic part (nitrides)
NEW_GASES = ("N",)
METALS_AND_SEMIMETALS = ("Li Na K Mg Ca Sr Ba Al Ga In Si Ge As Sb Sc Ti V Cr Mn Fe Co Ni "
                         "Cu Zn Y Zr Nb Pd Ag Pt Au").split()
#: AB compounds, each in rocksalt, CsCl and zincblende
AB = ("NaCl MgO GaAs NiAl LiF NaF KF LiCl KCl CaO SrO BaO NiO CoO MnO FeO ZnO InAs AlAs GaSb "
      "InSb AlSb CoAl FeAl CuZn MgAg PdAl NiTi FeTi CoTi ScCu YCu AuZn CuPd "
      "CuCl AgCl AgF TiO VO NbO NiGa CoGa FeCo ZrCo YAg ScAg YPd ScPd LiAg PdZn PtZn MgAu").split()
#: (A, B) pairs, each as A3B and AB3 in L1_2 and D0_3
A3B_PAIRS = [("Cu", "Au"), ("Ni", "Al"), ("Ni", "Fe"), ("Pt", "Ti"), ("Al", "Sc"), ("Ni", "Ga"),
             ("Co", "Ti"), ("Cu", "Pd"), ("Pt", "Fe"), ("Fe", "Al"), ("Pd", "Ti"), ("Ni", "Mn"),
             ("Ag", "Mg"), ("Zr", "Al"), ("Al", "Ti")]
#: AB2 compounds (A, B), each in fluorite (A on 4a) and C15 Laves (A on 8a)
AB2 = [("Ca", "F"), ("Sr", "F"), ("Ba", "F"), ("Zr", "O"), ("O", "Li"), ("O", "Na"), ("O", "K"),
       ("Si", "Mg"), ("Ge", "Mg"), ("Pt", "Al"), ("Au", "Al"), ("Ni", "Si"), ("Co", "Si"),
       ("Mg", "Cu"), ("Mg", "Zn"), ("Ca", "Al"), ("Zr", "V"), ("Ti", "Cr")]
#: ABO3, each as cubic perovskite with A on the A site and swapped
PEROVSKITES = [("Sr", "Ti"), ("Ba", "Ti"), ("Ca", "Ti"), ("K", "Nb"), ("Na", "Nb"), ("Sr", "Zr"),
               ("Ba", "Zr"), ("Ca", "Zr"), ("Sr", "V"), ("Sr", "Mn"), ("Ca", "Mn"), ("Sr", "Fe")]
#: X2YZ, each as L2_1 (regular) and XA (inverse) Heusler
HEUSLERS = [("Co", "Mn", "Si"), ("Co", "Fe", "Si"), ("Ni", "Mn", "Ga"), ("Cu", "Mn", "Al"),
            ("Fe", "V", "Al"), ("Co", "Ti", "Al"), ("Co", "Mn", "Ge"), ("Ni", "Ti", "Al"),
            ("Fe", "Ti", "Si"), ("Mn", "Co", "Al")]


def _formula(structure) -> str:
    return structure.composition.reduced_formula


def _base_tasks(st: DFTSettings, timeout: float) -> list[Task]:
    """The cubic part: elemental references first, then compounds.

    Ordered by cost so that a partial run holds as many examples of every kind as it can: the
    compounds of the physics checks (NaCl, MgO, GaAs, NiAl, Cu3Au) first, then rounds of two
    AB compositions (2-atom cells), one perovskite pair and one Heusler pair, then the AB2
    pairs (fluorite + 6-atom C15), the other Heuslers and the 4-atom A3B cells (slow when
    magnetic) last. Every composition's prototypes stay together.
    """
    def task(proto: str, species: list[str], label: str = "") -> Task:
        s = prototype_structure(proto, species)
        label = label or proto
        return Task(id=f"{_formula(s)}_{label}", structure=s, settings=st, relax="eos",
                    prototype=label, timeout=timeout)

    refs = [Task(id=f"{g}2_molecule", structure=molecule_in_box(g, DIMER_BONDS[g], st.molecule_box),
                 settings=st, relax="none", kind="molecule", prototype="molecule", timeout=timeout)
            for g in GASES]
    for el in METALS_AND_SEMIMETALS:
        protos = ["fcc", "bcc"] + (["diamond"] if el in ("Si", "Ge") else []) + (["sc"] if el in ("As", "Sb") else [])
        refs += [task(p, [el]) for p in protos]
    from pymatgen.core import Composition

    ab = []
    for f in AB:
        a, b = [e.symbol for e in Composition(f).elements]
        ab.append([task(p, [a, b]) for p in ("rocksalt", "cscl", "zincblende")])
    a3b = [[task("l12", [a, b]), task("d03", [a, a, b]), task("l12", [b, a]), task("d03", [b, b, a])]
           for a, b in A3B_PAIRS]
    perovskite = [[task("perovskite", [a, b, "O"]), task("perovskite", [b, a, "O"], "perovskite_swapped")]
                  for a, b in PEROVSKITES]
    heusler = [[task("heusler", [x, y, z]), task("inverse_heusler", [x, x, y, z])] for x, y, z in HEUSLERS]
    ab2 = [[task("fluorite", [a, b]), task("c15", [a, b])] for a, b in AB2]
    compounds: list[Task] = [t for fam in (ab[:4], a3b[:1], ab2[:2]) for g in fam for t in g]
    ab_rest = iter(ab[4:])  # drawn twice per round
    rounds = [[ab_rest, ab_rest, iter(perovskite), iter(heusler[:5])], [iter(ab2[2:])],
              [iter(heusler[5:])], [iter(a3b[1:])]]
    for cursors in rounds:
        while True:
            groups = [g for g in (next(c, None) for c in cursors) if g is not None]
            if not groups:
                break
            compounds += [t for g in groups for t in g]
    return refs + compounds



#: Non-cubic compositions (relaxed with the optimizer), per prototype, in the order they are computed.
#: hcp: Mg Ti Zn Co Zr Y Sc are hcp in experiment and PBE; the fcc metals, the bcc metals and the
#: alkali metals (fcc/bcc/hcp within meV in PBE) are there as competitors of their cubic phases.
HCP_ELEMENTS = "Mg Ti Zr Y Sc Zn Al Cu Co Ag Pd Au Pt Ni Ca Sr V Nb Fe Cr Ba Li Na K".split()
#: wurtzite (A, B); competitors rocksalt, CsCl, zincblende (EOS)
WURTZITES = [("Zn", "O"), ("Al", "N"), ("Ga", "N"), ("Ga", "As"), ("In", "N"), ("Al", "As"), ("Mg", "O"),
             ("Cu", "Cl"), ("In", "As"), ("Ga", "Sb"), ("Al", "Sb"), ("In", "Sb")]
#: L1_0 (A, B); competitor CsCl (B2)
L10 = [("Cu", "Au"), ("Ti", "Al"), ("Ni", "Al"), ("Fe", "Pt"), ("Ni", "Pt"), ("Co", "Pt"), ("Fe", "Pd")]
#: rutile AB2 (A on 2a); competitor fluorite (EOS), and anatase for TiO2 and GeO2
RUTILES = [("Ti", "O"), ("Mg", "F"), ("Ge", "O"), ("Zn", "F"), ("V", "O"), ("Nb", "O"), ("Ni", "F"),
           ("Cr", "O"), ("Mn", "O")]
ANATASES = [("Ti", "O"), ("Ge", "O")]
#: CdI2-type (1T) layered AB2; competitor fluorite (EOS)
CDI2 = [("Mg", "Cl"), ("Ti", "Cl"), ("V", "Cl"), ("Ni", "Cl"), ("Fe", "Cl")]
#: NiAs-type AB; competitors rocksalt, CsCl, zincblende (EOS)
NIAS = [("Ni", "As"), ("Ni", "Sb"), ("Mn", "Sb"), ("Cr", "Sb"), ("Mn", "As")]
#: tetragonal (P4mm) ferroelectric distortion of cubic perovskites computed in the base part
P4MM = [("Ba", "Ti"), ("K", "Nb")]

#: Spread (standard deviation) of the contact rule's own error in lattice constant: `rs_scale`
#: (relaxed / initial lattice constant) over the 308 EOS-relaxed examples committed before the
#: augmentation (std 0.094; 0.085 over the compounds). A constant, not re-measured at build time,
#: so that the augmented structures (and their cache keys) do not change as data is added.
CONTACT_RULE_SPREAD = 0.09
#: Gaussian width (Å, per Cartesian component) of the rattled variant's displacements.
RATTLE_SIGMA = 0.05
#: Variants of every relaxed structure: two isotropic scalings (one compressed, one expanded),
#: a uniaxial strain along z, and rattled positions where the symmetry loss is affordable
#: (`wants_rattle`).
VARIANTS = ("iso_a", "iso_b", "strain_c", "rattle")
#: A rattle keeps time reversal as its only symmetry, so its single point costs in proportion to
#: `rattled_kpoints` of the parent's mesh: 8.6x the parent's irreducible k-points (median over the
#: 149 two-atom non-magnetic cells of the plan; 5.6-10.4x, 10th-90th percentile). Rattles are
#: computed where that stays at most this many k-points (33 of those 149 cells; all 149 would
#: cost about as much as 700 other variants).
RATTLE_MAX_KPOINTS = 150
#: separator of parent id and variant name in an augmented id: "NaCl_rocksalt__iso_a"
VARIANT_SEP = "__"


def _rng(parent_id: str, variant: str) -> np.random.Generator:
    seed = int(hashlib.sha256(f"{parent_id}:{variant}".encode()).hexdigest()[:16], 16)
    return np.random.default_rng(seed)


def _spread_draw(rng: np.random.Generator) -> float:
    """|z| of a standard normal, kept in [0.3, 2]: a variant at least 0.3 sigma from its parent."""
    return float(np.clip(abs(rng.standard_normal()), 0.3, 2.0))


def variant_structure(parent_id: str, structure: Structure, variant: str) -> Structure:
    """The `variant` initial structure of a parent's initial structure (deterministic per id).

    iso_a / iso_b: lattice constant times 1 - sigma|z| / 1 + sigma|z|; strain_c: the z axis
    (the cubic axis, or the hexagonal / tetragonal c axis, so that non-cubic cells keep their
    symmetry) times 1 +- sigma|z|, sign drawn; sigma = CONTACT_RULE_SPREAD. rattle: Gaussian
    displacements of RATTLE_SIGMA Å, net translation removed.
    """
    rng = _rng(parent_id, variant)
    s = structure.copy()
    if variant in ("iso_a", "iso_b"):
        f = 1.0 + (-1.0 if variant == "iso_a" else 1.0) * CONTACT_RULE_SPREAD * _spread_draw(rng)
        s.scale_lattice(s.volume * f ** 3)
    elif variant == "strain_c":
        z = _spread_draw(rng)
        eps = (1.0 if rng.random() < 0.5 else -1.0) * CONTACT_RULE_SPREAD * z
        from pymatgen.core import Lattice, Structure

        m = s.lattice.matrix @ np.diag([1.0, 1.0, 1.0 + eps])
        s = Structure(Lattice(m), s.species, s.frac_coords)
    elif variant == "rattle":
        d = rng.normal(0.0, RATTLE_SIGMA, size=(len(s), 3))
        d -= d.mean(axis=0)
        from pymatgen.core import Structure

        s = Structure(s.lattice, s.species, s.cart_coords + d, coords_are_cartesian=True)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return s


def rattled_kpoints(mesh: tuple[int, int, int]) -> int:
    """Irreducible k-points of a Gamma-centred mesh whose only symmetry is time reversal (k ~ -k)."""
    n = int(np.prod(mesh))
    self_conjugate = int(np.prod([1 if k % 2 else 2 for k in mesh]))  # k = -k: 0 and, if even, n/2
    return (n + self_conjugate) // 2


def wants_rattle(t: Task) -> bool:
    """A rattled variant for 2-atom non-magnetic cells whose rattled mesh is affordable
    (`rattled_kpoints` <= RATTLE_MAX_KPOINTS)."""
    from esnet_tf.dft.engine import is_spin_polarized, kpoint_mesh

    return (len(t.structure) == 2 and not is_spin_polarized(t)
            and rattled_kpoints(kpoint_mesh(t)) <= RATTLE_MAX_KPOINTS)


def variant_tasks(parent: Task, variants: tuple[str, ...] = VARIANTS) -> list[Task]:
    """Augmentation tasks of a relaxed parent: IS single points (relax="none") of its variants."""
    out = []
    for v in variants:
        if v == "rattle" and not wants_rattle(parent):
            continue
        out.append(Task(id=f"{parent.id}{VARIANT_SEP}{v}", structure=variant_structure(parent.id, parent.structure, v),
                        settings=parent.settings, relax="none", kind=parent.kind, prototype=parent.prototype,
                        timeout=parent.timeout))
    return out


def parent_of(task_id: str) -> tuple[str, str]:
    """(parent id, variant) of an augmented id; (task_id, "") for a relaxed structure."""
    if VARIANT_SEP in task_id:
        p, v = task_id.rsplit(VARIANT_SEP, 1)
        return p, v
    return task_id, ""


def _harder_groups(st: DFTSettings, timeout: float, optimizer_timeout: float) -> list[list[Task]]:
    """One group per composition: its optimizer structure(s) and the cubic (EOS) competitors it lacks.

    Families are interleaved (one group of each in turn) so that a partial run covers all of them.
    """
    def eos(proto: str, species: list[str]) -> Task:
        s = prototype_structure(proto, species)
        return Task(id=f"{_formula(s)}_{proto}", structure=s, settings=st, relax="eos", prototype=proto,
                    timeout=timeout)

    def opt(proto: str, species: list[str]) -> Task:
        s = noncubic_structure(proto, species)
        return Task(id=f"{_formula(s)}_{proto}", structure=s, settings=st, relax="optimizer", prototype=proto,
                    timeout=optimizer_timeout)

    base_ab = {frozenset(f) for f in (_ab_pair(x) for x in AB)}

    def ab_competitors(a: str, b: str) -> list[Task]:
        return [] if frozenset((a, b)) in base_ab else [eos(p, [a, b]) for p in ("rocksalt", "cscl", "zincblende")]

    base_fluorite = {(a, b) for a, b in AB2}
    families = [
        [[opt("hcp", [el])] for el in HCP_ELEMENTS],
        [[opt("wurtzite", [a, b])] + ab_competitors(a, b) for a, b in WURTZITES],
        [[opt("l10", [a, b])] + ([] if frozenset((a, b)) in base_ab else [eos("cscl", [a, b])]) for a, b in L10],
        [[opt("rutile", [a, b])] + ([opt("anatase", [a, b])] if (a, b) in ANATASES else [])
         + ([] if (a, b) in base_fluorite else [eos("fluorite", [a, b])]) for a, b in RUTILES],
        [[opt("cdi2", [a, b]), eos("fluorite", [a, b])] for a, b in CDI2],
        [[opt("nias", [a, b])] + ab_competitors(a, b) for a, b in NIAS],
        [[opt("perovskite_p4mm", [a, b, "O"])] for a, b in P4MM],
    ]
    groups, cursors = [], [iter(f) for f in families]
    while True:
        nxt = [g for g in (next(c, None) for c in cursors) if g is not None]
        if not nxt:
            return groups
        groups += nxt


def _ab_pair(formula: str) -> tuple[str, str]:
    from pymatgen.core import Composition

    a, b = [e.symbol for e in Composition(formula).elements]
    return a, b


def _cost_rank(t: Task) -> float:
    """Rough relative cost of a single point: atoms, times 3 when spin-polarised."""
    from esnet_tf.dft.engine import is_spin_polarized

    return len(t.structure) * (3.0 if is_spin_polarized(t) else 1.0)


#: base-structure variants scheduled after each harder group (the rest follow all groups)
AUGMENT_PER_GROUP = 12

#: time limit of an optimizer relaxation, in units of the per-structure limit: a spin-polarised
#: 6-atom rutile (NiF2, CrO2, MnO2) takes ~450 s per SCF and ~3 h in all on one core; a
#: relaxation that hits the limit anyway continues from its progress journal with --retry-failed
OPTIMIZER_TIMEOUT_FACTOR = 6.0

#: "new" = harder + augment in their interleaved order (everything after the base part)
PARTS = ("all", "base", "harder", "augment", "new")


def demo_tasks(settings: DFTSettings | None = None, timeout: float = 1800.0, part: str = "all",
               optimizer_timeout: float | None = None) -> list[Task]:
    """The demo plan in computing order; `part` one of PARTS.

    Order: the base (cubic) part as before; then the N2 reference, then the harder groups, each
    followed by its own variants (iso_a, iso_b, strain_c) and AUGMENT_PER_GROUP variants of the
    base structures, cheapest first (2-atom non-magnetic cells before 6-atom magnetic ones); then
    the remaining base variants; rattled variants last. A partial run therefore grows the
    non-cubic part and the augmentation together. Optimizer tasks get `optimizer_timeout`
    (default OPTIMIZER_TIMEOUT_FACTOR x `timeout`).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    st = settings or DFTSettings()
    opt_timeout = OPTIMIZER_TIMEOUT_FACTOR * timeout if optimizer_timeout is None else optimizer_timeout
    base = _base_tasks(st, timeout)
    new_refs = [Task(id=f"{g}2_molecule", structure=molecule_in_box(g, DIMER_BONDS[g], st.molecule_box),
                     settings=st, relax="none", kind="molecule", prototype="molecule", timeout=timeout)
                for g in NEW_GASES]
    groups = _harder_groups(st, timeout, opt_timeout)
    relaxed_base = [t for t in base if t.relax != "none"]
    order = sorted(range(len(relaxed_base)), key=lambda k: (_cost_rank(relaxed_base[k]), k))
    base_aug = iter([v for k in order for v in variant_tasks(relaxed_base[k], VARIANTS[:3])])
    harder, augment = list(new_refs), []
    plan = list(base) + list(new_refs)
    for g in groups:
        plan += g
        harder += g
        own = [v for t in g for v in variant_tasks(t, VARIANTS[:3])]
        more = [v for v in (next(base_aug, None) for _ in range(AUGMENT_PER_GROUP)) if v is not None]
        plan += own + more
        augment += own + more
    rest = list(base_aug)
    relaxed_all = relaxed_base + [t for g in groups for t in g]
    rattles = [v for t in sorted(relaxed_all, key=_cost_rank) for v in variant_tasks(t, ("rattle",))]
    plan += rest + rattles
    augment += rest + rattles
    ids = [t.id for t in plan]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise RuntimeError(f"duplicate demo ids: {sorted(dup)}")
    chosen = {"all": None, "base": {t.id for t in base}, "harder": {t.id for t in harder},
              "augment": {t.id for t in augment}, "new": {t.id for t in harder + augment}}[part]
    return plan if chosen is None else [t for t in plan if t.id in chosen]


def assemble_cached(data_dir: Path, settings: DFTSettings | None = None) -> dict:
    """Assemble labels from whatever the cache holds, without computing anything.

    Writes labels.csv (relaxed structures: base and harder parts), labels_augmented.csv (those
    rows plus the finished augmentation variants whose parent is in labels.csv) and
    provenance.json. Relaxed structures not computed yet are listed in provenance.json
    (`pending`; `in_progress`: those of them whose progress journal holds finished SCFs); pending
    variants are counted under `augmentation`.
    """
    from esnet_tf.dft.runner import cached_outcome

    st = settings or DFTSettings()
    data_dir = Path(data_dir)
    tasks = demo_tasks(st)
    relaxed_tasks = [t for t in tasks if not parent_of(t.id)[1]]
    variants = [t for t in tasks if parent_of(t.id)[1]]
    outcomes, pending = [], []
    for t in relaxed_tasks:
        out = cached_outcome(t, data_dir / "calcs")
        (outcomes.append(out) if out is not None else pending.append(t.id))
    prov = assemble(outcomes, data_dir, st)
    every = {t.id: cached_outcome(t, data_dir / "calcs") for t in tasks}  # relaxed and variants
    aug = assemble_augmented(data_dir, outcomes, variants, prov)
    base_ids = {t.id for t in _base_tasks(st, 1800.0)}
    done_ids = {o.task_id for o in outcomes if o.result is not None}
    prov["n_new_eos_done"] = sum(t.relax == "eos" and t.id not in base_ids and t.id in done_ids for t in relaxed_tasks)
    from esnet_tf.dft.progress import PROGRESS_FILE
    from esnet_tf.dft.tasks import task_hash

    by_id = {t.id: t for t in relaxed_tasks}
    in_progress = [i for i in pending if (data_dir / "calcs" / task_hash(by_id[i]) / PROGRESS_FILE).is_file()]
    prov.update(n_pending=len(pending), pending=pending, in_progress=in_progress,
                n_pending_by_part={"base": sum(i in base_ids for i in pending),
                                   "harder": sum(i not in base_ids for i in pending),
                                   "augment": aug["n_pending"]},
                augmentation=aug,
                process_hours_by_part=_process_hours(data_dir, {t.id: _part(t, base_ids) for t in tasks}, aug),
                process_hours_pending_estimate=_pending_estimate(tasks, every, base_ids),
                cpu_hours_by_part=_cpu_hours(tasks, every, base_ids),
                wall_over_cpu_time=_wall_over_cpu(every.values()))
    write_text(data_dir / "provenance.json", json.dumps(prov, indent=1))
    readme = data_dir / "README.md"
    if readme.exists():
        write_text(readme, readme_with_counts(readme.read_text(), prov))
    return prov


def counts_markdown(prov: dict) -> str:
    """Markdown tables of provenance.json: per prototype family, per part, augmentation."""
    fam = prov["summary"]["per_family"]
    lines = ["| prototype | relaxation | n | on hull | stable fraction | mean IS s | mean relaxation s | "
             "process-h |", "|---|---|---|---|---|---|---|---|"]
    for name, f in fam.items():
        lines.append(f"| {name} | {f['relax_kind']} | {f['n']} | {f['n_stable']} | {f['stable_fraction']:.2f} | "
                     f"{f['mean_is_wall_time_s']:.0f} | {f['mean_relax_wall_time_s']:.0f} | "
                     f"{f['is_process_hours'] + f['relax_process_hours']:.2f} |")
    aug = prov["augmentation"]
    pend = prov["n_pending_by_part"]
    hours = prov["process_hours_by_part"]
    cpu = prov.get("cpu_hours_by_part", {})

    def cpu_cell(part: str) -> str:
        d = cpu.get(part)
        return f"{d['hours']:.2f} ({d['n_cpu_timed']} of {d['n_tasks']} timed)" if d else "n/a"

    lines += ["", "| part | done | pending | process-hours | CPU-hours |", "|---|---|---|---|---|",
              f"| base (cubic, EOS) | {prov['summary']['per_relax_kind'].get('eos', 0) - _n_new_eos(prov)} | "
              f"{pend['base']} | {hours['base_eos']:.2f} | {cpu_cell('base_eos')} |",
              f"| harder: optimizer | {prov['summary']['per_relax_kind'].get('optimizer', 0)} | "
              f"{pend['harder']} (with competitors) | {hours['harder_optimizer']:.2f} | "
              f"{cpu_cell('harder_optimizer')} |",
              f"| harder: EOS competitors | {_n_new_eos(prov)} | | {hours['harder_eos_competitors']:.2f} | "
              f"{cpu_cell('harder_eos_competitors')} |",
              f"| augmentation single points | {aug['n_variants']} (of {aug['n_parents_with_variants']} parents) | "
              f"{aug['n_pending']} | {hours['augmentation_single_points']:.2f} | "
              f"{cpu_cell('augmentation_single_points')} |",
              "", f"Pending, estimated from the finished tasks' cost per atom: "
              f"{prov.get('process_hours_pending_estimate', {}).get('total', 'n/a')} process-hours. "
              f"Wall over CPU time of the {prov.get('wall_over_cpu_time', {}).get('n_tasks', 0)} tasks that "
              f"recorded both: median {prov.get('wall_over_cpu_time', {}).get('median', 'n/a')} (other load "
              "stretches the wall times; the CPU times are the DFT cost). CPU-hours count CPU time where the "
              "engine recorded it (2026-12-01 on) and wall time for the tasks before: an upper bound.",
              "", f"Assembled {prov['assembled']}; variants per kind: {aug['per_variant']}; "
              f"failed variants: {aug['n_failed']}; mean variant single point {aug['mean_wall_time_s']:.0f} s. "
              "Wall times are of single-threaded processes, two at a time on a shared 2-core machine."]
    return "\n".join(lines)


#: how docs/dft.md's demo paragraph names the non-cubic prototypes
PROTOTYPE_NAMES = {"hcp": "hcp", "wurtzite": "wurtzite", "l10": "L1_0", "rutile": "rutile", "anatase": "anatase",
                   "cdi2": "CdI2-type", "nias": "NiAs-type", "perovskite_p4mm": "P4mm-distorted perovskite"}
_N_ELEMENT_NAMES = {"1": "elemental phases", "2": "binaries", "3": "ternaries", "4": "quaternaries"}
#: the markers of the dataset paragraph in docs/dft.md (`esnet dft demo --assemble-only --readme docs/dft.md`)
SUMMARY_MARKERS = ("<!-- demo-summary:start -->", "<!-- demo-summary:end -->")


def _and_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_paragraph(prov: dict, labels: list[dict]) -> str:
    """docs/dft.md's paragraph on the demo data, from provenance.json and labels.csv rows."""
    sm, aug, pend = prov["summary"], prov["augmentation"], prov["n_pending_by_part"]
    kinds = ", ".join(f"{n} {_N_ELEMENT_NAMES.get(k, f'{k}-element compounds')}"
                      for k, n in sorted(sm["per_n_elements"].items()))
    groups: dict[str, list[str]] = {}
    for r in labels:
        if r.get("relax_kind") == "optimizer":
            groups.setdefault(r["prototype"], []).append(r["formula"])
    noncubic = "; ".join(f"{_and_join(f)} {PROTOTYPE_NAMES.get(p, p)}" for p, f in groups.items())
    estimate = prov.get("process_hours_pending_estimate", {}).get("total")
    cost = f"; about {estimate:g} process-hours by the estimate there" if estimate else ""
    failures = f"{prov['n_failed']} failure is" if prov["n_failed"] == 1 else f"{prov['n_failed']} failures are"
    text = (f"The embedded demo dataset (`datasets/is_dos/demo/`, installed as package data) was computed with "
            f"this engine: {prov['n_examples']} relaxed crystals ({kinds} over {sm['n_elements']} elements, "
            f"{sm['n_spin_polarized']} spin-polarised; {sm['per_relax_kind'].get('optimizer', 0)} of them non-cubic "
            f"structures relaxed with `--relax optimizer`: {noncubic}), plus {aug['n_variants']:,} IS-augmentation "
            f"variants of {aug['n_parents_with_variants']} structures (strained, scaled or rattled initial structures "
            f"with their parent's relaxed label) in `labels_augmented.csv` (TFDS config `is_dos/demo_augmented`). "
            f"{failures} recorded in `failures.csv`; the rest of the plan ({pend['base']} cubic "
            f"base structures, {pend['harder']} non-cubic structures and competitors, {pend['augment']:,} variants"
            f"{cost}) is listed as pending in `provenance.json`; the demo README has the counts per prototype family, "
            f"relaxation kind, stable fraction and DFT cost. It completes the plan, resuming from what ships, with:")
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def readme_with_summary(text: str, paragraph: str) -> str:
    """`text` with the block between SUMMARY_MARKERS replaced by `paragraph`; ValueError without them."""
    start, end = SUMMARY_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"needs exactly one {start} ... {end} block")
    i, j = text.index(start) + len(start), text.index(end)
    return text[:i] + "\n" + paragraph + "\n" + text[j:]


def _n_new_eos(prov: dict) -> int:
    return int(prov.get("n_new_eos_done", 0))


def readme_with_counts(text: str, prov: dict) -> str:
    """README text with the block between the counts markers replaced by `counts_markdown`."""
    start, end = "<!-- counts:start", "<!-- counts:end -->"
    if start not in text or end not in text:
        return text
    i = text.index(start)
    i = text.index("-->", i) + 3
    j = text.index(end)
    return text[:i] + "\n" + counts_markdown(prov) + "\n" + text[j:]


def _process_hours(data_dir: Path, part_of: dict[str, str], aug: dict) -> dict:
    """Process-hours (single-threaded wall time, IS + relaxation) of each part (`_part`, by task id)
    of labels.csv and of the augmentation single points."""
    import csv

    with open(data_dir / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    out = {"base_eos": 0.0, "harder_optimizer": 0.0, "harder_eos_competitors": 0.0}
    for r in rows:
        out[part_of[r["id"]]] += (float(r["is_wall_time_s"]) + float(r["relax_wall_time_s"])) / 3600
    out["augmentation_single_points"] = aug["process_hours"]
    return {k: round(v, 3) for k, v in out.items()}


def _part(task: Task, base_ids: set[str]) -> str:
    """The process_hours_by_part key of a demo task."""
    if parent_of(task.id)[1]:
        return "augmentation_single_points"
    if task.id in base_ids:
        return "base_eos"
    return "harder_optimizer" if task.relax == "optimizer" else "harder_eos_competitors"


def _pending_estimate(tasks: list[Task], outcomes: dict, base_ids: set[str]) -> dict:
    """Process-hours the tasks not computed yet would take, per part: the part's finished tasks'
    wall time per `_cost_rank` unit (atoms, x3 spin-polarised) times the pending tasks' units.

    `outcomes`: task id -> `runner.cached_outcome` (None = not computed). A rough plan figure: SCF
    iterations and optimizer steps vary by structure. Failed tasks are neither finished nor pending.
    """
    done_h: dict[str, float] = {}
    done_units: dict[str, float] = {}
    pending_units: dict[str, float] = {}
    for t in tasks:
        part, units = _part(t, base_ids), _cost_rank(t)
        out = outcomes.get(t.id)
        if out is None:
            pending_units[part] = pending_units.get(part, 0.0) + units
        elif out.result is not None:
            done_h[part] = done_h.get(part, 0.0) + float(out.result.get("wall_time", 0.0)) / 3600
            done_units[part] = done_units.get(part, 0.0) + units
    est = {part: round(u * done_h[part] / done_units[part], 2) if done_units.get(part) else None
           for part, u in pending_units.items()}
    known = [h for h in est.values() if h is not None]
    return {"per_part": est, "total": round(sum(known), 1),
            "method": "finished tasks' process-hours per cost unit (atoms, x3 if spin-polarised) of the same "
                      "part, times the pending tasks' cost units"}


def _cpu_hours(tasks: list[Task], outcomes: dict, base_ids: set[str]) -> dict:
    """CPU hours of the finished tasks per part (`_part`): CPU time where the engine recorded it
    (2026-12-01 on), wall time otherwise, an upper bound (other load stretches wall time).

    `outcomes`: task id -> `runner.cached_outcome` (None = not computed). Per part: `hours`,
    `n_tasks` and `n_cpu_timed` (how many of them recorded CPU time).
    """
    out: dict[str, dict] = {}
    for t in tasks:
        res = outcomes.get(t.id).result if outcomes.get(t.id) is not None else None
        if not res:
            continue
        d = out.setdefault(_part(t, base_ids), {"hours": 0.0, "n_tasks": 0, "n_cpu_timed": 0})
        timed = bool(res.get("cpu_time"))
        d["hours"] += float(res["cpu_time"] if timed else res.get("wall_time", 0.0)) / 3600
        d["n_tasks"] += 1
        d["n_cpu_timed"] += timed
    return {part: {**d, "hours": round(d["hours"], 3)} for part, d in out.items()}


def _wall_over_cpu(outcomes) -> dict:
    """Wall time over CPU time of the finished tasks (`runner.Outcome`s, None = not computed) that
    recorded both (engine of 2026-12-01 on).

    Above 1 when other load on the machine stretched the single-threaded DFT processes: how far
    the wall-time columns and process-hours overstate the DFT cost.
    """
    ratios = []
    for out in outcomes:
        res = out.result if out is not None else None
        if res and res.get("cpu_time"):
            ratios.append(float(res["wall_time"]) / float(res["cpu_time"]))
    if not ratios:
        return {"n_tasks": 0}
    q = np.percentile(ratios, [10, 50, 90])
    return {"n_tasks": len(ratios), "p10": round(float(q[0]), 2), "median": round(float(q[1]), 2),
            "p90": round(float(q[2]), 2)}


def assemble_augmented(data_dir: Path, outcomes: list, variants: list[Task], prov: dict) -> dict:
    """Write labels_augmented.csv: every labels.csv row (variant "") plus the finished variants.

    A variant row has its own IS (path, is_energy_per_atom, is_formation_energy_per_atom,
    is_wall_time_s, n_atoms) and the labels and RS columns of its parent (formation energy,
    e_above_hull, rs_path, rs_energy_per_atom, relaxed, ...); `rs_scale` is the cube root of the
    parent's relaxed volume over the variant's initial volume, and `relax_wall_time_s` is 0 (the
    variant was not relaxed). Same chemical system as the parent, hence the same split.
    """
    import csv

    from esnet_tf.dft.runner import cached_outcome

    data_dir = Path(data_dir)
    with open(data_dir / "labels.csv") as fh:
        reader = csv.DictReader(fh)
        cols = list(reader.fieldnames) + ["parent_id", "variant"]
        parents = {r["id"]: r for r in reader}
    mu = {el: v["energy_per_atom"] for el, v in prov["elemental_references"].items()}
    results = {o.task_id: o.result for o in outcomes if o.result is not None}
    rows = [dict(r, parent_id=r["id"], variant="") for r in parents.values()]
    n_pending, failed, no_parent, wall = 0, [], 0, 0.0
    per_variant: dict[str, int] = {}
    for t in variants:
        out = cached_outcome(t, data_dir / "calcs")
        if out is None:
            n_pending += 1
            continue
        if out.result is None:
            failed.append({"id": t.id, "reason": out.reason})
            continue
        r = out.result
        wall += r["is_wall_time"]
        pid, v = parent_of(t.id)
        if pid not in parents:
            no_parent += 1
            continue
        n = sum(r["composition"].values())
        from pymatgen.core import Structure

        rs_volume = Structure.from_dict(results[pid]["rs_structure"]).volume
        row = dict(parents[pid])
        row.update({
            "id": t.id, "path": f"calcs/{out.key}/{r['is_dos']}", "n_atoms": r["n_atoms"],
            "is_energy_per_atom": f"{r['is_energy'] / n:.6f}",
            "is_formation_energy_per_atom":
                f"{(r['is_energy'] - sum(k * mu[el] for el, k in r['composition'].items())) / n:.6f}",
            "rs_scale": f"{(rs_volume / t.structure.volume) ** (1 / 3):.6f}",
            "spin_polarized": r["spin_polarized"], "is_wall_time_s": f"{r['is_wall_time']:.6f}",
            "relax_wall_time_s": f"{0.0:.6f}", "parent_id": pid, "variant": v,
        })
        rows.append(row)
        per_variant[v] = per_variant.get(v, 0) + 1
    rows.sort(key=lambda r: (r["parent_id"], r["variant"]))
    with atomic_path(data_dir / "labels_augmented.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    n_var = len(rows) - len(parents)
    return {"n_rows": len(rows), "n_parents": len(parents), "n_variants": n_var,
            "n_parents_with_variants": len({r["parent_id"] for r in rows if r["variant"]}),
            "per_variant": dict(sorted(per_variant.items())), "n_pending": n_pending, "n_failed": len(failed),
            "failed": failed, "n_done_parent_missing": no_parent, "process_hours": round(wall / 3600, 3),
            "mean_wall_time_s": round(wall / max(1, n_var + no_parent), 1),
            "variants": {"iso_a / iso_b": f"lattice constant x (1 -/+ {CONTACT_RULE_SPREAD} |z|), |z| in [0.3, 2]",
                         "strain_c": f"z axis x (1 +- {CONTACT_RULE_SPREAD} |z|)",
                         "rattle": f"Gaussian displacements, {RATTLE_SIGMA} A per component, 2-atom "
                                   f"non-magnetic cells whose rattled mesh has <= {RATTLE_MAX_KPOINTS} "
                                   "irreducible k-points (time reversal only)", "seed": "sha256(parent id : variant)",
                         "spread": "CONTACT_RULE_SPREAD = std of rs_scale over the EOS-relaxed examples"},
            "reference": "Gibson et al., arXiv:2202.13947 (IS augmentation)"}


#: Default output of `esnet dft demo`: under the current directory, never inside the installation.
DEFAULT_DEMO_OUT = Path("esnet_demo_data")


def seed_from_package(out: Path) -> int:
    """Copy the packaged demo results (labels, provenance, calcs/ cache) into `out` unless it holds a
    cache already, so that `esnet dft demo --out DIR` resumes from what ships; returns files copied."""
    import shutil

    from esnet_tf import resources

    src, out = resources.demo_dir(), Path(out)
    if src.resolve() == out.resolve() or (out / "calcs").is_dir():
        return 0
    n = 0
    for f in sorted(src.rglob("*")):
        if f.is_file() and not f.name.endswith((".txt", ".log", ".tmp")):
            target = out / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            n += 1
    return n
