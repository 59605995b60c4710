"""The embedded IS2RE demo dataset: which structures, and how labels are assembled.

Rebuild (hours on 2 cores, resumable): `esnet dft demo --workers 2`.
Every structure is a cubic prototype without internal degrees of freedom, so the EOS
relaxation is exact; formation energies are against the lowest computed elemental phase
(O, F, Cl: the dimer in a box); `e_above_hull` comes from pymatgen's PhaseDiagram over the
dataset's own relaxed entries.
"""
from __future__ import annotations

from pathlib import Path

from esnet_tf.dft.prototypes import DIMER_BONDS, molecule_in_box, prototype_structure
from esnet_tf.dft.labels import assemble
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task

GASES = ("O", "F", "Cl")
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


def demo_tasks(settings: DFTSettings | None = None, timeout: float = 1800.0) -> list[Task]:
    """All demo structures: elemental references first, then compounds.

    Ordered by cost so that a partial run holds as many examples of every kind as it can: the
    compounds of the physics checks (NaCl, MgO, GaAs, NiAl, Cu3Au) first, then rounds of two
    AB compositions (2-atom cells), one perovskite pair and one Heusler pair, then the AB2
    pairs (fluorite + 6-atom C15), the other Heuslers and the 4-atom A3B cells (slow when
    magnetic) last. Every composition's prototypes stay together.
    """
    st = settings or DFTSettings()

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
    tasks = refs + compounds
    ids = [t.id for t in tasks]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise RuntimeError(f"duplicate demo ids: {sorted(dup)}")
    return tasks


def assemble_cached(data_dir: Path, settings: DFTSettings | None = None) -> dict:
    """Assemble labels from whatever the cache holds, without computing anything.

    Tasks not computed yet are listed in provenance.json (`pending`), not silently dropped.
    """
    from esnet_tf.dft.runner import cached_outcome

    st = settings or DFTSettings()
    data_dir = Path(data_dir)
    tasks = demo_tasks(st)
    outcomes, pending = [], []
    for t in tasks:
        out = cached_outcome(t, data_dir / "calcs")
        (outcomes.append(out) if out is not None else pending.append(t.id))
    prov = assemble(outcomes, data_dir, st)
    prov.update(n_pending=len(pending), pending=pending)
    (data_dir / "provenance.json").write_text(__import__("json").dumps(prov, indent=1))
    return prov


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
