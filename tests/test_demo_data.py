"""Physics sanity of the embedded demo dataset computed by the GPAW engine."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

DEMO = Path(__file__).resolve().parents[1] / "datasets" / "is_dos" / "demo"
PROVENANCE = json.loads((DEMO / "provenance.json").read_text())


@pytest.fixture(scope="module")
def labels() -> dict[str, dict]:
    with open(DEMO / "labels.csv") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def ef(labels, key: str) -> float:
    assert key in labels, f"{key} missing from the demo dataset"
    return float(labels[key]["formation_energy_per_atom"])


@pytest.mark.parametrize("key", ["NaCl_rocksalt", "MgO_rocksalt", "GaAs_zincblende", "Cu3Au_l12", "AlNi_cscl"])
def test_known_stable_compounds_have_negative_formation_energy(labels, key):
    assert ef(labels, key) < 0


@pytest.mark.parametrize("low,high", [
    ("NaCl_rocksalt", "NaCl_cscl"),  # B1 < B2 at zero pressure
    ("GaAs_zincblende", "GaAs_rocksalt"),
    ("AlNi_cscl", "AlNi_rocksalt"),  # B2 NiAl
    ("AlNi_cscl", "AlNi_zincblende"),
    ("MgO_rocksalt", "MgO_cscl"),
    ("MgO_rocksalt", "MgO_zincblende"),
    # regular L2_1 Heuslers beat the inverse order; Mn2CoAl is an inverse (XA, Hg2CuTi-type) one
    *[(f"{f}_heusler", f"{f}_inverse_heusler") for f in ("AlVFe2", "FeCo2Si", "MnAlCu2", "MnCo2Ge",
                                                          "MnCo2Si", "MnGaNi2", "TiAlCo2", "TiAlNi2", "TiFe2Si")],
    ("Mn2AlCo_inverse_heusler", "Mn2AlCo_heusler"),
    # cubic perovskites: A on the A site beats the swapped assignment
    *[(f"{f}_perovskite", f"{f}_perovskite_swapped") for f in ("BaTiO3", "BaZrO3", "CaMnO3", "CaTiO3", "CaZrO3",
                                                               "KNbO3", "NaNbO3", "SrTiO3", "SrVO3", "SrZrO3")],
    # CaF2-type (fluorite, or antifluorite with the anion on 4a) against C15, and C15 Laves phases
    *[(f"{f}_fluorite", f"{f}_c15") for f in ("CaF2", "SrF2", "BaF2", "ZrO2", "Li2O", "Na2O", "K2O", "Mg2Si",
                                               "Mg2Ge", "CoSi2", "Si2Ni", "Al2Pt", "Al2Au")],
    *[(f"{f}_c15", f"{f}_fluorite") for f in ("MgCu2", "CaAl2", "ZrV2", "TiCr2")],
])
def test_known_polymorph_orderings(labels, low, high):
    assert ef(labels, low) < ef(labels, high)


@pytest.mark.parametrize("element,ground", [
    *[(el, "fcc") for el in ("Cu", "Ag", "Au", "Al", "Ni", "Pd", "Pt", "Ca", "Sr")],
    *[(el, "bcc") for el in ("Fe", "V", "Cr", "Nb", "Ba")],
])  # Na and K are left out: fcc and bcc are within a few meV in PBE
def test_elemental_fcc_bcc_orderings(labels, element, ground):
    other = {"fcc": "bcc", "bcc": "fcc"}[ground]
    e = {p: float(labels[f"{element}_{p}"]["rs_energy_per_atom"]) for p in ("fcc", "bcc")}
    assert e[ground] < e[other]


def test_hull_and_labels_are_consistent(labels):
    ehull = np.array([float(r["e_above_hull"]) for r in labels.values()])
    assert np.all(ehull >= -1e-6)
    assert (ehull <= 1e-6).sum() >= 10  # stable entries exist
    for r in labels.values():
        # the EOS vertex can land a fraction of a meV/atom above the best scanned point when the
        # initial structure is already at the minimum (e.g. Ge diamond: +0.3 meV/atom)
        assert float(r["rs_energy_per_atom"]) <= float(r["is_energy_per_atom"]) + 1e-3, r["id"]
        assert float(r["is_wall_time_s"]) > 0 and float(r["relax_wall_time_s"]) > 0
        if float(r["e_above_hull"]) <= 1e-6 and r["relax_converged"] != "True":
            # hull entries are fully relaxed (EOS minimum inside the scan, or BFGS converged), except
            # optimizer runs stopped by the volume guard, listed in provenance: CdI2-type layers, whose
            # interlayer gap PBE without a dispersion term barely binds (MgCl2: c/a ran away). Their
            # energy is an upper bound of the relaxed one, so they stay on the hull.
            assert r["relax_kind"] == "optimizer" and r["prototype"] == "cdi2", r["id"]
            assert r["id"] in PROVENANCE["summary"]["optimizer_not_converged"], r["id"]
        assert r["relax_kind"] in ("eos", "optimizer"), r["id"]
    for el in ("Cu", "Al", "Ni", "Fe"):
        assert min(ef(labels, f"{el}_fcc"), ef(labels, f"{el}_bcc")) == pytest.approx(0.0, abs=1e-6)


def test_files_exist_featurize_and_respect_spin(labels):
    from esnet_tf.featurize import featurize

    rows = sorted(labels.values(), key=lambda r: r["id"])
    for r in rows:
        assert (DEMO / r["path"]).exists() and (DEMO / r["rs_path"]).exists(), r["id"]
    for r in rows[:: max(1, len(rows) // 12)]:
        ex = featurize(DEMO / r["path"])
        assert ex.formula.replace(" ", "") and ex.spin_polarized == (r["spin_polarized"] == "True")
        x = ex.grid.energies()
        assert np.trapezoid((ex.dos_up + ex.dos_down).sum(1)[x <= 0], x[x <= 0]) > 0.5


def test_provenance_and_size():
    prov = json.loads((DEMO / "provenance.json").read_text())
    assert prov["code"].startswith("GPAW") and prov["settings"]["ecut"] >= 500
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file() and f.name != "gpaw.txt")
    # 14.5 MB for the 1159 task directories of the 2026-12-01 checkpoint (12.5 kB each); the whole
    # plan has 1925, so about 24 MB with room for the larger spin-polarised DOS files
    assert total < 32e6
    assert set(prov["in_progress"]) <= set(prov["pending"])  # a journal is not a result
    with open(DEMO / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = prov["summary"]
    assert summary["n_examples"] == len(rows) == prov["n_examples"]
    assert sum(summary["per_prototype"].values()) == len(rows)
    assert summary["relaxation_to_is_cost_ratio"] > 1  # a relaxation costs more than its IS single point
    assert len(prov["computed_utc"]) == 2 and prov["computed_utc"][0] <= prov["computed_utc"][1]


def test_coverage_of_elements_prototypes_and_polymorphs(labels):
    from collections import Counter

    from pymatgen.core import Composition, Element

    rows = list(labels.values())
    comps = {r["id"]: Composition(r["formula"]) for r in rows}
    elements = {el for c in comps.values() for el in c.elements}
    assert len(elements) >= 25
    assert {el.block for el in elements} >= {"s", "p", "d"}
    magnetic_3d = {Element(e) for e in ("Cr", "Mn", "Fe", "Co", "Ni")}
    assert any(r["spin_polarized"] == "True" and set(comps[r["id"]].elements) & magnetic_3d for r in rows)
    n_elements = Counter(len(c.elements) for c in comps.values())
    # the issue asks for >= 300 examples of binary and some ternary compounds plus the elemental
    # references (the committed build: 308 of 362 planned, 66 elemental, 200 binary, 42 ternary)
    assert len(rows) >= 300
    assert n_elements[1] >= 60 and n_elements[2] >= 190 and n_elements[3] >= 40
    prototypes = {r["prototype"] for r in rows}
    assert {"rocksalt", "cscl", "zincblende", "l12", "fluorite", "perovskite", "heusler"} <= prototypes
    # polymorphs compete: every compound composition comes in at least two prototypes
    # (exempt: a composition whose other prototype failed, listed in failures.csv, or is still
    # pending in provenance.json)
    with open(DEMO / "failures.csv") as fh:
        not_done = [r["id"] for r in csv.DictReader(fh)]
    not_done += json.loads((DEMO / "provenance.json").read_text())["pending"]
    failed = {Composition(i.split("_")[0]).reduced_formula for i in not_done}
    per_formula = Counter(c.reduced_formula for c in comps.values() if len(c.elements) > 1)
    lonely = [f for f, n in per_formula.items() if n < 2 and f not in failed]
    assert not lonely, lonely


def test_settings_passed_the_convergence_check():
    prov = json.loads((DEMO / "provenance.json").read_text())
    conv = json.loads((DEMO / "convergence.json").read_text())
    assert conv["base"]["settings"] == prov["settings"]  # the check is of the settings in use
    assert conv["high"]["settings"]["ecut"] > prov["settings"]["ecut"]
    assert conv["high"]["settings"]["kpt_density"] > prov["settings"]["kpt_density"]
    assert "MgO" in conv["change_eV_per_atom"] and len(conv["change_eV_per_atom"]) >= 5  # an oxide among 5
    assert conv["max_abs_change_eV_per_atom"] < 0.020


# --- non-cubic structures relaxed with the optimizer (issue 17) --------------------------------
# These are computed after the cubic plan, a part at a time: a pair is skipped (with the reason)
# while one of its rows is pending or failed, and fails on a wrong ordering once both are there.

@pytest.fixture(scope="module")
def not_done() -> dict[str, str]:
    prov = json.loads((DEMO / "provenance.json").read_text())
    with open(DEMO / "failures.csv") as fh:
        out = {r["id"]: f"failed: {r['reason'][:80]}" for r in csv.DictReader(fh)}
    out.update({i: "not computed yet (provenance.json pending)" for i in prov["pending"]})
    return out


def energy_or_skip(labels, not_done, key: str, col: str = "formation_energy_per_atom") -> float:
    if key not in labels:
        if key in not_done:
            pytest.skip(f"{key}: {not_done[key]}")
        raise AssertionError(f"{key} is neither in labels.csv nor pending nor failed (a typo?)")
    return float(labels[key][col])


HCP_GROUND = ("Mg", "Ti", "Zr", "Y", "Sc", "Zn", "Co")  # hcp in experiment and PBE
FCC_BELOW_HCP = ("Al", "Ni", "Pd", "Pt", "Cu")  # Ag and Au: within a few meV in PBE, not tested
BCC_BELOW_HCP = ("V", "Nb", "Cr", "Fe", "Ba")  # Fe: ferromagnetic bcc well below (non-magnetic) hcp
# Not tested: the alkalis, whose close-packed and bcc phases lie within ~15 meV/atom. Here Li and Na come
# out hcp < fcc < bcc (experiment: bcc at room temperature, close-packed martensites below ~70 K and
# ~35 K, as PBE has it), and K fcc 5.5 meV/atom below bcc, where experiment has bcc at all temperatures
# and converged PBE has bcc and fcc within ~1 meV/atom: inside these settings' accuracy, not a PBE result.


@pytest.mark.parametrize("element,low,high", [
    *[(el, "hcp", other) for el in HCP_GROUND for other in ("fcc", "bcc")],
    *[(el, "fcc", "hcp") for el in FCC_BELOW_HCP],
    *[(el, "bcc", "hcp") for el in BCC_BELOW_HCP],
])
def test_hcp_elemental_orderings(labels, not_done, element, low, high):
    e_low = energy_or_skip(labels, not_done, f"{element}_{low}", "rs_energy_per_atom")
    e_high = energy_or_skip(labels, not_done, f"{element}_{high}", "rs_energy_per_atom")
    assert e_low < e_high


@pytest.mark.parametrize("low,high", [
    # wurtzite below zincblende in PBE for ZnO, AlN, GaN (GaN and InN by only ~5 meV/atom), zincblende
    # below wurtzite for the III-V arsenides and antimonides (as in experiment)
    *[(f"{f}_wurtzite", f"{f}_zincblende") for f in ("ZnO", "AlN", "GaN")],
    *[(f"{f}_zincblende", f"{f}_wurtzite") for f in ("GaAs", "AlAs", "InAs", "GaSb", "AlSb", "InSb")],
    ("MgO_rocksalt", "MgO_wurtzite"), ("AlN_wurtzite", "AlN_rocksalt"), ("GaN_wurtzite", "GaN_rocksalt"),
    # L1_0 below B2 (CsCl), except NiAl (B2)
    *[(f"{f}_l10", f"{f}_cscl") for f in ("CuAu", "FePt", "NiPt", "CoPt", "FePd", "TiAl")],
    ("AlNi_cscl", "AlNi_l10"),
    # rutile below fluorite; CdI2-type layers below fluorite; NiAs-type below rocksalt and zincblende
    *[(f"{f}_rutile", f"{f}_fluorite") for f in ("TiO2", "MgF2", "ZnF2", "GeO2", "NiF2")],
    *[(f"{f}_cdi2", f"{f}_fluorite") for f in ("MgCl2", "TiCl2", "VCl2", "NiCl2", "FeCl2")],
    *[(f"{f}_nias", f"{f}_{p}") for f in ("NiAs", "NiSb", "MnSb", "CrSb", "MnAs") for p in ("rocksalt", "zincblende")],
])
def test_noncubic_polymorph_orderings(labels, not_done, low, high):
    assert energy_or_skip(labels, not_done, low) < energy_or_skip(labels, not_done, high)


# A3B compounds that order in L1_2 (Cu3Au-type) in experiment: PBE puts L1_2 below D0_3 for each, by
# 40-360 meV/atom except Fe3Pt (~7 meV/atom). Not tested: Fe3Al, D0_3 in experiment, where this PBE
# puts L1_2 ~4 meV/atom lower (inside the settings' accuracy); Al3Ti, Al3Zr, Ti3Al and Sc3Al, whose
# ground states (D0_22, D0_23, D0_19) are in neither prototype.
L12_IN_EXPERIMENT = ("AlNi3", "Cu3Au", "Cu3Pd", "FeNi3", "FePt3", "Fe3Pt", "GaNi3", "ScAl3", "TiPt3", "TiCo3",
                     "MnNi3", "Zr3Al")


@pytest.mark.parametrize("formula", L12_IN_EXPERIMENT)
def test_a3b_l12_below_d03_where_experiment_has_l12(labels, not_done, formula):
    assert energy_or_skip(labels, not_done, f"{formula}_l12") < energy_or_skip(labels, not_done, f"{formula}_d03")


def test_pbe_puts_anatase_below_rutile(labels, not_done):
    """A known failure of PBE: anatase TiO2 comes out below rutile (by ~10-20 meV/atom in the
    literature), while rutile is the stable bulk phase in experiment (calorimetry)."""
    assert energy_or_skip(labels, not_done, "TiO2_anatase") < energy_or_skip(labels, not_done, "TiO2_rutile")


def test_optimizer_rows_relaxed_downhill_and_converged(labels):
    rows = [r for r in labels.values() if r["relax_kind"] == "optimizer"]
    for r in rows:
        assert float(r["rs_energy_per_atom"]) <= float(r["is_energy_per_atom"]) + 1e-3, r["id"]
        assert 0.8 < float(r["rs_scale"]) < 1.3, r["id"]
    n_conv = sum(r["relax_converged"] == "True" for r in rows)
    assert n_conv >= 0.8 * len(rows)  # BFGS hit its step cap in few cases at most


# --- IS augmentation (labels_augmented.csv, TFDS config demo_augmented) ------------------------

@pytest.fixture(scope="module")
def augmented() -> list[dict]:
    path = DEMO / "labels_augmented.csv"
    if not path.exists():
        pytest.skip("labels_augmented.csv not assembled yet")
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_augmented_variants_carry_their_parents_labels_and_split(labels, augmented):
    from pymatgen.core import Composition

    from esnet_tf.splits import split_of

    parents = [r for r in augmented if r["variant"] == ""]
    variants = [r for r in augmented if r["variant"] != ""]
    assert {r["id"] for r in parents} == set(labels)  # every labels.csv row, unchanged
    for r in parents:
        assert r["parent_id"] == r["id"] and r["path"] == labels[r["id"]]["path"]
    assert len({r["id"] for r in augmented}) == len(augmented)
    chemsys = lambda f: "-".join(sorted(el.symbol for el in Composition(f).elements))  # noqa: E731
    for v in variants:
        p = labels[v["parent_id"]]
        assert v["id"] == f"{v['parent_id']}__{v['variant']}"
        assert v["variant"] in ("iso_a", "iso_b", "strain_c", "rattle")
        assert Composition(v["formula"]) == Composition(p["formula"])
        assert chemsys(v["formula"]) == chemsys(p["formula"])  # same chemical system ...
        assert split_of(chemsys(v["formula"])) == split_of(chemsys(p["formula"]))  # ... hence the same split
        for col in ("formation_energy_per_atom", "e_above_hull", "rs_path", "rs_energy_per_atom", "prototype"):
            assert v[col] == p[col], (v["id"], col)
        assert v["path"] != p["path"] and (DEMO / v["path"]).exists()
        assert float(v["is_wall_time_s"]) > 0 and float(v["relax_wall_time_s"]) == 0


def test_augmented_is_dos_holds_the_parents_composition(labels, augmented):
    from esnet_tf.featurize import featurize
    from pymatgen.core import Composition

    variants = sorted((r for r in augmented if r["variant"]), key=lambda r: r["id"])
    if not variants:
        pytest.skip("no augmentation variant computed yet")
    for v in variants[:: max(1, len(variants) // 8)]:
        ex = featurize(DEMO / v["path"])
        assert Composition(ex.formula).reduced_formula == Composition(v["formula"]).reduced_formula
        assert ex.spin_polarized == (v["spin_polarized"] == "True")


def test_contact_rule_spread_constant_matches_the_data(labels):
    from esnet_tf.dft.demo import CONTACT_RULE_SPREAD

    scales = np.array([float(r["rs_scale"]) for r in labels.values() if r["relax_kind"] == "eos"])
    assert abs(scales.std() - CONTACT_RULE_SPREAD) < 0.02


@pytest.fixture(scope="module")
def demo_variants() -> list:
    """The demo plan's IS-augmentation variant tasks, built once for the module (the plan takes ~9 s to build;
    the tests only read the tasks)."""
    from esnet_tf.dft import demo

    return [t for t in demo.demo_tasks() if demo.parent_of(t.id)[1]]


def test_pending_estimate_scales_the_finished_tasks_cost_per_atom(tmp_path, demo_variants):
    """provenance.json's process_hours_pending_estimate on a cache whose two finished variants took
    exactly one hour per atom: a pending non-magnetic 2-atom variant is then 2 h, a magnetic one
    (spin-polarised SCF, counted 3x) 6 h."""
    import json
    import shutil

    from esnet_tf.dft import demo
    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import task_hash

    magnetic = set("Cr Mn Fe Co Ni".split())

    def is_magnetic(t) -> bool:
        return bool({el.symbol for el in t.structure.composition.elements} & magnetic)

    variants = demo_variants
    finished = (t for t in variants if not is_magnetic(t)
                and (o := cached_outcome(t, DEMO / "calcs")) is not None and o.result is not None)
    done = list(itertools.islice(finished, 2))  # the first two only: stops there
    if len(done) < 2:
        pytest.skip("fewer than 2 finished non-magnetic variants in the demo cache")
    for t in done:
        shutil.copytree(DEMO / "calcs" / task_hash(t), tmp_path / task_hash(t))
        res = json.loads((tmp_path / task_hash(t) / "result.json").read_text())
        res["wall_time"] = 3600.0 * len(t.structure)  # one hour per atom
        (tmp_path / task_hash(t) / "result.json").write_text(json.dumps(res))
    plain = next(t for t in variants if t not in done and len(t.structure) == 2 and not is_magnetic(t))
    spin = next(t for t in variants if len(t.structure) == 2 and is_magnetic(t))
    for pending, hours in ((plain, 2.0), (spin, 6.0)):
        est = demo._pending_estimate(done + [pending], {t.id: cached_outcome(t, tmp_path) for t in done + [pending]},
                                     set())
        assert est["per_part"] == {"augmentation_single_points": hours}
        assert est["total"] == hours


def test_wall_over_cpu_time_of_the_tasks_that_recorded_both(tmp_path, demo_variants):
    import shutil

    from esnet_tf.dft import demo
    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import task_hash

    variants = demo_variants
    done = [t for t in variants if (o := cached_outcome(t, DEMO / "calcs")) is not None and o.result is not None][:3]
    if len(done) < 3:
        pytest.skip("fewer than 3 finished variants in the demo cache")
    for t, stretch in zip(done, (1.0, 2.0, None)):  # the third recorded no CPU time (engine before 2026-12-01)
        shutil.copytree(DEMO / "calcs" / task_hash(t), tmp_path / task_hash(t))
        path = tmp_path / task_hash(t) / "result.json"
        result = json.loads(path.read_text())
        result.pop("cpu_time", None)
        if stretch is not None:
            result["cpu_time"] = result["wall_time"] / stretch
        path.write_text(json.dumps(result))
    ratio = demo._wall_over_cpu([cached_outcome(t, tmp_path) for t in done])
    assert ratio["n_tasks"] == 2 and ratio["median"] == 1.5 and ratio["p10"] == 1.1 and ratio["p90"] == 1.9


def test_cpu_hours_count_cpu_time_where_recorded_and_wall_time_before(tmp_path, demo_variants):
    import shutil

    from esnet_tf.dft import demo
    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import task_hash

    variants = demo_variants
    done = list(itertools.islice((t for t in variants  # the first two only: stops there
                                  if (o := cached_outcome(t, DEMO / "calcs")) is not None and o.result is not None), 2))
    if len(done) < 2:
        pytest.skip("fewer than 2 finished variants in the demo cache")
    for t, cpu in zip(done, (600.0, None)):  # the second recorded no CPU time (engine before 2026-12-01)
        shutil.copytree(DEMO / "calcs" / task_hash(t), tmp_path / task_hash(t))
        path = tmp_path / task_hash(t) / "result.json"
        result = json.loads(path.read_text())
        result.pop("cpu_time", None)
        result["wall_time"] = 3600.0 if cpu is None else 1200.0
        if cpu is not None:
            result["cpu_time"] = cpu
        path.write_text(json.dumps(result))
    pending = next(t for t in variants if t not in done)
    hours = demo._cpu_hours(done + [pending], {t.id: cached_outcome(t, tmp_path) for t in done + [pending]}, set())
    assert hours == {"augmentation_single_points": {"hours": round((600 + 3600) / 3600, 3), "n_tasks": 2,
                                                    "n_cpu_timed": 1}}


def test_docs_dataset_paragraph_matches_the_committed_data(labels):
    """docs/dft.md's demo paragraph is what `esnet dft demo --assemble-only --readme docs/dft.md` writes."""
    from esnet_tf.dft.demo import SUMMARY_MARKERS, readme_with_summary, summary_paragraph

    doc = (DEMO.parents[2] / "docs" / "dft.md").read_text(encoding="utf-8")
    expected = readme_with_summary(doc, summary_paragraph(PROVENANCE, list(labels.values())))
    assert doc == expected, ("docs/dft.md's demo-summary block is stale: run `esnet dft demo --assemble-only "
                             "--out datasets/is_dos/demo --readme docs/dft.md`")
    with pytest.raises(ValueError, match="exactly one"):
        readme_with_summary("no markers here\n", "x")
    assert SUMMARY_MARKERS[0] in doc
