"""The hypothetical screening pool's plan (esnet_tf/dft/pool.py): fixed, out of the demo's systems,
cubic candidates first and hulls completing in their order, and the new prototypes it uses."""
from __future__ import annotations


import pytest

from dataclasses import replace

from esnet_tf.dft import pool
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.prototypes import noncubic_structure, prototype_structure


@pytest.fixture(scope="module")
def plan():
    return pool.pool_tasks()


def test_half_heusler_and_layered_prototypes_have_their_space_groups():
    hh = prototype_structure("half_heusler", ["Sn", "Ti", "Ni"])  # TiNiSn, Ni on the tetrahedral 4c site
    assert hh.composition.reduced_formula == "TiNiSn" and hh.get_space_group_info()[1] == 216
    lay = noncubic_structure("layered_abo2", ["Li", "Co", "O"])
    assert len(lay) == 4 and lay.get_space_group_info()[1] == 166
    # the contact rule: no pair closer than the sum of Slater radii, and one pair touching (here Li-Li
    # in the Li layer: 2 x 1.45 A; Li-O would touch at 1.45 + 0.6 = 2.05 A, 0.6 mA further in)
    from pymatgen.core import Element

    gaps = [n.nn_distance - float(Element(s.specie.symbol).atomic_radius) - float(Element(n.specie.symbol).atomic_radius)
            for s in lay for n in lay.get_neighbors(s, 4.0)]
    assert min(gaps) == pytest.approx(0.0, abs=1e-6)
    li_li = [n.nn_distance for s in lay if s.specie.symbol == "Li" for n in lay.get_neighbors(s, 4.0)
             if n.specie.symbol == "Li"]
    assert min(li_li) == pytest.approx(2.9, abs=1e-6)


def test_the_pool_is_large_enough_and_grows_the_domain(plan):
    cands = [p for p in plan if p.role == "candidate"]
    assert len(cands) >= 400
    assert {p.family for p in cands} == set(pool.FAMILIES)
    assert sum(p.task.relax == "optimizer" for p in cands) == pool.N_SYSTEMS["layered_abo2"]
    from esnet_tf.dft.demo import demo_tasks

    demo_elements = {el.symbol for t in demo_tasks() for el in t.structure.composition.elements}
    pool_elements = {el.symbol for p in plan for el in p.task.structure.composition.elements}
    assert len(pool_elements - demo_elements) >= 10
    assert len(pool_elements | demo_elements) >= 45


def test_no_candidate_system_is_a_demo_system_and_ids_are_unique(plan):
    demo = pool.demo_systems()
    ids = [p.task.id for p in plan]
    assert len(ids) == len(set(ids))
    for p in plan:
        if p.role == "candidate":
            assert frozenset(el.symbol for el in p.task.structure.composition.elements) not in demo, p.task.id


def test_systems_complete_one_at_a_time_in_the_order_of_the_draw(plan):
    """Elements, label-range compounds, then each system's cubic candidates followed by the competitors
    no earlier system needed (its hull completes before the next system's first candidate), the optimizer
    candidates last and after the competitors of their system."""
    def system(p):
        return frozenset(el.symbol for el in p.task.structure.composition.elements)

    phases = [0 if p.role == "element" else 1 if p.role == "label_range"
              else 3 if p.role == "candidate" and p.task.relax == "optimizer" else 2 for p in plan]
    assert phases == sorted(phases) and set(phases) == {0, 1, 2, 3}
    position = {p.task.id: k for k, p in enumerate(plan)}
    competitors = [(k, system(p)) for k, p in enumerate(plan) if p.role == "competitor"]
    first_candidate: dict[frozenset, int] = {}
    for k, p in enumerate(plan):
        if p.role == "candidate" and p.task.relax == "eos":
            first_candidate.setdefault(system(p), k)
    # the draw's order of systems: Heusler and perovskite systems alternate
    fams = [next(q.family for q in plan if q.role == "candidate" and system(q) == sys_) for sys_ in first_candidate]
    assert fams[:4] == ["heusler", "perovskite", "heusler", "perovskite"]
    checked = 0
    starts = sorted(first_candidate.values())
    for sys_, start in first_candidate.items():
        later = [k for k in starts if k > start]
        mine = [k for k, els in competitors if els <= sys_]
        assert mine, sorted(sys_)
        if later:  # every competitor of this system runs before the next system's first candidate
            assert max(mine) < later[0], sorted(sys_)
            checked += 1
        # and this system's candidates run before the competitors it is the first to need
        cands = [k for k, p in enumerate(plan) if p.role == "candidate" and p.task.relax == "eos" and system(p) == sys_]
        assert max(cands) < max(mine) or all(k < start for k in mine)
    assert checked > 140
    for p in plan:
        if p.role == "candidate" and p.task.relax == "optimizer":
            assert all(k < position[p.task.id] for k, els in competitors if els <= system(p)), p.task.id


def test_label_range_compounds_are_gas_element_pairs_trained_on_never_candidates(plan):
    """Every pair of N, O, F, Cl in rocksalt, B2 and zincblende: 2-atom EOS cells, in no demo system,
    a training role (the study and the pool recipes train on them; the campaign takes them as references)."""
    lr = [p for p in plan if p.role == "label_range"]
    assert len(lr) == 6 * 3
    assert {p.task.prototype for p in lr} == set(pool.LABEL_RANGE_PROTOTYPES)
    demo = pool.demo_systems()
    for p in lr:
        els = frozenset(el.symbol for el in p.task.structure.composition.elements)
        assert len(els) == 2 and els <= set(pool.LABEL_RANGE_ELEMENTS) and els not in demo, p.task.id
        assert len(p.task.structure) == 2 and p.task.relax == "eos" and p.family == ""
        # only the EOS search is longer; the physics settings are the pool's
        assert p.task.settings.eos_max_extra == pool.LABEL_RANGE_EOS_MAX_EXTRA
        assert replace(p.task.settings, eos_max_extra=4) == DFTSettings()
    assert "label_range" in pool.POOL_TRAINING_ROLES and "candidate" not in pool.POOL_TRAINING_ROLES
    assert set(pool.ROLES) == {p.role for p in plan}
    from esnet_tf.campaign import hypothetical
    from esnet_tf.study import data as study_data

    assert hypothetical.ROLES is pool.ROLES and study_data.POOL_TRAINING_ROLES is pool.POOL_TRAINING_ROLES


def test_the_selection_does_not_depend_on_anything_but_the_seed():
    a = pool.pool_systems(exclude=set())
    b = pool.pool_systems(exclude=set())
    assert a == b
    assert {k: len(v) for k, v in a.items()} == pool.N_SYSTEMS
    # a different seed draws other systems: the order is the seed's, not the element sets'
    old = pool.POOL_SEED
    try:
        pool.POOL_SEED = old + 1
        assert pool.pool_systems(exclude=set())["heusler"] != a["heusler"]
    finally:
        pool.POOL_SEED = old


def test_pool_cli_refuses_a_demo_dir_without_a_cache_in_one_line(tmp_path, capsys):
    from esnet_tf.cli import main as cli_main

    rc = cli_main(["dft", "pool", "--out", str(tmp_path / "pool"), "--demo-dir", str(tmp_path), "--assemble-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--demo-dir" in err[0] and "calcs/" in err[0]
