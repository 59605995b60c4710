"""The accuracy study: grouped k-fold cross-validation of ESNet against baselines, as a library.

- `data`: the labels snapshot, featurized once (`StudyData`), grouped folds (`kfold`), the rows a
  unit may train on (`augmented_training_rows`)
- `models`: the registry of study models (`MODELS`, `register`): one small function per row
- `fit`: ESNet trained and tuned on a unit's training rows only
- `metrics`: per-unit scores (MAE, RMSE, polymorph ranking, E_hull <= 0 screening against the
  training folds' hull from `esnet_tf.screening`)
- `stats`: bootstrap intervals, paired tests (Wilcoxon signed-rank, t-interval)
- `report`: the summary, the markdown table, the figure
- `run`: `StudyConfig` and `run_study` (cache per unit, locks, worker processes)

    from esnet_tf import resources
    from esnet_tf.study import StudyConfig, run_study

    result = run_study(StudyConfig(out=Path("study"), demo=resources.demo_dir(), models=("mean", "gbr_magpie"),
                                   seeds=(0,), summary_only=False))
    result["summary"]["models"]["gbr_magpie"]["pooled_mae"]["value"]     # eV/atom

The command line is `benchmarks/accuracy.py`. Energies in eV/atom.
"""
from esnet_tf.study.data import StudyData, augmented_training_rows, file_hash, kfold
from esnet_tf.study.models import MODELS, StudyModel, Unit, register, run_model
from esnet_tf.study.report import TABLE_END, TABLE_START, replace_table, summarise, table_markdown
from esnet_tf.study.run import StudyConfig, run_study, unit_path
from esnet_tf.study.stats import bootstrap_ci, paired_comparison

__all__ = [
    "MODELS", "StudyConfig", "StudyData", "StudyModel", "TABLE_END", "TABLE_START", "Unit", "augmented_training_rows",
    "bootstrap_ci", "file_hash", "kfold", "paired_comparison", "register", "replace_table", "run_model", "run_study",
    "summarise", "table_markdown", "unit_path",
]
