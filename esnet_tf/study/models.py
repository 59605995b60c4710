"""The study's models: one registry entry each; adding a row to the study is one `register` call.

A model is a function of a `Unit` (the data, the fold assignment, which fold is the test fold, the
seed and the training settings) that returns the predictions (eV/atom) for the test fold's
structures and a dict of notes. It may use the training folds' rows only (`unit.train_idx`, and the
IS-augmentation variants of those structures); the unit checks nothing else was seen where it can
(hull references, variant parents).

Every entry says which group it belongs to:
- `reference`: a trivial predictor (the mean);
- `baseline`: a model the ESNet rows are tested against (the best of them by pooled MAE is the
  comparator of the paired tests; today `gbr_uip`, gradient boosting on Magpie + CHGNet's E_f);
- `esnet`: an ESNet variant (trained per unit; its units depend on the epochs).
and whether it reads the augmented snapshot (`augmented`: its units are keyed by both files).

    from esnet_tf.study.models import register

    @register("gbr_my_features", "gradient boosting on my features",
              group="baseline")
    def _gbr_my_features(unit):
        ...
        return predictions, {}
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.study.data import StudyData, augmented_training_rows, concat, take

GROUPS = ("reference", "baseline", "esnet")
#: the baseline whose cross-fitted predictions esnet_residual corrects
RESIDUAL_BASELINE = "gbr_magpie"
#: inner grouped cross-fitting folds of the residual's baseline
INNER_FOLDS = 5


@dataclass(frozen=True)
class Unit:
    """One (model, fold, seed) unit: what a model function sees.

    fold_of: fold of each structure (grouped by `grouping`: chemical system or prototype); k: the test fold;
    epochs, batch_size: ESNet's maximum epochs and batch (examples); work: a scratch folder of this unit
    (removed after it); tune_space: the KerasTuner search space of tuned variants.
    """

    data: StudyData
    fold_of: np.ndarray
    k: int
    folds: int
    seed: int
    epochs: int
    batch_size: int
    work: Path
    tune_space: Path | None = None
    grouping: str = "chemsys"

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of == self.k)

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of != self.k)

    def esnet(self, train: dict, test: dict, config: Any = "small",
              work: Path | None = None) -> tuple[np.ndarray, dict]:
        """`fit.fit_esnet` with this unit's settings; `config`: 'small', an ESNetConfig or its JSON path."""
        from esnet_tf.study.fit import fit_esnet

        return fit_esnet(train, test, work or self.work, config, self.epochs, self.seed, self.batch_size)


ModelFn = Callable[[Unit], tuple[np.ndarray, dict]]


@dataclass(frozen=True)
class StudyModel:
    """A registry entry: `fit_predict(unit)` -> (test predictions eV/atom, notes)."""

    name: str
    description: str
    group: str
    fit_predict: ModelFn
    augmented: bool = False

    @property
    def uses_epochs(self) -> bool:
        """Whether the units depend on the ESNet epochs (cached under e<epochs>; others under e0)."""
        return self.group == "esnet"


#: name -> entry, in the order of the study's table
MODELS: dict[str, StudyModel] = {}


def register(name: str, description: str, *, group: str, augmented: bool = False) -> Callable[[ModelFn], ModelFn]:
    """Decorator: add `fn` to MODELS under `name` (names are unique; the table lists them in this order)."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if name in MODELS:
        raise ValueError(f"study model {name!r} is registered twice")

    def add(fn: ModelFn) -> ModelFn:
        MODELS[name] = StudyModel(name, description, group, fn, augmented)
        return fn

    return add


def run_model(name: str, unit: Unit) -> tuple[np.ndarray, dict]:
    """Predictions (eV/atom) of model `name` for the unit's test structures, and its notes."""
    try:
        entry = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown study model {name!r}: choose from {', '.join(MODELS)}") from None
    try:
        return entry.fit_predict(unit)
    finally:
        if unit.work.exists():
            shutil.rmtree(unit.work, ignore_errors=True)  # the predictions are cached; the models are not kept


# ---------------------------------------------------------------- reference and baselines


@register("mean", "mean of the training folds' labels", group="reference")
def _mean(unit: Unit) -> tuple[np.ndarray, dict]:
    return np.full(len(unit.test_idx), unit.data.y[unit.train_idx].mean()), {}


def _baseline(name: str) -> ModelFn:
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        from esnet_tf.baselines import BASELINES

        return BASELINES[name](unit.data.is_, unit.train_idx, unit.test_idx, unit.seed), {}

    return fit_predict


register("gbr_fraction", "gradient boosting on the fractional composition", group="baseline")(
    _baseline("gbr_fraction"))
register("gbr_magpie", "gradient boosting on Magpie-style element-property statistics", group="baseline")(
    _baseline("gbr_magpie"))


# ---------------------------------------------------------------- ESNet variants


def _small(**changes: Any) -> Any:
    from esnet_tf.model import ESNetConfig

    return ESNetConfig.small().replace(**changes)


def _paper(**changes: Any) -> Any:
    from esnet_tf.model import ESNetConfig

    return ESNetConfig.paper().replace(**changes)


def _esnet_notes(unit: Unit) -> dict:
    return {"n_train": int(len(unit.train_idx))}


def _on_is(config: Callable[[], Any] | str = "small") -> ModelFn:
    """ESNet trained on the training folds' IS-DOS, tested on the test fold's."""
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        notes = _esnet_notes(unit)
        cfg = config if isinstance(config, str) else config()
        pred, notes["train"] = unit.esnet(take(unit.data.is_, unit.train_idx), take(unit.data.is_, unit.test_idx),
                                          cfg)
        return pred, notes

    return fit_predict


register("esnet_is", "ESNet small on IS-DOS", group="esnet")(_on_is())


@register("esnet_is_aug", "ESNet small on IS-DOS + the training folds' IS-augmentation variants", group="esnet",
          augmented=True)
def _esnet_is_aug(unit: Unit) -> tuple[np.ndarray, dict]:
    d = unit.data
    sel = augmented_training_rows(d, unit.fold_of, unit.k, unit.folds, unit.seed, unit.grouping)
    notes = {**_esnet_notes(unit), "n_variants_in_training": int(len(sel))}
    pred, notes["train"] = unit.esnet(concat(take(d.is_, unit.train_idx), take(d.aug, sel)),
                                      take(d.is_, unit.test_idx))
    return pred, notes


@register("esnet_is_rs", "ESNet small on IS-DOS + the training folds' RS-DOS rows", group="esnet")
def _esnet_is_rs(unit: Unit) -> tuple[np.ndarray, dict]:
    d = unit.data
    notes = _esnet_notes(unit)
    pred, notes["train"] = unit.esnet(concat(take(d.is_, unit.train_idx), take(d.rs, unit.train_idx, "__rs")),
                                      take(d.is_, unit.test_idx))
    return pred, notes


def residual_targets(data: StudyData, train_idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold baseline of each training row, inner fold of each training row).

    The baseline of a training row comes from RESIDUAL_BASELINE fit on the training rows of the
    other inner folds (grouped by chemical system), never on the row's own inner fold.
    """
    from esnet_tf.baselines import BASELINES, crossfit
    from esnet_tf.study.data import kfold

    base = BASELINES[RESIDUAL_BASELINE]
    inner = kfold(data.is_["chemsys"][train_idx], INNER_FOLDS, 1000 + seed)
    oof = crossfit(lambda fit, pred: base(data.is_, fit, pred, seed), train_idx, inner)
    return oof, inner


@register("esnet_residual", "gbr_magpie + ESNet small on IS-DOS trained on the cross-fitted residual", group="esnet")
def _esnet_residual(unit: Unit) -> tuple[np.ndarray, dict]:
    from esnet_tf.baselines import BASELINES

    d, y, train_idx, test_idx = unit.data, unit.data.y, unit.train_idx, unit.test_idx
    notes = _esnet_notes(unit)
    oof, _ = residual_targets(d, train_idx, unit.seed)
    base_test = BASELINES[RESIDUAL_BASELINE](d.is_, train_idx, test_idx, unit.seed)
    train = take(d.is_, train_idx)
    train["formation_energy_per_atom"] = (y[train_idx] - oof).astype(np.float32)
    resid, notes["train"] = unit.esnet(train, take(d.is_, test_idx))
    notes["inner_oof_baseline_mae"] = float(np.abs(oof - y[train_idx]).mean())
    notes["baseline_test_mae"] = float(np.abs(base_test - y[test_idx]).mean())
    return base_test + resid, notes


@register("esnet_is_tuned", "ESNet on IS-DOS, size and regularisation chosen by KerasTuner on the training folds",
          group="esnet")
def _esnet_is_tuned(unit: Unit) -> tuple[np.ndarray, dict]:
    from esnet_tf.errors import UserError
    from esnet_tf.study.fit import tune_esnet

    if unit.tune_space is None:
        raise UserError("esnet_is_tuned needs a KerasTuner search space (StudyConfig.tune_space)")
    d = unit.data
    notes = _esnet_notes(unit)
    train = take(d.is_, unit.train_idx)
    config, notes["tuned"] = tune_esnet(train, unit.work / "search", unit.epochs, unit.seed, unit.batch_size,
                                        unit.tune_space)
    pred, notes["train"] = unit.esnet(train, take(d.is_, unit.test_idx), config, unit.work / "final")
    return pred, notes


register("esnet_is_no_attention", "ESNet small on IS-DOS without CBAM attention", group="esnet")(
    _on_is(lambda: _small(use_attention=False)))
register("esnet_is_elements", "ESNet small on IS-DOS, composition branch with element-property means",
         group="esnet")(_on_is(lambda: _small(element_properties=True)))


@register("esnet_rs", "ESNet small on RS-DOS, trained and tested on RS-DOS (upper bound)", group="esnet")
def _esnet_rs(unit: Unit) -> tuple[np.ndarray, dict]:
    d = unit.data
    notes = _esnet_notes(unit)
    pred, notes["train"] = unit.esnet(take(d.rs, unit.train_idx), take(d.rs, unit.test_idx))
    return pred, notes


# ---------------------------------------------------------------- baselines with an energy input (issues 32, 33)
#
# The IS single point that gives ESNet its IS-DOS also gives the IS formation energy; a universal
# potential (CHGNet, `esnet_tf.uip`) relaxes the initial structure without DFT. These rows use
# those numbers with no ESNet: what an energy-input ESNet has to beat.

#: the per-candidate calculations a row can need (their CPU seconds: `data.candidate_cpu_seconds`): the DFT
#: IS single point, CHGNet's relaxation, SevenNet's relaxation, the DFT relaxation after the IS single point
CANDIDATE_STEPS = ("is_single_point", "uip_relaxation", "sevennet_relaxation", "dft_relaxation")
#: rows whose candidates need more (or other) than their group's default (`candidate_needs`)
CANDIDATE_NEEDS: dict[str, tuple[str, ...]] = {"esnet_rs": ("is_single_point", "dft_relaxation")}


def candidate_needs(name: str) -> tuple[str, ...]:
    """The CANDIDATE_STEPS each candidate of row `name` needs: CANDIDATE_NEEDS, else the IS single point for
    an ESNet row (its IS-DOS) and nothing for the composition-only rows."""
    if name in CANDIDATE_NEEDS:
        return CANDIDATE_NEEDS[name]
    entry = MODELS.get(name)
    return ("is_single_point",) if entry is not None and entry.group == "esnet" else ()


def _is_energy(unit: Unit) -> np.ndarray:
    """IS formation energy of every structure (eV/atom); UserError when a training or test row has none."""
    from esnet_tf.errors import UserError

    e = unit.data.is_formation_energy
    rows = np.concatenate([unit.train_idx, unit.test_idx])
    bad = rows[~np.isfinite(e[rows])]
    if len(bad):
        raise UserError(f"{unit.data.labels}: {len(bad)} row(s) without is_formation_energy_per_atom "
                        f"({', '.join(unit.data.is_['id'][bad][:3])}): take a snapshot of labels.csv that has it "
                        "(--new-snapshot)")
    return e


@register("is_shift", "IS formation energy minus the training folds' median relaxation energy E_f(IS) - E_f(RS)",
          group="baseline")
def _is_shift(unit: Unit) -> tuple[np.ndarray, dict]:
    e, y = _is_energy(unit), unit.data.y
    shift = float(np.median(e[unit.train_idx] - y[unit.train_idx]))
    return e[unit.test_idx] - shift, {"median_relaxation_energy": shift}


def _gbr_with_is(features: Callable[[np.ndarray], np.ndarray], relaxation_energy: bool = False) -> ModelFn:
    """Gradient boosting (GBR_PARAMS) on features(composition) + the IS formation energy. Its target is the
    relaxed E_f (eV/atom), or with `relaxation_energy` the relaxation energy ΔE = E_f(IS) - E_f(RS), the
    prediction then E_f(IS) - ΔE (the target of the `esnet_is_relax` rows)."""
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        from esnet_tf.baselines import fit_predict_gbr, with_energies

        e = _is_energy(unit)
        x = with_energies(features(unit.data.is_["composition"]), e)
        y = unit.data.y
        tr, te = unit.train_idx, unit.test_idx
        if not relaxation_energy:
            return fit_predict_gbr(x[tr], y[tr], x[te], unit.seed), {}
        return e[te] - fit_predict_gbr(x[tr], e[tr] - y[tr], x[te], unit.seed), {}

    return fit_predict


def _magpie(composition: np.ndarray) -> np.ndarray:
    from esnet_tf.baselines import magpie_features

    return magpie_features(composition)


register("gbr_magpie_is", "gradient boosting on Magpie statistics + the IS formation energy", group="baseline")(
    _gbr_with_is(_magpie))
register("gbr_fraction_is", "gradient boosting on the fractional composition + the IS formation energy",
         group="baseline")(_gbr_with_is(lambda composition: np.asarray(composition, float)))
register("gbr_magpie_is_relax", "gradient boosting on Magpie statistics + the IS formation energy, predicting the "
         "relaxation energy E_f(IS) - E_f(RS)", group="baseline")(_gbr_with_is(_magpie, relaxation_energy=True))


def uip_test_energies(unit: Unit, model: str = "chgnet") -> tuple[np.ndarray, dict]:
    """The potential's (`model`, `esnet_tf.uip.MODELS`) formation energy (eV/atom) of the test rows, the gas
    references (N, O, F, Cl) fitted on the training rows only (`UIPTable.fold_formation_energies`), and notes
    (references, potential)."""
    d = unit.data
    table = d.uip_table(model)
    ids = d.is_["id"]
    train = {str(ids[i]): float(d.y[i]) for i in unit.train_idx}  # only training labels are handed over
    mu_fit = table.fold_formation_energies(list(train), train)
    pred = np.array([mu_fit[str(i)] for i in ids[unit.test_idx]], float)
    if not np.all(np.isfinite(pred)):
        raise AssertionError(f"{int(np.sum(~np.isfinite(pred)))} test row(s) without a potential formation energy "
                             "(an element no training row holds, or a failed relaxation)")
    from esnet_tf.uip import GAS_ELEMENTS, fit_gas_references

    mu = fit_gas_references(list(train), table.energies, table.compositions, train, table.crystal_mu)
    notes = {"potential": f"{table.meta.get('model')} {table.meta.get('model_version')} "
                          f"({table.meta.get('package')} {table.meta.get('package_version')})",
             "fitted_mu": {el: mu[el] for el in GAS_ELEMENTS if el in mu}}
    return pred, notes


@register("uip", "CHGNet's relaxed formation energy (gas references fitted on the training folds)", group="baseline")
def _uip(unit: Unit) -> tuple[np.ndarray, dict]:
    return uip_test_energies(unit)


@register("uip_sevennet", "SevenNet's (7net-0) relaxed formation energy (gas references fitted on the training folds)",
          group="baseline")
def _uip_sevennet(unit: Unit) -> tuple[np.ndarray, dict]:
    return uip_test_energies(unit, "sevennet")


def uip_training_energies(unit: Unit, model: str = "chgnet") -> tuple[np.ndarray, int]:
    """The potential's formation energy (eV/atom) of each training row, cross-fitted: the gas references of a
    row come from the training rows of the other inner folds (grouped by chemical system, as the
    residual's), never from the row itself; a row whose cross-fitted value is missing (its gas element
    only in its own inner fold) gets the value with references fitted on all training rows (counted)."""
    from esnet_tf.study.data import kfold
    from esnet_tf.uip import cross_fitted_formation_energies

    d = unit.data
    table = d.uip_table(model)
    ids = [str(i) for i in d.is_["id"][unit.train_idx]]
    train = dict(zip(ids, d.y[unit.train_idx].tolist()))
    inner = kfold(d.is_["chemsys"][unit.train_idx], INNER_FOLDS, 1000 + unit.seed)
    cross, _ = cross_fitted_formation_energies(table, train, dict(zip(ids, inner.tolist())))
    fallback = table.fold_formation_energies(ids, train)
    out = np.array([cross[i] if np.isfinite(cross[i]) else fallback[i] for i in ids], float)
    return out, int(sum(not np.isfinite(cross[i]) for i in ids))


def _gbr_uip(*models: str) -> ModelFn:
    """Gradient boosting on Magpie statistics + each potential's formation energy (test rows: gas references
    fitted on the training rows; training rows: cross-fitted, `uip_training_energies`). A training row whose
    relaxation failed for a potential (no energy) is left out of the fit and named in the notes
    (`training_rows_without_potential_energy`)."""
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        from esnet_tf.baselines import fit_predict_gbr, magpie_features, with_energies

        d = unit.data
        tests, trains, notes = [], [], {}
        for model in models:
            e_test, notes[model] = uip_test_energies(unit, model)
            e_train, notes[model]["training_rows_not_cross_fitted"] = uip_training_energies(unit, model)
            tests.append(e_test)
            trains.append(e_train)
        keep = np.all(np.isfinite(np.vstack(trains)), axis=0)
        x = magpie_features(d.is_["composition"])
        pred = fit_predict_gbr(with_energies(x[unit.train_idx][keep], *(e[keep] for e in trains)),
                               d.y[unit.train_idx][keep], with_energies(x[unit.test_idx], *tests), unit.seed)
        out = notes[models[0]] if len(models) == 1 else notes
        if not keep.all():
            out["training_rows_without_potential_energy"] = d.is_["id"][unit.train_idx][~keep].tolist()
        return pred, out

    return fit_predict


register("gbr_uip", "gradient boosting on Magpie statistics + CHGNet's formation energy (training rows cross-fitted)",
         group="baseline")(_gbr_uip("chgnet"))
register("gbr_uip_sevennet", "gradient boosting on Magpie statistics + SevenNet's formation energy (training rows "
         "cross-fitted)", group="baseline")(_gbr_uip("sevennet"))
register("gbr_uip_both", "gradient boosting on Magpie statistics + CHGNet's and SevenNet's formation energies "
         "(training rows cross-fitted)", group="baseline")(_gbr_uip("chgnet", "sevennet"))


CANDIDATE_NEEDS.update({"is_shift": ("is_single_point",), "gbr_magpie_is": ("is_single_point",),
                        "gbr_magpie_is_relax": ("is_single_point",),
                        "gbr_fraction_is": ("is_single_point",), "uip": ("uip_relaxation",),
                        "gbr_uip": ("uip_relaxation",), "uip_sevennet": ("sevennet_relaxation",),
                        "gbr_uip_sevennet": ("sevennet_relaxation",),
                        "gbr_uip_both": ("uip_relaxation", "sevennet_relaxation")})


# ---------------------------------------------------------------- ESNet with an energy input
#
# The IS single point's formation energy (and, for the uip rows, CHGNet's) enters ESNet's head as a
# named energy input (`ESNetConfig.energy_inputs`); the target is the relaxed E_f directly or the
# relaxation energy ΔE >= 0 (output E_f(IS) - ΔE). Each IS-augmentation variant carries the IS energy of
# its own single point (`StudyData.aug`), labelled with its parent's relaxed E_f.

#: the IS single point's formation energy input (eV/atom; `esnet_tf.isdos.IS_FORMATION_ENERGY`)
_IS_EF = "is_formation_energy_per_atom"

#: the potential's formation energy input (eV/atom): `uip_test_energies` / `uip_training_energies`
UIP_EF = "uip_formation_energy_per_atom"


def _on_is_energy(config: Callable[[], Any]) -> ModelFn:
    """ESNet (config()) on the training folds' IS-DOS with their IS formation energies, tested on the test fold's."""
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        _is_energy(unit)  # every training and test row has its IS energy, else one line naming the fix
        d = unit.data
        notes = _esnet_notes(unit)
        pred, notes["train"] = unit.esnet(take(d.is_, unit.train_idx), take(d.is_, unit.test_idx), config())
        return pred, notes

    return fit_predict


register("esnet_is_energy", "ESNet small on IS-DOS + the IS formation energy, relaxed E_f predicted directly",
         group="esnet")(_on_is_energy(lambda: _small(energy_inputs=(_IS_EF,))))
register("esnet_is_relax", "ESNet small on IS-DOS + the IS formation energy, predicting the relaxation energy",
         group="esnet")(_on_is_energy(lambda: _small(energy_inputs=(_IS_EF,), target="relaxation_energy")))
register("esnet_is_relax_elements", "esnet_is_relax with element-property means in the composition branch",
         group="esnet")(_on_is_energy(lambda: _small(energy_inputs=(_IS_EF,), target="relaxation_energy",
                                                     element_properties=True)))


@register("esnet_is_relax_aug", "esnet_is_relax + the training folds' IS-augmentation variants (each with its own "
          "IS formation energy)", group="esnet", augmented=True)
def _esnet_is_relax_aug(unit: Unit) -> tuple[np.ndarray, dict]:
    from esnet_tf.errors import UserError

    _is_energy(unit)
    d = unit.data
    sel = augmented_training_rows(d, unit.fold_of, unit.k, unit.folds, unit.seed, unit.grouping)
    e_var = d.aug[_IS_EF].reshape(-1)[sel]
    if not np.all(np.isfinite(e_var)):
        raise UserError(f"{d.aug_labels}: {int(np.sum(~np.isfinite(e_var)))} variant(s) without {_IS_EF}: take a "
                        "snapshot of labels_augmented.csv that has it (--new-snapshot)")
    notes = {**_esnet_notes(unit), "n_variants_in_training": int(len(sel))}
    pred, notes["train"] = unit.esnet(concat(take(d.is_, unit.train_idx), take(d.aug, sel)),
                                      take(d.is_, unit.test_idx),
                                      _small(energy_inputs=(_IS_EF,), target="relaxation_energy"))
    return pred, notes


def _with_uip(unit: Unit) -> tuple[dict, dict, dict]:
    """(training rows, test rows, notes) of the IS-DOS with UIP_EF added: the test rows' with gas references
    fitted on the training rows (`uip_test_energies`), the training rows' cross-fitted on inner folds
    (`uip_training_energies`), as gbr_uip's."""
    d = unit.data
    e_test, notes = uip_test_energies(unit)
    e_train, notes["training_rows_not_cross_fitted"] = uip_training_energies(unit)
    train, test = take(d.is_, unit.train_idx), take(d.is_, unit.test_idx)
    train[UIP_EF] = e_train.astype(np.float32).reshape(-1, 1)
    test[UIP_EF] = e_test.astype(np.float32).reshape(-1, 1)
    return train, test, notes


def _on_is_uip(config: Callable[[], Any]) -> ModelFn:
    def fit_predict(unit: Unit) -> tuple[np.ndarray, dict]:
        _is_energy(unit)
        train, test, uip_notes = _with_uip(unit)
        notes = {**_esnet_notes(unit), "uip": uip_notes}
        pred, notes["train"] = unit.esnet(train, test, config())
        return pred, notes

    return fit_predict


register("esnet_uip_relax", "ESNet small on IS-DOS + the IS and CHGNet formation energies, predicting the "
         "relaxation energy", group="esnet")(
    _on_is_uip(lambda: _small(energy_inputs=(_IS_EF, UIP_EF), target="relaxation_energy")))
register("esnet_uip_is", "ESNet small on IS-DOS + the IS and CHGNet formation energies, relaxed E_f predicted "
         "directly", group="esnet")(_on_is_uip(lambda: _small(energy_inputs=(_IS_EF, UIP_EF))))

register("esnet_uip_correction", "ESNet small (element-property means) on IS-DOS + the IS and CHGNet formation "
         "energies, predicting a correction to CHGNet's E_f", group="esnet")(
    _on_is_uip(lambda: _small(energy_inputs=(_IS_EF, UIP_EF), target="uip_correction", element_properties=True)))

register("esnet_uip_correction_no_is", "esnet_uip_correction without the IS formation energy (IS-DOS + CHGNet's E_f)",
         group="esnet")(
    _on_is_uip(lambda: _small(energy_inputs=(UIP_EF,), target="uip_correction", element_properties=True)))


# ---------------------------------------------------------------- levers tried on the best ESNet row (issue 32)


def _uip_correction(**changes: Any) -> Any:
    """esnet_uip_correction's config (small unless `changes` say otherwise)."""
    return _small(energy_inputs=(_IS_EF, UIP_EF), target="uip_correction", element_properties=True).replace(**changes)


@register("esnet_uip_correction_long", "esnet_uip_correction trained for twice the study's epochs (80 at --epochs 40; "
          "early stopping and learning-rate patience scale with them)", group="esnet")
def _esnet_uip_correction_long(unit: Unit) -> tuple[np.ndarray, dict]:
    import dataclasses

    return _on_is_uip(_uip_correction)(dataclasses.replace(unit, epochs=2 * unit.epochs))


register("esnet_uip_correction_paper", "esnet_uip_correction with the paper's widths (64-128-256-512, ~10 M "
         "parameters)", group="esnet")(
    _on_is_uip(lambda: _paper(energy_inputs=(_IS_EF, UIP_EF), target="uip_correction", element_properties=True)))


@register("esnet_uip_correction_tuned", "esnet_uip_correction, size and regularisation chosen by KerasTuner on the "
          "training folds only (the search space of esnet_is_tuned around this row's config)", group="esnet")
def _esnet_uip_correction_tuned(unit: Unit) -> tuple[np.ndarray, dict]:
    import json

    from esnet_tf.atomic import write_text
    from esnet_tf.errors import UserError
    from esnet_tf.study.fit import tune_esnet

    if unit.tune_space is None:
        raise UserError("esnet_uip_correction_tuned needs a KerasTuner search space (StudyConfig.tune_space)")
    _is_energy(unit)
    train, test, uip_notes = _with_uip(unit)
    notes = {**_esnet_notes(unit), "uip": uip_notes}
    unit.work.mkdir(parents=True, exist_ok=True)
    base, space = unit.work / "base_config.json", unit.work / "search_space.json"
    write_text(base, json.dumps(_uip_correction().to_dict()))
    spec = json.loads(Path(unit.tune_space).read_text(encoding="utf-8"))
    write_text(space, json.dumps({**spec, "base": str(base)}))
    config, notes["tuned"] = tune_esnet(train, unit.work / "search", unit.epochs, unit.seed, unit.batch_size, space)
    pred, notes["train"] = unit.esnet(train, test, config, unit.work / "final")
    return pred, notes


CANDIDATE_NEEDS.update({f"esnet_uip_correction_{v}": ("is_single_point", "uip_relaxation")
                        for v in ("long", "paper", "tuned")})
CANDIDATE_NEEDS.update({"esnet_uip_correction_no_is": ("is_single_point", "uip_relaxation"),
                        "esnet_uip_relax": ("is_single_point", "uip_relaxation"),
                        "esnet_uip_is": ("is_single_point", "uip_relaxation"),
                        "esnet_uip_correction": ("is_single_point", "uip_relaxation")})
