"""A live campaign: GPAW computes the IS single points, ESNet predicts, GPAW relaxes the chosen.

    pool, relax = live_pool(["pool_spec.json"], model="best.keras", cache_dir="campaign/calcs",
                            settings=DFTSettings.tiny(), relax="eos")
    run_campaign(pool, CampaignConfig(strategy="greedy", batch_size=2, max_rounds=1), "campaign/greedy",
                 relaxer=relax)

Structures come from `esnet_tf.dft.structures.read_structures` (CIF, POSCAR, pymatgen JSON, a
prototype spec). The elemental structures among them are the references: they are relaxed first
(their wall time is the campaign's reference cost) and set each element's chemical potential to
its lowest relaxed energy per atom (the rule of `esnet_tf.dft.labels.assemble`). Every compound is
a candidate: its IS single point (counted in round 0) writes the IS-DOS the model reads. All DFT
runs go through `esnet_tf.dft.runner.run_tasks`, cached in `cache_dir`, so a rerun after a kill
reuses every finished calculation (and its recorded wall time). Energies in eV, eV/atom; times in s.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.campaign.pool import Pool, Predictions, read_predictions
from esnet_tf.errors import UserError
from esnet_tf.screening.references import ReferenceSet

RELAX_MODES = ("eos", "optimizer")


def final_energy(result: dict[str, Any]) -> float:
    """Relaxed energy of a task (eV per cell): the lowest of the relaxation and its EOS points (dft.labels' rule)."""
    return min([result.get("rs_energy", result["is_energy"])] + [p["energy"] for p in result.get("eos_points", [])])


def _outcomes(tasks: list, cache_dir: Path, workers: int, what: str) -> list:
    from esnet_tf.dft.runner import run_tasks

    outs = run_tasks(tasks, cache_dir, workers=workers, progress=False)
    failed = [f"{o.task_id} ({o.reason})" for o in outs if o.result is None]
    if failed:
        raise UserError(f"{what} failed for {', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}: "
                        f"see {cache_dir}; remove those structures from the pool or fix their input")
    return outs


class LiveRelaxer:
    """Relaxes candidates with GPAW (`relax` mode 'eos' or 'optimizer'); returns (E_f eV/atom, relax wall time s)."""

    def __init__(self, structures: dict[str, Any], mu: dict[str, float], settings: Any, cache_dir: Path,
                 relax: str, workers: int, prototypes: dict[str, str]) -> None:
        #: the candidates' IS-DOS arrays in pool order (set when a model predicted them), for a fine-tune
        self.inputs: dict[str, np.ndarray] | None = None
        self.structures, self.mu, self.settings = structures, mu, settings
        self.cache_dir, self.relax, self.workers, self.prototypes = Path(cache_dir), relax, workers, prototypes

    def __call__(self, pool: Pool, indices: Sequence[int]) -> list[tuple[float, float]]:
        from esnet_tf.dft.tasks import Task

        ids = [str(pool.ids[i]) for i in indices]
        tasks = [Task(i, self.structures[i], self.settings, relax=self.relax, prototype=self.prototypes.get(i, ""))
                 for i in ids]
        out = []
        for o in _outcomes(tasks, self.cache_dir, self.workers, "relaxation"):
            comp = o.result["composition"]
            n = sum(comp.values())
            ef = (final_energy(o.result) - sum(k * self.mu[el] for el, k in comp.items())) / n
            out.append((float(ef), float(o.result.get("relax_wall_time", 0.0))))
        return out


def live_pool(structure_files: Sequence[str | Path], *, cache_dir: str | Path, settings: Any = None,
              model: str | Path | None = None, predictions: str | Path | None = None, relax: str = "eos",
              workers: int = 2, trust_model_code: bool = False) -> tuple[Pool, LiveRelaxer]:
    """The pool of a live campaign and its relaxer (see the module docstring).

    `model`: a `.keras` file or SavedModel (an ensemble's std is used where it has one); or
    `predictions`: a predictions CSV for the candidates' ids. One of them is needed for the
    ESNet strategies; without either, only `random` can run. The model is loaded before any DFT runs:
    a SavedModel that esnet-tf neither ships nor exported is refused unless `trust_model_code`
    (`esnet_tf.trust`: it runs that model's code).
    """
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    from esnet_tf.dft.settings import DFTSettings
    from esnet_tf.dft.structures import StructureInputError, read_structures
    from esnet_tf.dft.tasks import Task

    if relax not in RELAX_MODES:
        raise UserError(f"unknown relaxation {relax!r}: use one of {RELAX_MODES}")
    settings = settings or DFTSettings()
    cache = Path(cache_dir)
    items: list[tuple[str, Any, str]] = []
    for f in structure_files:
        try:
            items += read_structures(f)
        except StructureInputError as exc:
            raise UserError(str(exc)) from None
    ids = [i for i, _, _ in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"structures: duplicate id(s) {dup[:5]}: give each structure once")
    structures = {i: s for i, s, _ in items}
    protos = {i: p for i, _, p in items}
    elements = sorted(i for i, s, _ in items if len(s.composition.elements) == 1)
    compounds = sorted(i for i, s, _ in items if len(s.composition.elements) > 1)
    if not compounds:
        raise UserError("structures: no compound among them (elements are references, not candidates)")
    predictor = None
    if model is not None:  # refused (untrusted, broken) before hours of DFT, not after
        from esnet_tf.predict import Predictor

        predictor = Predictor(model, trust_model_code=trust_model_code)
    # references: the elements, relaxed
    ref_outs = _outcomes([Task(i, structures[i], settings, relax=relax, prototype=protos[i]) for i in elements],
                         cache, workers, "reference relaxation") if elements else []
    mu: dict[str, float] = {}
    entries, ref_ids = [], []
    ref_cost = 0.0
    for o in ref_outs:
        (el, n), = o.result["composition"].items()
        e = final_energy(o.result) / n
        mu[el] = min(mu.get(el, math.inf), e)
        entries.append(PDEntry(Composition({el: n}), final_energy(o.result), name=o.task_id))
        ref_ids.append(o.task_id)
        ref_cost += float(o.result.get("is_wall_time", 0.0)) + float(o.result.get("relax_wall_time", 0.0))
    refs = ReferenceSet(entries, ref_ids, mu, [f"relaxed elemental structures ({relax}) in {cache}"])
    # round 0: IS single points of every candidate
    is_outs = _outcomes([Task(i, structures[i], settings, relax="none", prototype=protos[i]) for i in compounds],
                        cache, workers, "IS single point")
    pool = Pool(ids=compounds, formulas=[structures[i].composition.reduced_formula for i in compounds],
                is_wall_time_s=[float(o.result["is_wall_time"]) for o in is_outs],
                relax_wall_time_s=np.full(len(compounds), np.nan), references=refs, truth=None,
                reference_cost_s=ref_cost, origin=", ".join(map(str, structure_files)))
    relaxer = LiveRelaxer(structures, mu, settings, cache, relax, workers, protos)
    if predictor is not None:
        pool.sources["esnet"], relaxer.inputs = _predict(predictor, [o.workdir / o.result["is_dos"] for o in is_outs],
                                                         compounds)
    elif predictions is not None:
        pool.sources["esnet"] = read_predictions(predictions, compounds, name=str(predictions))
    return pool, relaxer


def _predict(pred: Any, dos_files: Sequence[Path], ids: Sequence[str]) -> tuple[Predictions, dict]:
    """ESNet mean (and an ensemble's std and calibrated interval's lower bound) in eV/atom of the IS-DOS files
    (`pred`: an `esnet_tf.predict.Predictor`), and their input arrays."""
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize

    from esnet_tf.isdos import OUTPUT_NAME
    from esnet_tf.predict import LOWER_OUTPUT_NAME, STD_OUTPUT_NAME

    model = pred.path
    arrays = stack_examples([featurize(f, id=i) for f, i in zip(dos_files, ids)])
    out = pred.predict_outputs(arrays, source=str(model))  # mean, and an ensemble's std and calibrated interval
    std, lower = out.get(STD_OUTPUT_NAME), out.get(LOWER_OUTPUT_NAME)
    inputs = {k: arrays[k] for k in ("dos_up", "dos_down", "composition")}
    return Predictions(np.asarray(out[OUTPUT_NAME], float), None if std is None else np.asarray(std, float), str(model),
                       lower=None if lower is None else np.asarray(lower, float)), inputs
