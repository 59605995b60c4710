"""HTVS campaign: replay determinism, cost bookkeeping, resume after a kill, stops, report, a tiny live run."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from esnet_tf.campaign import CampaignConfig, Predictions, pool_from_labels, run_campaign
from esnet_tf.campaign.engine import run_strategies
from esnet_tf.campaign.report import compare, table_markdown, write_report
from esnet_tf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# (id, formula, E_f eV/atom, IS s, relax s): 3 chemical systems, polymorphs, elements (references)
ROWS = [
    ("Al_fcc", "Al", 0.0, 1.0, 3.0), ("Al_bcc", "Al", 0.08, 1.0, 3.0), ("Ni_fcc", "Ni", 0.0, 1.0, 4.0),
    ("Ti_bcc", "Ti", 0.0, 1.0, 4.0),
    ("AlNi_cscl", "AlNi", -0.62, 2.0, 11.0), ("AlNi_rocksalt", "AlNi", -0.20, 2.5, 9.0),
    ("AlNi_zincblende", "AlNi", -0.05, 2.0, 8.0), ("AlNi3_l12", "AlNi3", -0.45, 3.0, 15.0),
    ("Al3Ni_l12", "Al3Ni", -0.30, 3.0, 14.0),
    ("AlTi_cscl", "AlTi", -0.35, 2.0, 10.0), ("AlTi_rocksalt", "AlTi", 0.10, 2.0, 12.0),
    ("Al3Ti_l12", "Al3Ti", -0.38, 3.5, 16.0), ("AlTi3_l12", "AlTi3", -0.25, 3.0, 13.0),
    ("NiTi_cscl", "NiTi", -0.33, 2.0, 10.5), ("NiTi_rocksalt", "NiTi", 0.05, 2.0, 9.5),
    ("NiTi_zincblende", "NiTi", -0.10, 2.0, 7.0), ("Ni3Ti_l12", "Ni3Ti", -0.40, 3.0, 15.5),
]


@pytest.fixture()
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "formula", "formation_energy_per_atom", "is_wall_time_s", "relax_wall_time_s"])
        w.writerows(ROWS)
    return path


def _pool(labels: Path, noise: float = 0.12, seed: int = 3):
    pool = pool_from_labels([labels])
    rng = np.random.default_rng(seed)
    pool.sources["esnet"] = Predictions(pool.truth + rng.normal(0, noise, pool.n), np.abs(rng.normal(0.1, 0.05, pool.n)))
    pool.sources["composition"] = Predictions(pool.truth + rng.normal(0, 0.3, pool.n))
    return pool


def _files(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): p.read_text() for p in sorted(d.rglob("*.json")) if p.is_file()}


def test_pool_from_labels_elements_are_references(labels):
    pool = pool_from_labels([labels])
    assert pool.n == 13 and "Al_fcc" not in pool.ids.tolist()
    assert {"Al_fcc", "Al_bcc", "Ni_fcc", "Ti_bcc"} <= set(pool.references.ids)
    assert pool.relaxation_equivalent_s() == pytest.approx(np.mean([r[4] for r in ROWS[4:]]))


@pytest.mark.parametrize("strategy", ["greedy", "lcb", "stable_per_cost", "random", "composition", "oracle"])
def test_replay_is_deterministic_and_costs_add_up(labels, tmp_path, strategy):
    pool = _pool(labels)
    cfg = CampaignConfig(strategy=strategy, batch_size=3, seed=5)
    a = run_campaign(pool, cfg, tmp_path / "a")
    b = run_campaign(_pool(labels), cfg, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.summary == b.summary
    s = a.summary
    assert s["stop"] == "exhausted" and s["n_relaxed"] == pool.n
    chosen = [c for r in a.rounds[1:] for c in r["chosen"]]
    assert sorted(c["id"] for c in chosen) == sorted(pool.ids.tolist())  # each relaxed once
    is_all = sum(r[3] for r in ROWS[4:])
    relax_all = sum(r[4] for r in ROWS[4:])
    pays = strategy in ("greedy", "lcb", "stable_per_cost", "oracle")
    assert s["is_single_points_s"] == (pytest.approx(is_all) if pays else 0.0)
    assert s["relaxations_s"] == pytest.approx(relax_all)
    assert s["total_cost_s"] == pytest.approx(s["is_single_points_s"] + sum(c["relax_wall_time_s"] for c in chosen))
    cum = a.rounds[0]["cost_s"]
    for r in a.rounds[1:]:  # per-round bookkeeping: cumulative = previous + this round's relaxations
        cum += sum(c["relax_wall_time_s"] for c in r["chosen"])
        assert r["cumulative_cost_s"] == pytest.approx(cum)
        assert r["cumulative_cost_relaxations"] == pytest.approx(cum / pool.relaxation_equivalent_s())
    assert s["saving"] == pytest.approx(1 - s["total_cost_s"] / relax_all)


def test_stable_per_cost_learns_cost_ratios_per_kind_and_prefers_the_cheaper():
    from esnet_tf.campaign.strategies import RoundView, estimated_relax_s, ranking, scores

    # relaxed so far: two EOS scans at 4x their IS cost, one optimizer run at 20x
    est = estimated_relax_s(np.array([10.0, 10.0, 10.0, np.nan]), np.array(["eos", "optimizer", "", "eos"]),
                            np.array([5.0, 20.0, 2.0]), np.array([20.0, 80.0, 40.0]),
                            np.array(["eos", "eos", "optimizer"]))
    assert est[:3] == pytest.approx([40.0, 200.0, 40.0])  # "" has no relaxed kind: the overall median (4x)
    assert np.isnan(est[3])
    assert estimated_relax_s(np.array([3.0]), np.array([""]), np.zeros(0), np.zeros(0), np.zeros(0, str))[0] == 3.0
    # equal predictions: the cheaper first; a likely stable expensive one beats an unlikely cheap one
    view = RoundView(index=np.arange(3), predicted_e_above_hull=np.array([-0.1, -0.1, 0.4]),
                     predicted_std=np.array([0.1, 0.1, 0.1]), true_e_above_hull=np.full(3, np.nan), round=1, seed=0,
                     n_pool=3, estimated_relax_s=np.array([400.0, 40.0, 40.0]))
    assert ranking(scores("stable_per_cost", view)).tolist() == [1, 0, 2]


def test_random_depends_on_the_seed(labels):
    pool = _pool(labels)
    order = [[c["id"] for r in run_campaign(pool, CampaignConfig(strategy="random", batch_size=4, seed=s)).rounds[1:]
              for c in r["chosen"]] for s in (0, 1)]
    assert order[0] != order[1]


def test_oracle_finds_the_stable_first_and_the_truth_hull_is_the_labels_rule(labels):
    pool = _pool(labels)
    res = run_campaign(pool, CampaignConfig(strategy="oracle", batch_size=2))
    n = res.summary["n_true_stable"]
    steps = [c["truly_stable"] for r in res.rounds[1:] for c in r["chosen"]]
    assert steps[:n] == [True] * n and not any(steps[n:])
    # the hull of all: AlNi_cscl, AlNi3, Al3Ni?, ... the stable list is what pymatgen's PhaseDiagram says
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    entries = [PDEntry(Composition(f), e * Composition(f).num_atoms, name=i) for i, f, e, _, _ in ROWS]
    entries += [PDEntry(Composition(el), 0.0) for el in ("Al", "Ni", "Ti")]
    pd_ = PhaseDiagram(entries)
    stable = {e.name for e in entries if e.name in pool.ids.tolist() and pd_.get_e_above_hull(e) < 1e-6}
    assert {d["id"] for d in res.summary["discovered"] if d["truly_stable"]} == stable
    assert res.summary["n_stable_found"] == len(stable) == n


def test_resume_after_stopping_between_rounds_gives_the_same_result(labels, tmp_path):
    pool = _pool(labels)
    cfg = CampaignConfig(strategy="lcb", batch_size=3, kappa=1.0, refit="residual")
    straight = run_campaign(pool, cfg, tmp_path / "straight")
    part = run_campaign(pool, replace(cfg, max_rounds=2), tmp_path / "resumed")
    assert part.summary["stop"] == "max_rounds" and part.summary["n_rounds"] == 2
    assert not (tmp_path / "resumed" / "rounds" / "round_0003.json").exists()
    again = run_campaign(_pool(labels), cfg, tmp_path / "resumed")
    assert again.summary == straight.summary
    assert _files(tmp_path / "resumed") == _files(tmp_path / "straight")


KILLER = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_campaign import _pool
from esnet_tf.campaign import CampaignConfig, run_campaign, replay_relaxer
calls = []
def relaxer(pool, idx):
    calls.append(idx)
    if len(calls) == 3 and {kill}:
        os.kill(os.getpid(), signal.SIGKILL)  # killed in round 3, after rounds 0-2 were written
    return replay_relaxer(pool, idx)
from pathlib import Path
run_campaign(_pool(Path({labels!r})), CampaignConfig(strategy="greedy", batch_size=2), {out!r}, relaxer=relaxer)
"""


def test_sigkill_during_a_round_then_resume_gives_the_identical_result(labels, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, kill in (("killed", True), ("straight", False)):
        code = KILLER.format(tests=str(ROOT / "tests"), kill=kill, labels=str(labels), out=str(tmp_path / name))
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if kill:
            assert p.returncode == -signal.SIGKILL, p.stderr
            assert sorted(x.name for x in (tmp_path / name / "rounds").iterdir()) == [
                f"round_000{k}.json" for k in range(3)]
            assert not (tmp_path / name / "result.json").exists()
        else:
            assert p.returncode == 0, p.stderr
    resumed = run_campaign(_pool(labels), CampaignConfig(strategy="greedy", batch_size=2), tmp_path / "killed")
    assert resumed.summary["stop"] == "exhausted"
    assert _files(tmp_path / "killed") == _files(tmp_path / "straight")


def test_stops_budget_target_recall_expected_stable(labels):
    pool = _pool(labels)
    b = run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=3, budget_s=60.0))
    assert b.summary["stop"] == "budget" and b.summary["total_cost_s"] <= 60.0 + 1e-9
    unit = pool.relaxation_equivalent_s()
    br = run_campaign(pool, CampaignConfig(strategy="random", batch_size=2, budget_relaxations=4.0))
    assert br.summary["stop"] == "budget" and br.summary["total_cost_s"] <= 4.0 * unit + 1e-9
    t = run_campaign(pool, CampaignConfig(strategy="lcb", batch_size=1, target_recall=0.5))
    assert t.summary["stop"] == "target_recall"
    assert t.summary["n_stable_found"] == math.ceil(0.5 * t.summary["n_true_stable"])
    e = run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=2, stop_expected_stable=0.5))
    assert e.summary["stop"] in ("expected_stable", "exhausted")
    assert e.rounds[-1]["expected_stable_left"] < 0.5 or e.summary["stop"] == "exhausted"


def test_bad_input_is_one_line_user_error(labels, tmp_path):
    with pytest.raises(UserError, match="unknown strategy"):
        CampaignConfig(strategy="best")
    with pytest.raises(UserError, match="batch size"):
        CampaignConfig(batch_size=0)
    pool = pool_from_labels([labels])
    with pytest.raises(UserError, match="composition-predictions"):
        run_campaign(pool, CampaignConfig(strategy="composition"))
    pool = _pool(labels)
    run_campaign(pool, CampaignConfig(strategy="greedy", max_rounds=1), tmp_path / "c")
    with pytest.raises(UserError, match="other settings"):
        run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=3), tmp_path / "c")
    no_o = tmp_path / "no_o.csv"
    no_o.write_text("id,formula,formation_energy_per_atom,is_wall_time_s,relax_wall_time_s\nX,NaO,-1,1,2\n")
    with pytest.raises(UserError, match="elemental reference"):
        pool_from_labels([no_o], references=pool.references)


def test_report_table_and_cost_to_recall_by_hand(labels, tmp_path):
    pool = _pool(labels)
    res = run_strategies(pool, CampaignConfig(batch_size=2), ["greedy", "random", "composition", "oracle"],
                         tmp_path / "cmp")
    rep = compare(res, pool)
    rows = rep["strategies"]
    assert rows["oracle"]["recall_0.9"]["fraction_of_oracle_saving"] == pytest.approx(1.0)
    # the ideal row: relax the stable ones first (true E_hull order), no IS single points
    stable_ids = {d["id"] for d in res["oracle"].summary["discovered"] if d["truly_stable"]}
    cost = {r[0]: r[4] for r in ROWS}
    assert rows["ideal"]["recall_1"]["cost_s"] == pytest.approx(sum(cost[i] for i in stable_ids))
    oracle_100 = rows["oracle"]["recall_1"]["cost_s"]
    assert oracle_100 == pytest.approx(sum(r[3] for r in ROWS[4:]) + sum(cost[i] for i in stable_ids))
    md = table_markdown(rep)
    assert "| oracle |" in md and "relaxations" in md
    written = write_report(rep, res, pool, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "campaign.png").stat().st_size > 1000
    assert json.loads((tmp_path / "cmp" / "report.json").read_text())["n_true_stable"] == rep["n_true_stable"]
    assert len(written) == 4


def test_cli_replay_resumes_and_writes_the_report(labels, tmp_path, capsys):
    from esnet_tf.cli import main

    pool = _pool(labels)
    preds = tmp_path / "preds.csv"
    with preds.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "predicted_formation_energy_per_atom", "predicted_formation_energy_per_atom_std"])
        w.writerows(zip(pool.ids, pool.sources["esnet"].mean, pool.sources["esnet"].std))
    argv = ["campaign", "replay", "--labels", str(labels), "--predictions", str(preds), "--strategy", "lcb,random",
            "--batch-size", "2", "--out", str(tmp_path / "out")]
    assert main(argv + ["--max-rounds", "1"]) == 0
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "resuming after round 1" in out.err and "| lcb |" in out.out
    assert (tmp_path / "out" / "campaign.png").exists() and (tmp_path / "out" / "lcb" / "discovered_stable.csv").exists()
    assert main(["campaign", "replay", "--labels", str(labels), "--strategy", "best", "--out", str(tmp_path / "x")]) == 2
    assert main(["campaign", "replay", "--labels", str(labels), "--strategy", "composition",
                 "--out", str(tmp_path / "y")]) == 2
    assert "composition-predictions" in capsys.readouterr().err


def test_live_campaign_with_tiny_gpaw_settings_finishes(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW (extra `dft`) is not installed")
    from esnet_tf.campaign.live import live_pool
    from esnet_tf.dft.settings import DFTSettings

    spec = tmp_path / "pool.json"
    spec.write_text(json.dumps({"structures": [
        {"prototype": "fcc", "species": ["Cu"]}, {"prototype": "fcc", "species": ["Al"]},
        {"prototype": "cscl", "species": ["Cu", "Al"]}, {"prototype": "rocksalt", "species": ["Cu", "Al"]}]}))
    preds = tmp_path / "preds.csv"
    preds.write_text("id,predicted_formation_energy_per_atom,predicted_formation_energy_per_atom_std\n"
                     "AlCu_cscl,-0.2,0.05\nAlCu_rocksalt,0.1,0.05\n")
    pool, relax = live_pool([spec], cache_dir=tmp_path / "calcs", settings=DFTSettings.tiny(), predictions=preds,
                            relax="eos", workers=2)
    assert pool.n == 2 and set(pool.references.mu) == {"Al", "Cu"} and pool.reference_cost_s > 0
    assert np.all(pool.is_wall_time_s > 0) and not pool.is_replay
    cfg = CampaignConfig(strategy="lcb", batch_size=1)
    first = run_campaign(pool, replace(cfg, max_rounds=1), tmp_path / "live", relaxer=relax)
    assert first.summary["stop"] == "max_rounds" and first.rounds[1]["chosen"][0]["id"] == "AlCu_cscl"  # lowest LCB
    res = run_campaign(pool, cfg, tmp_path / "live", relaxer=relax)  # resumes: round 2 relaxes the other
    s = res.summary
    assert s["stop"] == "exhausted" and s["n_relaxed"] == 2 and s["n_rounds"] == 2
    assert res.rounds[1] == first.rounds[1]
    assert s["total_cost_s"] == pytest.approx(s["reference_cost_s"] + float(np.sum(pool.is_wall_time_s))
                                              + s["relaxations_s"])
    assert all(math.isfinite(c["formation_energy_per_atom"]) and c["relax_wall_time_s"] > 0
               for r in res.rounds[1:] for c in r["chosen"])
    assert s["relaxation_equivalent_s"] == pytest.approx(s["relaxations_s"] / 2)
    # Al and Cu at 0 eV/atom and two AlCu polymorphs: exactly the lower one is on the hull if its E_f < 0
    ef = {c["id"]: c["formation_energy_per_atom"] for r in res.rounds[1:] for c in r["chosen"]}
    lowest = min(ef, key=ef.get)
    expected = [lowest] if ef[lowest] < 0 else []
    assert [d["id"] for d in s["discovered"]] == expected and s["n_discovered"] == len(expected)
    with (tmp_path / "live" / "discovered_stable.csv").open(newline="") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == expected


def test_esnet_fine_tune_refit_runs_and_changes_the_predictions(labels, tmp_path):
    from esnet_tf import ESNetConfig, build_esnet
    from esnet_tf.campaign.refit import ESNetFineTune

    # the smallest ESNet (1 stage, no CBAM): each refit loads, traces and fits the model anew
    cfg = ESNetConfig.small().replace(stem_filters=8, stage_widths=(8,), blocks_per_stage=1, merge_filters=8,
                                      composition_units=8, head_units=(8,), use_attention=False, name="tiny")
    build_esnet(cfg).save(tmp_path / "tiny.keras")
    pool = _pool(labels)
    rng = np.random.default_rng(0)
    inputs = {"dos_up": rng.random((pool.n, 1500, 9), np.float32), "dos_down": rng.random((pool.n, 1500, 9), np.float32),
              "composition": np.zeros((pool.n, 118), np.float32)}
    inputs["composition"][:, 12] = 1.0
    tune = ESNetFineTune(tmp_path / "tiny.keras", inputs, epochs=2, std=pool.sources["esnet"].std)
    with pytest.raises(UserError, match="fine-tune"):
        run_campaign(pool, CampaignConfig(strategy="greedy", refit="fine-tune"))
    res = run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=4, refit="fine-tune", max_rounds=2),
                       tmp_path / "ft", refitter=tune)
    assert res.summary["n_rounds"] == 2 and res.summary["n_relaxed"] == 8
    new = tune(pool, np.arange(4), pool.truth[:4])["esnet"]
    assert new.mean.shape == (pool.n,) and np.all(np.isfinite(new.mean))
    assert not np.allclose(new.mean, pool.sources["esnet"].mean)


def test_report_follows_the_recommended_strategy(labels, tmp_path):
    """The target check lists the recommended rule first and discovered_stable.csv is its list."""
    from esnet_tf.campaign.strategies import ESNET_STRATEGIES, RECOMMENDED

    assert ESNET_STRATEGIES[0] == RECOMMENDED == "stable_per_cost"
    pool = _pool(labels)
    res = run_strategies(pool, CampaignConfig(batch_size=3), ["lcb", "stable_per_cost", "oracle"], tmp_path / "r")
    rep = compare(res, pool)
    assert [k for k in rep["target"] if k in ESNET_STRATEGIES] == ["stable_per_cost", "lcb"]
    write_report(rep, res, pool, tmp_path / "r")
    top = (tmp_path / "r" / "discovered_stable.csv").read_text()
    assert top == (tmp_path / "r" / "stable_per_cost" / "discovered_stable.csv").read_text()
    assert top != (tmp_path / "r" / "lcb" / "discovered_stable.csv").read_text()
    # the ideal row is the oracle's order without its round-0 cost (IS single points)
    is_s = rep["strategies"]["oracle"]["is_single_points_s"]
    for q in ("0.5", "0.9", "1"):
        assert rep["strategies"]["ideal"][f"recall_{q}"]["cost_s"] == pytest.approx(
            rep["strategies"]["oracle"][f"recall_{q}"]["cost_s"] - is_s)


# ----- the uip strategy: a universal potential's E_hull, no IS single point ---------------------------------------
#: the potential's formation energy (eV/atom) per candidate of ROWS: an order unlike the DFT one
UIP_EF = {"AlNi_cscl": -0.30, "AlNi_rocksalt": -0.55, "AlNi_zincblende": 0.12, "AlNi3_l12": -0.41,
          "Al3Ni_l12": -0.05, "AlTi_cscl": -0.62, "AlTi_rocksalt": 0.20, "Al3Ti_l12": -0.18, "AlTi3_l12": -0.33,
          "NiTi_cscl": -0.12, "NiTi_rocksalt": 0.07, "NiTi_zincblende": -0.48, "Ni3Ti_l12": -0.26}
UIP_MU = {"Al": -3.0, "Ni": -5.0, "Ti": -7.0}  # the potential's elemental references, eV/atom


def _uip_csv(tmp_path: Path) -> tuple[Path, float, float]:
    """An `esnet uip relax` CSV + JSON for ROWS: energies = references + UIP_EF; returns (csv, candidates' CPU s,
    elemental structures' CPU s)."""
    from pymatgen.core import Composition

    path = tmp_path / "uip_chgnet.csv"
    cand_cpu = elem_cpu = 0.0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "formula", "uip_energy_per_atom", "uip_formation_energy_per_atom", "cpu_time_s"])
        for k, (id_, formula, *_rest) in enumerate(ROWS):
            comp = Composition(formula).fractional_composition
            ef = UIP_EF.get(id_, 0.0)
            e = ef + sum(x * UIP_MU[str(el)] for el, x in comp.items())
            cpu = 0.5 + 0.1 * k
            if id_ in UIP_EF:
                cand_cpu += cpu
            else:
                elem_cpu += cpu
            w.writerow([id_, formula, f"{e:.6f}", f"{ef:.6f}", f"{cpu:.3f}"])
    path.with_suffix(".json").write_text(json.dumps(
        {"model": "chgnet", "elemental_references": {el: {"energy_per_atom": v, "id": f"{el}_x"}
                                                     for el, v in UIP_MU.items()}}))
    return path, cand_cpu, elem_cpu


def test_uip_strategy_ranks_by_the_potentials_e_hull_and_pays_no_is(labels, tmp_path):
    from esnet_tf.campaign.pool import uip_predictions
    from esnet_tf.campaign.strategies import PAYS_IS, SOURCE_OF, STRATEGIES

    assert "uip" in STRATEGIES and SOURCE_OF["uip"] == "uip" and PAYS_IS["uip"] is False
    path, cand_cpu, elem_cpu = _uip_csv(tmp_path)
    pool = _pool(labels)
    pool.sources["uip"] = uip_predictions(path, pool)
    assert dict(zip(pool.ids, pool.sources["uip"].mean)) == pytest.approx(UIP_EF, abs=1e-6)
    # one round relaxing all: against the elemental references alone E_hull = E_f, so the order is UIP_EF's
    res = run_campaign(pool, CampaignConfig(strategy="uip", batch_size=pool.n, max_rounds=1))
    chosen = res.rounds[1]["chosen"]
    assert [c["id"] for c in chosen] == sorted(UIP_EF, key=UIP_EF.get)
    assert [c["predicted_e_above_hull"] for c in chosen] == pytest.approx(sorted(UIP_EF.values()), abs=1e-6)
    # round 0: no IS single point, the potential's CPU seconds (candidates + elemental structures) instead
    s = res.summary
    assert s["is_single_points_s"] == 0.0
    assert s["screening_s"] == pytest.approx(cand_cpu + elem_cpu)
    assert s["total_cost_s"] == pytest.approx(cand_cpu + elem_cpu + sum(r[4] for r in ROWS[4:]))
    # the report takes the CPU seconds off in 'relaxations only' and names them
    both = run_strategies(pool, CampaignConfig(batch_size=2), ["uip", "greedy", "oracle"], None)
    rep = compare(both, pool)
    row = rep["strategies"]["uip"]
    assert row["screening_s"] == pytest.approx(cand_cpu + elem_cpu) and rep["strategies"]["greedy"]["screening_s"] == 0
    assert row["recall_1"]["cost_s"] - row["recall_1_relaxations_only"]["cost_s"] == pytest.approx(cand_cpu + elem_cpu)
    assert "CPU s of the potential" in table_markdown(rep)


def test_cli_replay_accepts_uip_without_torch_and_refuses_a_missing_csv(labels, tmp_path, capsys):
    from esnet_tf.cli import main

    path, _, _ = _uip_csv(tmp_path)
    base = ["campaign", "replay", "--labels", str(labels), "--batch-size", "3"]
    assert main(base + ["--strategy", "uip", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--uip CSV" in err and len(err.splitlines()) == 1
    assert main(base + ["--strategy", "uip", "--uip", str(tmp_path / "gone.csv"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "gone.csv" in err and len(err.splitlines()) == 1
    # the replay with the potential's CSV alone, torch and chgnet made unimportable
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'chgnet'):\n"
            "            raise ImportError(f'{name} blocked by the test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from esnet_tf.cli import main\nsys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", code, *base, "--strategy", "uip,random", "--uip", str(path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| uip | 0 (+ " in run.stdout
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["strategies"]["uip"]["is_single_points_s"] == 0 and rep["strategies"]["uip"]["screening_s"] > 0


def test_adding_the_uip_source_keeps_finished_campaigns_and_a_changed_source_does_not(labels, tmp_path):
    from esnet_tf.campaign.pool import uip_predictions

    pool = _pool(labels)
    first = run_strategies(pool, CampaignConfig(batch_size=3), ["greedy"], tmp_path / "r")
    before = _files(tmp_path / "r" / "greedy" / "rounds")
    path, _, _ = _uip_csv(tmp_path)
    pool.sources["uip"] = uip_predictions(path, pool)
    said: list[str] = []
    both = run_strategies(pool, CampaignConfig(batch_size=3), ["greedy", "uip"], tmp_path / "r", progress=said.append)
    assert any(m.startswith("greedy: resuming") for m in said)
    assert _files(tmp_path / "r" / "greedy" / "rounds") == before
    assert both["greedy"].summary["cost_to_recall"] == first["greedy"].summary["cost_to_recall"]
    assert both["uip"].summary["n_relaxed"] == pool.n
    changed = _pool(labels, seed=4)  # other ESNet predictions: the finished campaign is not this one's
    changed.sources["uip"] = pool.sources["uip"]
    with pytest.raises(UserError, match="another pool"):
        run_strategies(changed, CampaignConfig(batch_size=3), ["greedy"], tmp_path / "r")


def _interval_preds(pool, path: Path, flag: str = "NiTi_rocksalt") -> Path:
    """ESNet-like predictions with a calibrated interval; NiTi_rocksalt (truth +0.05) gets a wide, low interval
    and, by default, a domain flag."""
    mean, std = pool.truth + 0.05, np.full(pool.n, 0.05)
    lower = mean - 0.1
    i = pool.ids.tolist().index("NiTi_rocksalt")
    mean[i], std[i], lower[i] = -0.2, 0.4, -1.5  # predicted stable, out of domain
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "predicted_formation_energy_per_atom", "predicted_formation_energy_per_atom_std",
                    "predicted_formation_energy_per_atom_lower", "domain"])
        for k, id_ in enumerate(pool.ids):
            w.writerow([id_, mean[k], std[k], lower[k], "sigma above the calibrated threshold" if id_ == flag else ""])
    return path


def test_lower_bound_strategy_and_needs_dft_in_the_summary(labels, tmp_path, capsys):
    from esnet_tf.cli import main

    pool = pool_from_labels([labels])
    preds = _interval_preds(pool, tmp_path / "p.csv")
    pool = pool_from_labels([labels], predictions={"esnet": preds})
    first = {s: run_campaign(pool, CampaignConfig(strategy=s, batch_size=1, max_rounds=1)).rounds[1]["chosen"][0]
             for s in ("greedy", "lower_bound")}
    assert first["lower_bound"]["id"] == "NiTi_rocksalt"  # its lower bound is the lowest E_hull
    assert first["greedy"]["id"] == "AlNi_cscl" and first["greedy"]["needs_dft"] is False
    assert first["lower_bound"]["needs_dft"] is True
    res = run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=2, max_rounds=1))
    nd = res.summary["needs_dft"]
    assert nd["n_flagged"] == 1 and nd["n_flagged_predicted_stable"] == 1
    assert nd["n_flagged_not_relaxed"] == 1 and nd["flagged_not_relaxed"] == ["NiTi_rocksalt"]
    assert res.summary["prediction_checks"]["n_flagged"] == 1
    assert any("flagged outside the model's domain" in w for w in res.summary["warnings"])
    # the CLI says it; lower_bound without the column is refused in one line naming the file
    argv = ["campaign", "replay", "--labels", str(labels), "--batch-size", "2", "--max-rounds", "1"]
    assert main(argv + ["--predictions", str(preds), "--strategy", "greedy", "--out", str(tmp_path / "c")]) == 0
    assert "greedy: needs DFT: 1 candidate(s) flagged outside the model's domain" in capsys.readouterr().out
    plain = tmp_path / "plain.csv"
    plain.write_text("id,predicted_formation_energy_per_atom\n" + "".join(f"{i},-0.1\n" for i in pool.ids))
    assert main(argv + ["--predictions", str(plain), "--strategy", "lower_bound", "--out", str(tmp_path / "d")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("esnet campaign: error")]
    assert len(err) == 1 and str(plain) in err[0] and "predicted_formation_energy_per_atom_lower" in err[0]
