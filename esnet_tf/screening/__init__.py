"""Stability screening: `esnet screen` as a library, one module per concern.

- `io`: the predictions CSV and reference-entry JSON in; candidates.csv, metrics.json, PNGs out
- `hull`: the convex hull (pymatgen PhaseDiagram / PatchedPhaseDiagram), shared with `esnet_tf.dft.labels`
- `references`: reference sets (entry JSON, labels.csv) and candidates' E_hull against them
- `metrics`: Matbench Discovery classification metrics and regression errors (scikit-learn),
  shared with `esnet evaluate`
- `cost`: the recall-vs-DFT-cost curve
- `plots`: the one parity plot (also `esnet evaluate`'s) and the recall-vs-cost plot
- `pipeline`: `ScreenConfig`, `Candidates` (arrays), `screen`, and the CSV-rows adapter `screen_rows`

    from esnet_tf.screening import Candidates, ScreenConfig, load_references, screen, write_outputs

    refs = load_references(["Li-Fe-O_entries.json.gz"], "mp_elemental_refs.json.gz")
    res = screen(Candidates(ids, predicted, formulas=formulas, formation_energy=truth), refs,
                 ScreenConfig(mode="ehull", threshold=0.0))
    res.metrics["daf"]; write_outputs(res, "screen/")

Energies in eV/atom, wall times in s. Heavy dependencies (pymatgen, scikit-learn, matplotlib)
are imported when used.
"""
from esnet_tf.screening.cost import Costs, cost_at_recall, cost_curve, costs_from_labels
from esnet_tf.screening.hull import Hull, e_above_hull_of_entries
from esnet_tf.screening.io import load_entries, read_csv_rows, write_outputs
from esnet_tf.screening.metrics import classification_metrics, regression_metrics, stable_mask, threshold_metrics
from esnet_tf.screening.pipeline import (EF_COL, EHULL_COL, HULL_TOL, MODES, PRED_COL, STD_COL, Candidates,
                                         ScreenConfig, ScreenResult, candidates_from_rows, merge_truths, screen,
                                         screen_rows)
from esnet_tf.screening.plots import parity_plot, recall_cost_plot
from esnet_tf.screening.references import (ReferenceHull, ReferenceSet, formation_energy_references,
                                           load_references, parse_formula, references_from_labels)

__all__ = [
    "Candidates", "Costs", "EF_COL", "EHULL_COL", "HULL_TOL", "Hull", "MODES", "PRED_COL", "ReferenceHull",
    "ReferenceSet", "STD_COL", "ScreenConfig", "ScreenResult", "candidates_from_rows", "classification_metrics",
    "cost_at_recall", "cost_curve", "costs_from_labels", "e_above_hull_of_entries", "formation_energy_references",
    "load_entries",
    "load_references", "merge_truths", "parity_plot", "parse_formula", "read_csv_rows", "recall_cost_plot",
    "references_from_labels", "regression_metrics", "screen", "screen_rows", "stable_mask", "threshold_metrics",
    "write_outputs",
]
