"""Cross-code IS-DOS experiment (issue 16, item 5): does a scale-free IS-DOS help a GPAW-trained
ESNet predict VASP / Materials Project inputs?

    .venv/bin/python scripts/cross_code_experiment.py --work runs/pretrained --out runs/pretrained/cross_code.json

Representation tried, `occupied`: each example's DOS divided by its integrated occupied states
per atom (E - E_F <= 0, all channels and spins; `esnet_tf.domain.occupied_states`), so every
input integrates to one occupied state below E_F whatever fraction of the valence electrons the
code's projections hold (VASP LORBIT=11 spheres 25-78 %, GPAW 89-128 %). The composition input
still says which elements are present. One ESNet `small` (seed 0, the shipped ensemble's split
and settings) is trained on the transformed GPAW demo snapshot and compared with the shipped
ensemble's member 0 (same seed, raw IS-DOS) and the ensemble itself on
- the GPAW test split (MAE, eV/atom);
- the real VASP / Materials Project fixtures of ../shared/fixtures whose formation energy is
  known: elements (0 eV/atom), and GaAs, LiF from the run's own total energy and the Materials
  Project elemental reference entries (same PBE PAW family; MP2020 corrections not applied).
Writes a JSON of every number.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
NAME = "ESNet-GPAWDemo-2026.12-EFormPerAtom"


def occupied_normalise(arrays: dict) -> dict:
    from esnet_tf.domain import occupied_states

    occ = occupied_states(arrays["dos_up"], arrays["dos_down"])[:, None, None].astype(np.float32)
    return {**arrays, "dos_up": arrays["dos_up"] / occ, "dos_down": arrays["dos_down"] / occ}


def mp_reference_energies() -> dict[str, float]:
    import gzip

    with gzip.open(FIXTURES / "mp" / "mp_elemental_reference_entries_2023-02-07.json.gz", "rt") as fh:
        refs = json.load(fh)
    return {el: e["energy"] / sum(e["composition"].values()) for el, e in refs.items()}


def fixture_set() -> list[dict]:
    """(file, document index, formula, truth eV/atom, where the truth comes from)."""
    from pymatgen.io.vasp import Vasprun

    refs = mp_reference_energies()
    rows = [
        {"file": "vasp/indirect.vasprun.xml.gz", "doc": 0, "formula": "Si", "truth": 0.0, "source": "element"},
        {"file": "mp/Si_complete_dos.json", "doc": 0, "formula": "Si", "truth": 0.0, "source": "element"},
        {"file": "mp/mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz", "doc": 1, "formula": "Si", "truth": 0.0,
         "source": "element"},
        {"file": "vasp/Al.vasprun.xml.gz", "doc": 0, "formula": "Al", "truth": 0.0, "source": "element"},
        {"file": "mp/Fe_bcc_complete_dos.json.gz", "doc": 0, "formula": "Fe", "truth": 0.0, "source": "element"},
        {"file": "vasp/Fe_monomer_spin.vasprun.xml.gz", "doc": 0, "formula": "Fe", "truth": 0.0, "source": "element"},
    ]
    for name, formula in (("vasp/GaAs_mp-2534.vasprun.xml.gz", "GaAs"), ("vasp/LiF.vasprun.xml.gz", "LiF")):
        run = Vasprun(str(FIXTURES / name), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
        comp = run.final_structure.composition
        e = run.final_energy / comp.num_atoms
        ref = sum(refs[el.symbol] * amt for el, amt in comp.items()) / comp.num_atoms
        rows.append({"file": name, "doc": 0, "formula": formula, "truth": float(e - ref),
                     "source": "run total energy - MP elemental references (uncorrected)"})
    return rows


def featurize_fixtures(rows: list[dict]) -> dict:
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize_all

    examples = [featurize_all(FIXTURES / r["file"])[r["doc"]] for r in rows]
    arrays = stack_examples(examples)
    arrays["code"] = np.array([e.code for e in examples])
    arrays["formation_energy_per_atom"] = np.array([r["truth"] for r in rows], np.float32)
    return arrays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "pretrained"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "pretrained" / "cross_code.json"), help="results JSON")
    ap.add_argument("--epochs", type=int, default=120)
    args = ap.parse_args(argv)
    from esnet_tf.atomic import write_text
    from esnet_tf.featurize import load_examples
    from esnet_tf.predict import Predictor
    from esnet_tf.pretrained import load_model, load_split_arrays
    from esnet_tf.train import TrainConfig, run_finished, train

    work = Path(args.work)
    run = work / "occupied_member_0"
    npz = work / "features_occupied.npz"
    if not npz.is_file():
        arrays = load_examples(work / "features.npz")
        arrays = occupied_normalise(arrays)
        tmp = npz.with_name(".tmp_" + npz.name)
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp.replace(npz)
    if not run_finished(run):
        meta = json.loads((work / "member_0" / "config.json").read_text())["training"]
        config = TrainConfig.from_dict({**meta, "dataset": str(npz), "epochs": args.epochs})
        train(config, run, resume=(run / "backup").is_dir(), verbose=2)

    rows = fixture_set()
    fixtures = featurize_fixtures(rows)
    test = load_split_arrays(NAME, "test")
    ensemble = load_model(NAME)
    raw0 = Predictor(work / "member_0" / "best.keras")
    occ0 = Predictor(run / "best.keras")
    result = {"representation": "occupied: DOS / integrated occupied states per atom", "fixtures": []}
    preds = {
        "ensemble_raw": (ensemble.predictor.predict(test), ensemble.predictor.predict(fixtures)),
        "member0_raw": (raw0.predict(test), raw0.predict(fixtures)),
        "member0_occupied": (occ0.predict(occupied_normalise(test)), occ0.predict(occupied_normalise(fixtures))),
    }
    truth_t = test["formation_energy_per_atom"].astype(np.float64)
    truth_f = fixtures["formation_energy_per_atom"].astype(np.float64)
    for k, (pt, pf) in preds.items():
        result[k] = {"gpaw_test_mae": float(np.mean(np.abs(pt - truth_t))),
                     "fixtures_mae": float(np.mean(np.abs(pf - truth_f))),
                     "fixtures_mae_elements": float(np.mean(np.abs(pf - truth_f)[truth_f == 0])),
                     "fixtures_mae_compounds": float(np.mean(np.abs(pf - truth_f)[truth_f != 0]))}
    for i, r in enumerate(rows):
        result["fixtures"].append({**r, **{k: float(v[1][i]) for k, v in preds.items()}})
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
