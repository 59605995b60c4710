"""Non-cubic prototypes, the IS augmentation and the demo plan (no DFT: structures only)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Element
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from esnet_tf.dft.prototypes import NONCUBIC_PROTOTYPES, noncubic_structure, prototype_structure

CASES = [("hcp", ["Mg"], "P6_3/mmc", 2), ("wurtzite", ["Zn", "O"], "P6_3mc", 4),
         ("nias", ["Ni", "As"], "P6_3/mmc", 4), ("l10", ["Cu", "Au"], "P4/mmm", 2),
         ("rutile", ["Ti", "O"], "P4_2/mnm", 6), ("anatase", ["Ti", "O"], "I4_1/amd", 6),
         ("cdi2", ["Mg", "Cl"], "P-3m1", 3), ("perovskite_p4mm", ["Ba", "Ti", "O"], "P4mm", 5),
         ("layered_abo2", ["Li", "Co", "O"], "R-3m", 4)]


def _closest_pair_ratio(s) -> float:
    """max over pairs of (r_i + r_j) / d_ij: 1 when the tightest pair touches at the Slater radii."""
    best = 0.0
    for site in s:
        for nb in s.get_neighbors(site, 6.5):
            r = float(Element(site.specie.symbol).atomic_radius) + float(Element(nb.specie.symbol).atomic_radius)
            best = max(best, r / nb.nn_distance)
    return best


def test_every_noncubic_prototype_is_covered():
    assert {c[0] for c in CASES} == set(NONCUBIC_PROTOTYPES)


@pytest.mark.parametrize("name,species,spacegroup,n", CASES)
def test_noncubic_prototypes_follow_the_contact_rule(name, species, spacegroup, n):
    s = noncubic_structure(name, species)
    assert len(s) == n
    assert SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_symbol() == spacegroup
    assert _closest_pair_ratio(s) == pytest.approx(1.0, abs=1e-6)  # the same rule as the cubic prototypes


def test_ideal_internal_parameters():
    hcp = noncubic_structure("hcp", ["Mg"])
    assert hcp.lattice.c / hcp.lattice.a == pytest.approx(np.sqrt(8 / 3))
    wz = noncubic_structure("wurtzite", ["Zn", "O"])
    z = {sp.symbol: [] for sp in wz.species}
    for site in wz:
        z[site.specie.symbol].append(site.frac_coords[2] % 1)
    assert (min(z["O"]) - min(z["Zn"])) == pytest.approx(3 / 8)  # u = 3/8
    rut = noncubic_structure("rutile", ["Ti", "O"])
    d = sorted(nb.nn_distance for nb in rut.get_neighbors(rut[0], 2.5))
    assert len(d) == 6 and d[-1] - d[0] < 1e-6  # x = 0.3, c/a = sqrt(0.4): six equal bonds
    l10 = noncubic_structure("l10", ["Cu", "Au"])
    assert l10.lattice.c / (l10.lattice.a * np.sqrt(2)) == pytest.approx(1.0)  # from fcc, c/a = 1
    with pytest.raises(ValueError, match="takes 2 species"):
        noncubic_structure("wurtzite", ["Zn"])


def test_l10_equals_the_fcc_lattice_when_both_sites_hold_one_element():
    l10 = noncubic_structure("l10", ["Cu", "Cu"], 2.6)
    fcc = prototype_structure("fcc", ["Cu"], 2.6 * np.sqrt(2))
    assert l10.volume / 2 == pytest.approx(fcc.volume)


# --- augmentation ------------------------------------------------------------------------------

def test_variants_are_deterministic_and_keep_composition_and_symmetry():
    from esnet_tf.dft.demo import CONTACT_RULE_SPREAD, RATTLE_SIGMA, variant_structure

    nacl = prototype_structure("rocksalt", ["Na", "Cl"])
    a0 = nacl.lattice.abc[0]
    sa, sb = variant_structure("NaCl_rocksalt", nacl, "iso_a"), variant_structure("NaCl_rocksalt", nacl, "iso_b")
    assert sa.lattice.abc[0] < a0 < sb.lattice.abc[0]  # one compressed, one expanded
    for s in (sa, sb):
        assert 0.3 * CONTACT_RULE_SPREAD - 1e-9 <= abs(s.lattice.abc[0] / a0 - 1) <= 2 * CONTACT_RULE_SPREAD + 1e-9
        assert SpacegroupAnalyzer(s).get_space_group_symbol() == "Fm-3m"
    again = variant_structure("NaCl_rocksalt", nacl, "iso_a")
    np.testing.assert_allclose(again.lattice.matrix, sa.lattice.matrix)
    other = variant_structure("KCl_rocksalt", prototype_structure("rocksalt", ["K", "Cl"]), "iso_a")
    assert other.lattice.abc[0] / prototype_structure("rocksalt", ["K", "Cl"]).lattice.abc[0] != \
        pytest.approx(sa.lattice.abc[0] / a0)  # seeded per parent
    # strain_c: a tetragonal strain of a cubic cell, c/a only for hexagonal cells (symmetry kept)
    st = variant_structure("NaCl_rocksalt", nacl, "strain_c")
    assert SpacegroupAnalyzer(st).get_space_group_symbol() == "I4/mmm"
    hcp = noncubic_structure("hcp", ["Mg"])
    sh = variant_structure("Mg_hcp", hcp, "strain_c")
    assert sh.lattice.a == pytest.approx(hcp.lattice.a) and sh.lattice.c != pytest.approx(hcp.lattice.c)
    assert SpacegroupAnalyzer(sh).get_space_group_symbol() == "P6_3/mmc"
    rat = variant_structure("NaCl_rocksalt", nacl, "rattle")
    disp = rat.cart_coords - nacl.cart_coords
    np.testing.assert_allclose(disp.mean(axis=0), 0, atol=1e-9)
    assert 0 < np.abs(disp).max() < 5 * RATTLE_SIGMA
    for s in (sa, sb, st, rat):
        assert s.composition == nacl.composition


@pytest.fixture(scope="module")
def plan():
    from esnet_tf.dft.demo import demo_tasks

    return demo_tasks()


def test_plan_parts_augmentation_and_splits(plan):
    from esnet_tf.dft.demo import demo_tasks, parent_of, wants_rattle
    from esnet_tf.splits import split_of

    by_id = {t.id: t for t in plan}
    relaxed = [t for t in plan if t.relax != "none"]
    variants = [t for t in plan if parent_of(t.id)[1]]
    assert len(demo_tasks(part="base")) == 365  # the cubic plan of the plain `demo` config is unchanged
    new = demo_tasks(part="new")
    assert [t.id for t in new] == [t.id for t in plan[365:]]  # everything after the base part, same order
    assert sum(t.relax == "optimizer" for t in plan) >= 60
    assert {t.timeout for t in plan if t.relax == "optimizer"} == {6 * 1800.0}  # ~3 h for magnetic rutiles
    assert {t.timeout for t in plan if t.relax == "eos"} == {1800.0}
    per_parent = Counter(parent_of(t.id)[0] for t in variants)
    assert all(per_parent[t.id] >= 3 for t in relaxed)  # every relaxed structure: >= 3 more IS
    for v in variants:
        parent = by_id[parent_of(v.id)[0]]
        assert v.relax == "none" and parent.relax != "none"
        assert v.structure.composition == parent.structure.composition
        cs = lambda t: "-".join(sorted(el.symbol for el in t.structure.composition.elements))  # noqa: E731
        assert cs(v) == cs(parent) and split_of(cs(v)) == split_of(cs(parent))
    # the base part first (the pending A3B cells finish before anything new), rattles last
    n_base = 365
    assert all(parent_of(t.id)[1] == "" and t.relax != "optimizer" for t in plan[:n_base])
    kinds = [parent_of(t.id)[1] for t in plan]
    first_rattle = kinds.index("rattle")
    assert set(kinds[first_rattle:]) == {"rattle"}
    rattled = {parent_of(t.id)[0] for t in variants if parent_of(t.id)[1] == "rattle"}
    assert rattled == {t.id for t in relaxed if wants_rattle(t)} and 0 < len(rattled) < len(relaxed)


def test_rattles_only_where_their_kpoints_are_affordable(plan):
    """`rattled_kpoints` is the irreducible count of a P1 cell (spglib, time reversal only), and
    every planned rattle stays within RATTLE_MAX_KPOINTS of them."""
    import spglib

    from esnet_tf.dft.demo import RATTLE_MAX_KPOINTS, parent_of, rattled_kpoints
    from esnet_tf.dft.engine import kpoint_mesh, is_spin_polarized

    by_id = {t.id: t for t in plan}
    rattles = [t for t in plan if parent_of(t.id)[1] == "rattle"]
    for t in rattles[:3] + rattles[-3:]:
        s, mesh = t.structure, kpoint_mesh(t)
        cell = (s.lattice.matrix, s.frac_coords, [site.specie.Z for site in s])
        mapping, _ = spglib.get_ir_reciprocal_mesh(mesh, cell, is_shift=[0, 0, 0], is_time_reversal=True)
        assert len(np.unique(mapping)) == rattled_kpoints(mesh), t.id
    for t in rattles:
        parent = by_id[parent_of(t.id)[0]]
        assert len(parent.structure) == 2 and not is_spin_polarized(parent)
        assert kpoint_mesh(t) == kpoint_mesh(parent) and rattled_kpoints(kpoint_mesh(t)) <= RATTLE_MAX_KPOINTS
    assert rattled_kpoints((10, 10, 10)) == 504 and rattled_kpoints((5, 5, 5)) == 63


def test_harder_compositions_have_competitors(plan):
    """Every optimizer composition is also computed in another prototype (polymorphs compete)."""
    per_formula: dict[str, set] = {}
    for t in plan:
        if t.relax != "none":
            per_formula.setdefault(t.structure.composition.reduced_formula, set()).add(t.prototype)
    lonely = [f for f, ps in per_formula.items() if len(ps) < 2]
    assert not lonely, lonely
