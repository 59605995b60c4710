"""The pool replay (`esnet_tf.campaign.hypothetical`) on a real subset of the pool's labels.csv: only the
hull-complete candidates are replayed, their E_hull truth is pymatgen's PhaseDiagram over the demo's and
the pool's rows of their systems, and the potential's references never read a candidate's label."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from esnet_tf.campaign.hull import true_e_above_hull
from esnet_tf.campaign.hypothetical import (hypothetical_pool, labelled_e_above_hull, select_candidates,
                                            uip_source)
from esnet_tf.errors import UserError
from esnet_tf.screening.references import ReferenceHull

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "datasets" / "is_dos" / "pool"
DEMO = ROOT / "datasets" / "is_dos" / "demo"
#: two systems whose hulls were complete on 2026-12-07: Ca-V-O needs the demo's CaO and VO/VO2 rows,
#: Nb-Ru-Sb only pool rows (and the demo's Nb and Sb elements)
SYSTEMS = (frozenset({"Ca", "V", "O"}), frozenset({"Nb", "Ru", "Sb"}))

pytestmark = pytest.mark.skipif(not (POOL / "labels.csv").is_file() or not (DEMO / "labels.csv").is_file(),
                                reason="needs the pool's and the demo's labels.csv")


def _elements(formula: str) -> frozenset[str]:
    from pymatgen.core import Composition

    return frozenset(el.symbol for el in Composition(formula).elements)


def _subset(src: Path, dst: Path, systems=SYSTEMS, edit=None) -> list[dict[str, str]]:
    """The rows of `src` inside `systems` (their subsystems included), written to `dst`; `edit(row)` may change one."""
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames
        rows = [r for r in reader if any(_elements(r["formula"]) <= s for s in systems)]
    for r in rows:
        if edit is not None:
            edit(r)
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return rows


@pytest.fixture()
def real_subset(tmp_path: Path) -> tuple[Path, Path, list[dict[str, str]], list[dict[str, str]]]:
    (tmp_path / "pool").mkdir()
    rows = _subset(POOL / "labels.csv", tmp_path / "pool" / "labels.csv")
    complete = [r for r in rows if r["role"] == "candidate" and r["hull_complete"] == "True"]
    if len({_elements(r["formula"]) for r in complete}) < 2:
        pytest.skip("the pool's labels.csv no longer holds both systems with complete hulls")
    demo = _subset(DEMO / "labels.csv", tmp_path / "demo_labels.csv")
    return tmp_path / "pool" / "labels.csv", tmp_path / "demo_labels.csv", rows, demo


def test_selection_keeps_exactly_the_hull_complete_candidates(tmp_path: Path) -> None:
    with open(POOL / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    sel = select_candidates(POOL / "labels.csv")
    want = {r["id"] for r in rows if r["role"] == "candidate" and r["hull_complete"] == "True"}
    assert set(sel.kept) == want and len(sel.kept) == len(want)
    assert set(sel.left_out) == {r["id"] for r in rows if r["role"] == "candidate"} - want
    assert not set(sel.kept) & {r["id"] for r in rows if r["role"] != "candidate"}
    # the flag decides: Nb-Ru-Sb marked incomplete drops its candidates, and only those
    _subset(POOL / "labels.csv", tmp_path / "labels.csv",
            edit=lambda r: r.update(hull_complete="False") if _elements(r["formula"]) == SYSTEMS[1] else None)
    sel2 = select_candidates(tmp_path / "labels.csv")
    assert sel2.kept and all(_elements(i.split("_")[0]) == SYSTEMS[0] for i in sel2.kept)
    assert any(_elements(i.split("_")[0]) == SYSTEMS[1] for i in sel2.left_out)
    _subset(POOL / "labels.csv", tmp_path / "bad.csv", edit=lambda r: r.update(hull_complete="maybe"))
    with pytest.raises(UserError, match="hull_complete 'maybe'"):
        select_candidates(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="missing column.*role, hull_complete"):  # the demo's labels are no pool
        select_candidates(DEMO / "labels.csv")


def test_truth_is_phase_diagram_over_demo_and_pool_rows(real_subset) -> None:
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    pool_csv, demo_csv, rows, demo = real_subset
    pool, sel = hypothetical_pool(pool_csv, demo_csv)
    assert list(pool.ids) == sorted(sel.kept)
    assert not {r["id"] for r in rows if r["role"] != "candidate"} & set(pool.ids)
    truth = true_e_above_hull(pool.references, pool.compositions, pool.truth, pool.ids)
    # independently: one PhaseDiagram per system of every known row + every candidate, elements at 0 eV/atom
    for system in SYSTEMS:
        known = [r for r in demo + rows if _elements(r["formula"]) <= system and r.get("role") != "candidate"]
        if system == SYSTEMS[0]:  # the demo's binaries (CaO, VO, VO2) are on this hull
            assert any(r in demo and len(_elements(r["formula"])) > 1 for r in known)
        cands = [r for r in rows if r.get("role") == "candidate" and _elements(r["formula"]) == system]
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        entries += [PDEntry(Composition(r["formula"]), float(r["formation_energy_per_atom"])
                            * Composition(r["formula"]).num_atoms, name=r["id"]) for r in known + cands]
        pd = PhaseDiagram(entries)
        for e in entries:
            if e.name in set(pool.ids):
                j = list(pool.ids).index(e.name)
                assert truth[j] == pytest.approx(pd.get_e_above_hull(e), abs=1e-7), e.name
        # round 0's hull (references only), where the demo's oxides decide CaVO3's distance below it
        before = PhaseDiagram(entries[:len(system) + len(known)])
        for r in cands:
            e = PDEntry(Composition(r["formula"]), float(r["formation_energy_per_atom"])
                        * Composition(r["formula"]).num_atoms)
            want = before.get_e_above_hull(e, allow_negative=True)
            got = ReferenceHull(pool.references).e_above_hull(Composition(r["formula"]),
                                                              float(r["formation_energy_per_atom"]))
            assert got == pytest.approx(want, abs=1e-7), r["id"]
    assert np.nanmax(np.abs(truth - labelled_e_above_hull(pool_csv, pool.ids))) < 2e-6  # esnet dft pool's column
    stable = int(np.sum(truth <= 1e-6))
    assert 0 < stable < pool.n


def test_uip_references_never_read_a_candidate_label(real_subset, tmp_path: Path) -> None:
    pool_csv, demo_csv, _rows, _demo = real_subset
    uips = [DEMO / "uip_chgnet.csv", POOL / "uip_chgnet.csv"]
    if not all(p.is_file() for p in uips):
        pytest.skip("needs the demo's and the pool's uip_chgnet.csv")
    pool, _ = hypothetical_pool(pool_csv, demo_csv)
    src = uip_source(pool, uips, pool_csv, demo_csv)
    assert np.all(np.isfinite(src.mean)) and src.audit["n_fit_rows"] > 0 and "O" in src.audit["fitted_mu_ev_per_atom"]
    moved = tmp_path / "moved"
    moved.mkdir()
    _subset(pool_csv, moved / "labels.csv", edit=lambda r: r.update(
        formation_energy_per_atom=f"{float(r['formation_energy_per_atom']) - 1.0:.6f}") if r["role"] == "candidate"
        else None)
    pool2, _ = hypothetical_pool(moved / "labels.csv", demo_csv)
    assert np.allclose(pool2.truth, pool.truth - 1.0)
    np.testing.assert_allclose(uip_source(pool2, uips, moved / "labels.csv", demo_csv).mean, src.mean, atol=1e-12)
    # a competitor's label does inform them (the O reference is fitted on the oxides)
    _subset(pool_csv, moved / "labels.csv", edit=lambda r: r.update(formation_energy_per_atom="-9.0")
            if r["role"] == "competitor" and "O" in _elements(r["formula"]) else None)
    other = uip_source(hypothetical_pool(moved / "labels.csv", demo_csv)[0], uips, moved / "labels.csv", demo_csv)
    assert not math.isclose(float(other.mean[0]), float(src.mean[0]), abs_tol=1e-6)
