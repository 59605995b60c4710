"""Cross-code IS-DOS experiment (issue 16, item 5; issue 32, item 7): does a scale-free IS-DOS help a
GPAW-trained ESNet predict VASP / Materials Project inputs, and how does the IS-energy model carry over?

    .venv/bin/python scripts/cross_code_experiment.py --work runs/pretrained --out runs/pretrained/cross_code.json
    .venv/bin/python scripts/cross_code_experiment.py --model ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy \
        --work runs/pretrained_is_relax --out benchmarks/results/cross_code_is_energy.json

`--work` is the directory `scripts/train_pretrained.py` trained the model's members in (features.npz,
member_0/config.json). A model that takes the IS formation energy gets it from the run's first ionic
step against the Materials Project elemental reference entries of ../shared/fixtures (the same
`--references` a user passes); fixtures without a total energy (MP CompleteDos documents) have none
and are listed as refused, as `esnet predict` refuses them.

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
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
NAME = "ESNet-GPAWDemo-2026.12-EFormPerAtom"
MP_REFERENCES = FIXTURES / "mp" / "mp_elemental_reference_entries_2023-02-07.json.gz"


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
    """The fixtures' arrays, with the IS formation energy (eV/atom) against the MP elemental references
    where the file holds a total energy (NaN elsewhere)."""
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize_all
    from esnet_tf.references import load_references

    refs = load_references(MP_REFERENCES)
    examples = [featurize_all(FIXTURES / r["file"], references=refs)[r["doc"]] for r in rows]
    arrays = stack_examples(examples)
    arrays["code"] = np.array([e.code for e in examples])
    arrays["formation_energy_per_atom"] = np.array([r["truth"] for r in rows], np.float32)
    return arrays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "pretrained"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "pretrained" / "cross_code.json"), help="results JSON")
    ap.add_argument("--epochs", type=int, default=None, help="the occupied member's epochs (default: the recipe's)")
    ap.add_argument("--model", default=NAME, help="the shipped model (its members trained in --work)")
    args = ap.parse_args(argv)
    from esnet_tf.atomic import write_text
    from esnet_tf.featurize import load_examples
    from esnet_tf.predict import Predictor
    from esnet_tf.pretrained import load_model, load_split_arrays

    work = Path(args.work)
    npz = work / "features_occupied.npz"
    if not npz.is_file():
        arrays = load_examples(work / "features.npz")
        arrays = occupied_normalise(arrays)
        tmp = npz.with_name(".tmp_" + npz.name)
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp.replace(npz)
    # member 0 again, on the occupied-normalised features: the shipped model's recipe, split and seed
    # (scripts/train_pretrained.py, run beside this script)
    from train_pretrained import RECIPES, train_members

    recipe = next((r for r in RECIPES.values() if r.name == args.model), None)
    if recipe is None:
        raise SystemExit(f"--model {args.model}: not a model scripts/train_pretrained.py trains "
                         f"({', '.join(r.name for r in RECIPES.values())})")
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    (run,) = [p.parent for p in train_members(npz, work / "labels.csv", work / "occupied", 1, recipe)]

    rows = fixture_set()
    fixtures = featurize_fixtures(rows)
    test = load_split_arrays(args.model, "test")
    ensemble = load_model(args.model)
    raw0 = Predictor(work / "member_0" / "best.keras")
    occ0 = Predictor(run / "best.keras")
    takes = tuple(ensemble.predictor.energy_inputs)
    usable = np.ones(len(rows), bool)
    for name in takes:  # rows without a finite energy input are refused, as `esnet predict` refuses them
        usable &= np.isfinite(np.asarray(fixtures[name], np.float64).reshape(len(rows), -1)).all(axis=1)
    kept = {k: v[usable] for k, v in fixtures.items()}
    result = {"model": args.model, "energy_inputs": list(takes),
              "references": f"{MP_REFERENCES.name} (uncorrected MP energies per atom)" if takes else None,
              "representation": "occupied: DOS / integrated occupied states per atom",
              "refused_no_energy_input": [rows[i]["file"] for i in np.flatnonzero(~usable)], "fixtures": []}
    preds = {
        "ensemble_raw": (ensemble.predictor.predict(test), ensemble.predictor.predict(kept)),
        "member0_raw": (raw0.predict(test), raw0.predict(kept)),
        "member0_occupied": (occ0.predict(occupied_normalise(test)), occ0.predict(occupied_normalise(kept))),
    }
    truth_t = test["formation_energy_per_atom"].astype(np.float64)
    truth_f = kept["formation_energy_per_atom"].astype(np.float64)
    baselines = {}
    for name in takes:  # the input itself as a prediction: what the model adds to the IS energy
        baselines[f"{name}_as_prediction"] = np.asarray(kept[name], np.float64).reshape(-1)
    for k, (pt, pf) in preds.items():
        result[k] = {"gpaw_test_mae": float(np.mean(np.abs(pt - truth_t))),
                     "fixtures_mae": float(np.mean(np.abs(pf - truth_f))),
                     "fixtures_mae_elements": float(np.mean(np.abs(pf - truth_f)[truth_f == 0])),
                     "fixtures_mae_compounds": float(np.mean(np.abs(pf - truth_f)[truth_f != 0]))}
    for k, pf in baselines.items():
        result[k] = {"fixtures_mae": float(np.mean(np.abs(pf - truth_f))),
                     "fixtures_mae_elements": float(np.mean(np.abs(pf - truth_f)[truth_f == 0])),
                     "fixtures_mae_compounds": float(np.mean(np.abs(pf - truth_f)[truth_f != 0]))}
    for j, i in enumerate(np.flatnonzero(usable)):
        result["fixtures"].append({**rows[i], **{k: float(v[1][j]) for k, v in preds.items()},
                                   **{k: float(v[j]) for k, v in baselines.items()}})
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
