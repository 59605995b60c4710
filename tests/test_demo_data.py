"""Physics sanity of the embedded demo dataset computed by the GPAW engine."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

DEMO = Path(__file__).resolve().parents[1] / "datasets" / "is_dos" / "demo"


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
        if float(r["e_above_hull"]) <= 1e-6:  # hull entries are fully relaxed (minimum inside the scan)
            assert r["eos_bracketed"] == "True", r["id"]
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
    assert total < 25e6
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
