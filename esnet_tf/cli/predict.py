"""`esnet predict MODEL INPUT... --out preds.csv`: formation energies (eV/atom) from a saved ESNet.

MODEL is a shipped model's name (`esnet models`, `esnet predict --list`) or a path; it may also be
given as `--model`, then every positional argument is an input.
"""
from __future__ import annotations

import argparse
import sys

from esnet_tf.atomic import OVERWRITE_HELP


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Predict relaxed formation energies (eV/atom) from IS-DOS with a saved or shipped ESNet and "
                     "write a CSV: id, formula, predicted_formation_energy_per_atom, for ensembles "
                     "predicted_formation_energy_per_atom_std, for ensembles with a calibrated interval "
                     "predicted_formation_energy_per_atom_lower and _upper (90 % for the shipped models), for "
                     "models with a recorded training domain a "
                     "'domain' column ('' inside it, else why), and where known the truths "
                     "formation_energy_per_atom, e_above_hull (eV/atom).")
    p.add_argument("items", nargs="*", metavar="[MODEL] INPUT",
                   help="MODEL (unless --model is given): a shipped model's name, a .keras file, a SavedModel dir "
                   "or a TF Serving model dir (highest version); then the INPUTs: DFT files/dirs (vasprun.xml[.gz], "
                   "DOSCAR, MP JSON, *.gpawdos.npz), .npz features of `esnet featurize`, or a dir with labels.csv")
    p.add_argument("--model", help="the model (name or path); every positional argument is then an input")
    p.add_argument("--list", action="store_true", help="list the shipped models and exit")
    p.add_argument("--out", default="preds.csv", help="output CSV (energies in eV/atom)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format("the --out CSV"))
    p.add_argument("--labels", help="optional labels CSV (id, formation_energy_per_atom, e_above_hull; eV/atom) "
                   "to add the truths")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call")
    p.add_argument("--chunk-size", type=int, default=512,
                   help="inputs read and featurized per chunk, in worker processes while the model predicts the "
                   "previous chunk; rows are written as they come to OUT.partial/, and the same command after a stop "
                   "resumes there (OUT appears when every input is done). Memory grows with the chunk, not the pool")
    p.add_argument("--beam-pipeline-options", default=None, metavar="OPTIONS",
                   help="run the prediction as an Apache Beam pipeline (extra `beam`) with these options, comma-"
                   "separated, e.g. 'runner=DirectRunner,direct_num_workers=2' or a Flink / Spark / Dataflow runner's; "
                   "the workers must reach the inputs and the model. Same CSV as the local run; no resume")
    p.add_argument("--workers", type=int, default=None,
                   help="processes featurizing DFT files [default: the CPUs (at most 8) from 256 files on, else 1]")
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="inference precision of a single .keras model: float32 (the same numbers everywhere), "
                   "bfloat16, or auto (measured once per machine and cached; never slower than float32, within "
                   "5 meV/atom of it)")
    p.add_argument("--trust-model-code", action="store_true",
                   help="load a SavedModel that esnet-tf neither ships nor exported. TensorFlow's warning: models are "
                   "programs; a SavedModel can read and write files, use the network and start processes, and running "
                   "an untrusted model is equivalent to running untrusted code. Use only with models from people you "
                   "trust (.keras files always load in Keras's safe mode)")
    p.add_argument("--references", metavar="FILE", default=None,
                   help="elemental references of the inputs' DFT code and settings (CSV element,energy_per_atom in "
                   "eV/atom, or an MP ComputedEntry JSON): the IS formation energy of VASP / MP inputs for models "
                   "that take it (GPAW calculations of `esnet dft` bring their own)")
    p.add_argument("--uip", metavar="CSV", default=None,
                   help="for models that take CHGNet's formation energy (ESNet-...-EFormPerAtomFromUIP): the CSV of "
                   "`esnet uip relax STRUCTURES... --out uip.csv` on the inputs' initial structures, rows matched by "
                   "id; the formation energy is taken with the model's own CHGNet references (eV/atom)")
    p.add_argument("--strict", action="store_true", help="refuse (exit 2, no CSV) when any input is outside the "
                   "model's training domain (DFT code, elements, DOS scale, IS energy, σ; the rule is in the "
                   "model's domain.json)")


def config_from_args(args: argparse.Namespace):
    """The `esnet_tf.predict.PredictConfig` of the flags (MODEL is the first positional unless --model)."""
    from esnet_tf.predict import PredictConfig

    items = list(args.items)
    model_ref = args.model or (items.pop(0) if items else None)
    return PredictConfig(model=model_ref, inputs=tuple(items), out=args.out, labels=args.labels,
                         batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                         strict=args.strict, trust_model_code=args.trust_model_code, references=args.references,
                         overwrite=args.overwrite, chunk_size=args.chunk_size, uip=args.uip,
                         beam_pipeline_options=args.beam_pipeline_options)


def run(args: argparse.Namespace) -> int:
    from esnet_tf.predict import predict_to_csv

    if args.list:
        from esnet_tf.cli.models import print_models

        return print_models()
    config = config_from_args(args)
    table, model, failures = predict_to_csv(config)
    flagged = table.out_of_domain()
    for i in flagged:
        print(f"warning: {table['id'][i]}: outside the training domain of {model.name}: {table['domain'][i]}",
              file=sys.stderr)
    kind = "ensemble" if model.is_ensemble else model.predictor.kind
    print(f"{len(table)} prediction(s) (eV/atom) with {kind} model {model.name} -> {config.out}; "
          f"{len(failures)} input(s) failed; {len(flagged)} outside the training domain"
          + (" (see the 'domain' column)" if len(flagged) else "")
          + ("" if model.domain is not None else " (no training domain recorded: not checked)"))
    return 1 if failures else 0
