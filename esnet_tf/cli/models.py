"""`esnet models`: the shipped pretrained models (name, data, test MAE / RMSE in eV/atom, F1, size)."""
from __future__ import annotations

import argparse
import json


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("List the pretrained models that ship with esnet-tf (load them by name: `esnet predict NAME "
                     "INPUT...`, `esnet_tf.load_model(NAME)`): name, training data, members, test MAE and RMSE "
                     "(eV/atom), test screening F1 (E_hull <= 0), size on disk (MB), the inputs beyond the IS-DOS "
                     "(e.g. is_formation_energy_per_atom) and whether it serves a calibrated interval.")
    p.add_argument("--json", action="store_true", help="print the model.json metadata of each model instead")


def print_models(as_json: bool = False) -> int:
    from esnet_tf.pretrained import list_models

    models = list_models()
    if as_json:
        print(json.dumps({m.name: m.metadata for m in models}, indent=1))
        return 0
    if not models:
        print("no shipped models")
        return 0
    w = max(40, *(len(m.name) for m in models))
    header = f"{'name':{w}s} {'members':>7s} {'test MAE':>9s} {'RMSE':>7s} {'F1':>5s} {'MB':>5s}  data"
    print(header)
    for m in models:
        extra = [x for x in m.metadata.get("inputs", []) if x not in ("dos_up", "dos_down", "composition")]
        interval = m.metadata.get("interval") or {}
        notes = (f"; + input {', '.join(extra)}" if extra else "") + (
            f"; {interval['coverage_nominal']:.0%} interval" if interval.get("coverage_nominal") else "") + (
            "; needs --uip CSV (esnet uip relax)" if m.metadata.get("uip") else "")
        print(f"{m.name:{w}s} {m.n_members:7d} {m.test_mae:9.3f} {m.test_rmse:7.3f} {m.test_f1:5.2f} "
              f"{m.size_mb:5.1f}  {m.data}{notes}")
    print("(MAE, RMSE in eV/atom on each model's test split; F1 of E_hull <= 0 screening on it)")
    return 0


def run(args: argparse.Namespace) -> int:
    return print_models(args.json)
