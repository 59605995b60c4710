"""The campaign: round 0 screening, then rounds of acquire -> relax -> update the hull -> (refit) -> record.

    from esnet_tf.campaign import CampaignConfig, pool_from_labels, run_campaign
    pool = pool_from_labels(["labels.csv"], predictions={"esnet": "oof_predictions.csv"})
    result = run_campaign(pool, CampaignConfig(strategy="lcb", batch_size=10, kappa=1.0), "campaign/lcb")
    result.summary["cost_to_recall"]["0.9"]["cost_s"]

Round 0 counts the IS single points of every candidate (for the strategies that need IS-DOS, see
`strategies.PAYS_IS`), the screening cost of the strategy's prediction source where it has one
(`Predictions.cost_s`: a potential's CPU seconds) and the references' cost, and places every
prediction on the hull of the references. Each further round ranks the remaining candidates by
the strategy's score on the *current* hull (references + everything relaxed so far), relaxes
the best `batch_size` (a replay reveals the known label and wall time; a live campaign runs
GPAW), puts the results into the hull, optionally refits the predictions (`refit`), and writes
`rounds/round_NNNN.json` atomically.
A rerun on the same `out_dir` reads the finished rounds and continues after the last one, so a
kill between (or during) rounds loses at most the round in progress; the out dir is locked.

Costs are DFT wall times in s, also in relaxation equivalents (s / the pool's mean relaxation
wall time); the saving is against relaxing every candidate.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from esnet_tf.atomic import exclusive, write_text
from esnet_tf.campaign.hull import true_e_above_hull
from esnet_tf.campaign.pool import LOWER_COLUMN, Pool, Predictions, describe, prediction_warnings
from esnet_tf.campaign.strategies import (PAYS_IS, SOURCE_FLAG, SOURCE_OF, STRATEGIES, RoundView,
                                          estimated_relax_s, probability_stable, ranking, scores)
from esnet_tf.errors import UserError
from esnet_tf.isdos import PREDICTION_STD_COLUMN
from esnet_tf.screening.cost import cost_at_recall
from esnet_tf.screening.metrics import stable_mask
from esnet_tf.screening.pipeline import HULL_TOL
from esnet_tf.screening.references import ReferenceHull

REFITS = ("none", "residual", "fine-tune")
STATE_FILE = "campaign.json"
ROUNDS_DIR = "rounds"
RECALL_LEVELS = (0.5, 0.9, 1.0)
FORMAT = 1


@dataclass(frozen=True)
class CampaignConfig:
    """One campaign's settings; energies in eV/atom, costs in s unless named otherwise.

    strategy: one of `strategies.STRATEGIES`. batch_size: candidates relaxed per round.
    kappa: LCB weight on sigma (score = E_hull - kappa sigma). threshold: stable if E_hull <= it.
    seed: the random strategy's seed. refit: 'none'; 'residual' (after each round, shift the
    remaining candidates' predictions by the mean error of the relaxed candidates of their chemical
    system, shrunk by 1/(n+1): a model-free correction from what has been relaxed); or 'fine-tune'
    (the `refitter` given to the campaign, e.g. `refit.ESNetFineTune`, retrains on the relaxed).
    Stops (any that is set): budget_s (DFT wall time, s), budget_relaxations (relaxation
    equivalents), target_recall (fraction of the truly stable; replay only), stop_expected_stable
    (expected number of stable candidates left, from the predictions with std floor min_std),
    max_rounds (stop after that round; a rerun with a larger value continues: resumable).
    count_is_single_points: None = the strategy's default (`strategies.PAYS_IS`).
    """

    strategy: str = "greedy"
    batch_size: int = 10
    kappa: float = 1.0
    threshold: float = 0.0
    seed: int = 0
    refit: str = "none"
    budget_s: float | None = None
    budget_relaxations: float | None = None
    target_recall: float | None = None
    stop_expected_stable: float | None = None
    min_std: float = 0.05
    max_rounds: int | None = None
    count_is_single_points: bool | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.refit not in REFITS:
            raise UserError(f"unknown refit {self.refit!r}: use one of {', '.join(REFITS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"batch size must be an integer >= 1 (candidates per round), got {self.batch_size}")
        for name in ("kappa", "threshold", "min_std"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number (eV/atom), got {getattr(self, name)}")
        if self.min_std < 0 or self.kappa < 0:
            raise UserError("kappa and min_std must be >= 0")
        for name in ("budget_s", "budget_relaxations", "stop_expected_stable"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise UserError(f"{name} must be a number >= 0, got {v}")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise UserError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.max_rounds is not None and self.max_rounds < 0:
            raise UserError(f"max rounds must be >= 0, got {self.max_rounds}")

    @property
    def pays_is(self) -> bool:
        """Whether round 0 counts the IS single points of every candidate."""
        return PAYS_IS[self.strategy] if self.count_is_single_points is None else bool(self.count_is_single_points)

    @property
    def source(self) -> str | None:
        return SOURCE_OF[self.strategy]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CampaignConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def choice_settings(self) -> dict[str, Any]:
        """The settings that decide which candidates are chosen (must match to resume)."""
        return {k: getattr(self, k) for k in ("strategy", "batch_size", "kappa", "threshold", "seed", "refit",
                                              "min_std", "count_is_single_points")}


class Relaxer(Protocol):
    """Relaxes candidates (pool indices): returns (relaxed formation energy eV/atom, relax wall time s) each."""

    def __call__(self, pool: Pool, indices: Sequence[int]) -> list[tuple[float, float]]: ...


def replay_relaxer(pool: Pool, indices: Sequence[int]) -> list[tuple[float, float]]:
    """A replay's 'relaxation': reveal the known label and its recorded wall time."""
    if pool.truth is None:
        raise UserError("replay of a pool without known labels: give labels with formation_energy_per_atom")
    return [(float(pool.truth[i]), float(pool.relax_wall_time_s[i])) for i in indices]


Refitter = Callable[[Pool, np.ndarray, np.ndarray], Mapping[str, Predictions]]
"""(pool, relaxed indices, their relaxed E_f eV/atom) -> updated prediction sources (full pool arrays)."""


def residual_refit(pool: Pool, base: Mapping[str, Predictions], relaxed: np.ndarray,
                   ef: np.ndarray) -> dict[str, Predictions]:
    """Shift each source's predictions by the shrunk mean error of the relaxed candidates of the same
    chemical system."""
    chemsys = np.array(pool.chemsys)
    out = {}
    for name, p in base.items():
        shift = np.zeros(pool.n)
        if len(relaxed):
            err = p.mean[relaxed] - ef
            for cs in set(chemsys[relaxed].tolist()):
                m = chemsys[relaxed] == cs
                e = err[m][np.isfinite(err[m])]
                shift[chemsys == cs] = e.sum() / (len(e) + 1.0)
        out[name] = p.replace_mean(p.mean - shift, p.source + " (residual refit)")
    return out


@dataclass
class CampaignResult:
    """A finished (or paused) campaign: its config, the rounds as recorded, and the summary."""

    config: CampaignConfig
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None = None
    trajectory: dict[str, np.ndarray] = field(default_factory=dict)


def json_text(obj: Any) -> str:
    """`obj` as indented JSON text (numpy values as Python numbers, NaN / inf as null), newline-terminated."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.ndarray):
            return clean(x.tolist())
        if isinstance(x, np.generic):
            return clean(x.item())
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return json.dumps(clean(obj), indent=1, sort_keys=False) + "\n"


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def expected_stable(mean_e_hull: np.ndarray, std: np.ndarray | None, threshold: float, min_std: float) -> float:
    """Expected number of stable candidates: sum of P(E_hull <= threshold), E_hull ~ N(mean, max(std, min_std)).

    A NaN prediction contributes 0 (predicted unstable, the screening convention).
    """
    p = probability_stable(mean_e_hull, std, threshold + HULL_TOL, min_std)
    return float(np.nansum(p))


class Campaign:
    """The state of one campaign over a pool; `run()` continues it round by round."""

    def __init__(self, pool: Pool, config: CampaignConfig, out_dir: str | Path | None = None, *,
                 relaxer: Relaxer = replay_relaxer, refitter: Refitter | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.pool, self.config = pool, config
        self.out = Path(out_dir) if out_dir is not None else None
        self.relaxer, self.refitter, self.progress = relaxer, refitter, progress or (lambda _msg: None)
        src = config.source
        if src is not None and src not in pool.sources:
            raise UserError(f"strategy {config.strategy!r} ranks by the {src!r} predictions, which the pool lacks: "
                            + ("give --predictions CSV or --model PATH" if src == "esnet"
                               else f"give {SOURCE_FLAG.get(src, src)}"))
        if src is not None:
            p = pool.sources[src]
            if config.strategy == "lcb" and not p.has_std:
                raise UserError(f"{p.source}: strategy lcb ranks by E_hull - kappa sigma, but these predictions have "
                                f"no std ({PREDICTION_STD_COLUMN}): give an ensemble's predictions (`esnet predict` "
                                "of an ensemble writes the column), or use --strategy greedy")
            if config.strategy == "lower_bound" and not p.has_lower:
                raise UserError(f"{p.source}: strategy lower_bound ranks by the 90 % interval's lower bound, but these "
                                f"predictions have no {LOWER_COLUMN}: give a calibrated ensemble's predictions, or use "
                                "--strategy lcb (mean - kappa sigma)")
            if config.strategy == "lower_bound" and config.refit == "fine-tune":
                raise UserError("strategy lower_bound with --refit fine-tune: the fine-tuned model has no calibrated "
                                "interval; use --refit residual or --strategy lcb")
        if refitter is not None and config.refit != "fine-tune":
            raise UserError(f"a refitter was given but refit is {config.refit!r}: use refit='fine-tune'")
        if config.refit == "fine-tune" and refitter is None:
            raise UserError("refit 'fine-tune' needs a refitter (e.g. esnet_tf.campaign.refit.ESNetFineTune; "
                            "`esnet campaign live --model M.keras --refit fine-tune`)")
        if config.strategy == "oracle" and not pool.is_replay:
            raise UserError("the oracle strategy needs the true labels of every candidate (a replay pool)")
        if config.target_recall is not None and not pool.is_replay:
            raise UserError("--target-recall needs the true labels of every candidate (a replay): use a budget "
                            "or --stop-expected-stable in a live campaign")
        self._sources_cache: tuple[Any, dict[str, Predictions]] | None = None
        self.relax_s = np.array(pool.relax_wall_time_s, float)  # filled in by a live campaign's relaxations
        self.true_e_hull = (true_e_above_hull(pool.references, pool.compositions, pool.truth, pool.ids)
                            if pool.is_replay else np.full(pool.n, np.nan))
        self.true_stable = stable_mask(self.true_e_hull, config.threshold, tol=HULL_TOL)
        self.n_true_stable = int(self.true_stable.sum()) if pool.is_replay else None

    @property
    def unit_s(self) -> float:
        """One relaxation equivalent (s): the mean relaxation wall time over the candidates that have one."""
        v = self.relax_s[np.isfinite(self.relax_s)]
        return float(v.mean()) if len(v) else math.nan

    def _has_unit(self) -> bool:
        return math.isfinite(self.unit_s) and self.unit_s > 0

    # ----- state -----------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "config": self.config.to_dict(), "choice_settings": self.config.choice_settings(),
                "pool": describe(self.pool)}

    def _round_path(self, k: int) -> Path:
        assert self.out is not None
        return self.out / ROUNDS_DIR / f"round_{k:04d}.json"

    def _load_rounds(self) -> list[dict[str, Any]]:
        if self.out is None or not (self.out / STATE_FILE).exists():
            return []
        head = json.loads((self.out / STATE_FILE).read_text())
        # sources added to the pool since (e.g. "uip") cannot have changed a finished round: check the ones it had
        had = sorted(head.get("pool", {}).get("sources") or {})
        if head.get("pool", {}).get("fingerprint") != self.pool.fingerprint(
                had if set(had) <= set(self.pool.sources) else None):
            raise UserError(f"{self.out}: holds a campaign over another pool (other candidates, costs or "
                            "predictions): use a new --out, or --overwrite to start again")
        if head.get("choice_settings") != self.config.choice_settings():
            raise UserError(f"{self.out}: holds a campaign with other settings {head.get('choice_settings')}: use "
                            "a new --out, or --overwrite to start again (stops and budgets may change on resume)")
        rounds = []
        k = 0
        while self._round_path(k).exists():
            rounds.append(json.loads(self._round_path(k).read_text()))
            k += 1
        return rounds

    def run(self) -> CampaignResult:
        """Run (or continue) the campaign until a stop; returns the result (also written to out_dir)."""
        if self.out is None:
            return self._run()
        self.out.mkdir(parents=True, exist_ok=True)
        with exclusive(self.out / STATE_FILE, "campaign"):
            return self._run()

    def _run(self) -> CampaignResult:
        cfg, pool = self.config, self.pool
        rounds = self._load_rounds()
        if self.out is not None:
            write_text(self.out / STATE_FILE, json_text(self._header()))
        if rounds:
            self.progress(f"{cfg.strategy}: resuming after round {len(rounds) - 1}")
        relaxed: list[int] = []
        ef: list[float] = []
        hull = ReferenceHull(pool.references)
        for r in rounds[1:]:
            for c in r["chosen"]:
                relaxed.append(int(c["index"]))
                self.relax_s[relaxed[-1]] = float(c["relax_wall_time_s"])
                ef.append(float(c["formation_energy_per_atom"]))
                hull.add(pool.compositions[relaxed[-1]], ef[-1], pool.ids[relaxed[-1]])
        if not rounds:
            rounds.append(self._record(self._round_zero(hull)))
        cost = sum(r["cost_s"] for r in rounds)
        stop = None
        while True:
            stop = self._stop_reason(rounds, cost, relaxed)
            if stop is not None:
                break
            k = len(rounds)
            remaining = np.setdiff1d(np.arange(pool.n), np.array(relaxed, int))
            sources = self._sources(np.array(relaxed, int), np.array(ef, float))
            view = self._view(k, remaining, hull, sources)
            order = remaining[ranking(scores(cfg.strategy, view, cfg.kappa))]
            batch = self._fit_budget(order[:cfg.batch_size], cost)
            if not len(batch):
                stop = "budget"
                break
            results = self.relaxer(pool, [int(i) for i in batch])
            flagged = self._flagged()
            chosen = []
            score_of = dict(zip(view.index.tolist(), scores(cfg.strategy, view, cfg.kappa).tolist()))
            pos = {int(i): j for j, i in enumerate(view.index)}
            for i, (f, rx_s) in zip(batch, results):
                i = int(i)
                if not math.isfinite(rx_s) or rx_s < 0:
                    raise UserError(f"candidate {pool.ids[i]!r}: relaxation wall time {rx_s} s is not a time")
                self.relax_s[i] = rx_s
                j = pos[i]
                chosen.append({"index": i, "id": str(pool.ids[i]), "formula": str(pool.formulas[i]),
                               "score": score_of[i], "predicted_e_above_hull": view.predicted_e_above_hull[j],
                               "predicted_std": view.predicted_std[j], "formation_energy_per_atom": float(f),
                               "relax_wall_time_s": float(rx_s),
                               "true_e_above_hull": self.true_e_hull[i] if pool.is_replay else None,
                               "truly_stable": bool(self.true_stable[i]) if pool.is_replay else None})
                if flagged is not None:
                    chosen[-1]["needs_dft"] = bool(flagged[i])
            for c in chosen:
                relaxed.append(c["index"])
                ef.append(c["formation_energy_per_atom"])
                hull.add(pool.compositions[c["index"]], c["formation_energy_per_atom"], c["id"])
            rec = {"round": k, "chosen": chosen, "cost_s": float(sum(c["relax_wall_time_s"] for c in chosen)),
                   "relax_cost_s": float(sum(c["relax_wall_time_s"] for c in chosen))}
            cost += rec["cost_s"]
            rec.update(self._status(relaxed, ef, hull, cost))
            rec["expected_stable_left"] = self._expected_left(k + 1, relaxed, ef, hull)
            rounds.append(self._record(rec))
            self.progress(f"{cfg.strategy}: round {k}: relaxed {len(relaxed)}/{pool.n}, cost {cost:.0f} s"
                          + (f", stable found {rec['n_stable_found']}/{self.n_true_stable}" if pool.is_replay else
                             f", on the hull {rec['n_stable_known']}"))
        return self._finish(rounds, relaxed, ef, hull, stop)

    # ----- one round --------------------------------------------------------------------------
    def _sources(self, relaxed: np.ndarray, ef: np.ndarray) -> dict[str, Predictions]:
        """The prediction sources after the refit on `relaxed` (computed once per round)."""
        key = (len(relaxed), tuple(relaxed.tolist()))
        if self._sources_cache is not None and self._sources_cache[0] == key:
            return self._sources_cache[1]
        sources: dict[str, Predictions] = dict(self.pool.sources)
        if self.config.refit == "residual":
            sources = residual_refit(self.pool, sources, relaxed, ef)
        if self.config.refit == "fine-tune" and len(relaxed):
            sources.update(self.refitter(self.pool, relaxed, ef))
        self._sources_cache = (key, sources)
        return sources

    def _view(self, k: int, index: np.ndarray, hull: ReferenceHull, sources: Mapping[str, Predictions]) -> RoundView:
        src = self.config.source
        n = len(index)
        pred_eh, std, lower_eh = np.full(n, np.nan), np.full(n, np.nan), None
        if src is not None:
            p = sources[src]
            comps = [self.pool.compositions[i] for i in index]
            pred_eh = hull.e_above_hull_many(comps, p.mean[index])
            if p.std is not None:
                std = p.std[index].astype(float)
            if p.lower is not None:  # E_hull moves one for one with the candidate's E_f on the current hull
                lower_eh = pred_eh - (p.mean[index] - p.lower[index])
        est = None
        if self.config.strategy == "stable_per_cost":
            done = np.setdiff1d(np.arange(self.pool.n), index)
            pool = self.pool
            est = estimated_relax_s(pool.is_wall_time_s[index], pool.cost_group[index], pool.is_wall_time_s[done],
                                    self.relax_s[done], pool.cost_group[done])
        return RoundView(index=index, predicted_e_above_hull=pred_eh, predicted_std=std,
                         true_e_above_hull=self.true_e_hull[index], round=k, seed=self.config.seed, n_pool=self.pool.n,
                         estimated_relax_s=est, threshold=self.config.threshold, min_std=self.config.min_std,
                         predicted_lower_e_above_hull=lower_eh)

    def _expected_left(self, k: int, relaxed: list[int], ef: list[float], hull: ReferenceHull) -> float | None:
        src = self.config.source if self.config.source is not None else ("esnet" if "esnet" in self.pool.sources
                                                                          else None)
        if src is None or src not in self.pool.sources:
            return None
        remaining = np.setdiff1d(np.arange(self.pool.n), np.array(relaxed, int))
        if not len(remaining):
            return 0.0
        sources = self._sources(np.array(relaxed, int), np.array(ef, float))
        p = sources[src]
        eh = hull.e_above_hull_many([self.pool.compositions[i] for i in remaining], p.mean[remaining])
        return expected_stable(eh, None if p.std is None else p.std[remaining], self.config.threshold,
                               self.config.min_std)

    def _round_zero(self, hull: ReferenceHull) -> dict[str, Any]:
        pool, cfg = self.pool, self.config
        is_s = float(np.nansum(pool.is_wall_time_s)) if cfg.pays_is else 0.0
        # a source with its own cost (a potential's CPU seconds) is paid by the strategy that ranks by it
        screen_s = pool.sources[cfg.source].screening_cost_s if cfg.source is not None else 0.0
        rec: dict[str, Any] = {"round": 0, "chosen": [], "is_single_points_s": is_s,
                               "reference_cost_s": float(pool.reference_cost_s),
                               "cost_s": is_s + screen_s + float(pool.reference_cost_s), "relax_cost_s": 0.0,
                               "screening_s": screen_s}
        rec.update(self._status([], [], hull, rec["cost_s"]))
        rec["expected_stable_left"] = self._expected_left(0, [], [], hull)
        if cfg.source is not None:
            p = pool.sources[cfg.source]
            rec["predicted_e_above_hull"] = dict(zip(pool.ids.tolist(),
                                                     hull.e_above_hull_many(pool.compositions, p.mean).tolist()))
        return rec

    def _report_source(self) -> str | None:
        """The prediction source the campaign reports on: the strategy's, else ESNet's when the pool has it."""
        src = self.config.source if self.config.source is not None else "esnet"
        return src if src in self.pool.sources else None

    def _flagged(self) -> np.ndarray | None:
        src = self._report_source()
        return None if src is None else self.pool.sources[src].flagged

    def _prediction_report(self, rounds: list[dict[str, Any]], relaxed: np.ndarray) -> dict[str, Any]:
        """What the summary says about the predictions: the checks of the file (`prediction_checks`: counts of
        missing, NaN and unknown ids; lines in `warnings`) and, with a domain column, `needs_dft`: the
        candidates whose prediction is flagged outside the model's domain, how many of them the predictions
        alone call stable (round 0, on the reference hull) and which were never relaxed."""
        src = self._report_source()
        if src is None:
            return {}
        p = self.pool.sources[src]
        warnings = prediction_warnings(p)
        if self.config.strategy == "stable_per_cost" and not p.has_std:
            warnings.append(f"{p.source}: no std: stable_per_cost takes P(stable) with sigma = --min-std "
                            f"{self.config.min_std} eV/atom for every candidate")
        out: dict[str, Any] = {"prediction_checks": {"source": src, **dict(p.audit)}, "warnings": warnings}
        flagged = p.flagged
        if flagged is not None:
            eh0 = rounds[0].get("predicted_e_above_hull") if rounds else None
            if eh0 and self.config.source == src:
                eh = np.array([_num(eh0.get(str(i))) for i in self.pool.ids], float)
            else:
                eh = ReferenceHull(self.pool.references).e_above_hull_many(self.pool.compositions, p.mean)
            stable0 = stable_mask(eh, self.config.threshold, tol=HULL_TOL)
            left = np.setdiff1d(np.flatnonzero(flagged), relaxed)
            out["needs_dft"] = {
                "rule": "a candidate whose prediction is flagged outside the model's domain (a non-empty domain "
                        "column) counts as stable only once DFT has relaxed it",
                "n_flagged": int(flagged.sum()), "n_flagged_predicted_stable": int((flagged & stable0).sum()),
                "n_predicted_stable": int(stable0.sum()), "n_flagged_not_relaxed": int(len(left)),
                "flagged_not_relaxed": [str(self.pool.ids[i]) for i in left[:20]]}
        return out

    def _status(self, relaxed: list[int], ef: list[float], hull: ReferenceHull, cost: float) -> dict[str, Any]:
        idx = np.array(relaxed, int)
        known_eh = hull.e_above_hull_many([self.pool.compositions[i] for i in idx], np.array(ef, float))
        out = {"n_relaxed": int(len(idx)), "cumulative_cost_s": float(cost),
               "cumulative_cost_relaxations": float(cost / self.unit_s) if self._has_unit() else None,
               "n_stable_known": int(stable_mask(known_eh, self.config.threshold, tol=HULL_TOL).sum())}
        if self.pool.is_replay:
            found = int(self.true_stable[idx].sum()) if len(idx) else 0
            out["n_stable_found"] = found
            out["recall"] = found / self.n_true_stable if self.n_true_stable else None
        return out

    def _fit_budget(self, batch: np.ndarray, cost: float) -> np.ndarray:
        limit = self._budget_s()
        if limit is None:
            return batch
        keep = []
        for i in batch:
            c = self.relax_s[i]
            if not math.isfinite(c):  # live: not known before it runs; the budget is checked after
                keep.append(i)
                continue
            if cost + c > limit + 1e-9:
                break
            cost += c
            keep.append(i)
        return np.array(keep, int)

    def _budget_s(self) -> float | None:
        limits = [b for b in (self.config.budget_s,
                              None if self.config.budget_relaxations is None or not self._has_unit()
                              else self.config.budget_relaxations * self.unit_s) if b is not None]
        return min(limits) if limits else None

    def _stop_reason(self, rounds: list[dict[str, Any]], cost: float, relaxed: list[int]) -> str | None:
        cfg, last = self.config, rounds[-1]
        if len(relaxed) >= self.pool.n:
            return "exhausted"
        if cfg.target_recall is not None and last.get("recall") is not None \
                and last["recall"] >= cfg.target_recall - 1e-12:
            return "target_recall"
        limit = self._budget_s()
        if limit is not None and cost >= limit - 1e-9:
            return "budget"
        if cfg.stop_expected_stable is not None and last.get("expected_stable_left") is not None \
                and last["expected_stable_left"] < cfg.stop_expected_stable:
            return "expected_stable"
        if cfg.max_rounds is not None and len(rounds) - 1 >= cfg.max_rounds:
            return "max_rounds"
        return None

    def _record(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec = json.loads(json_text(rec))  # what a resumed campaign reads back: the same numbers
        if self.out is not None:
            write_text(self._round_path(rec["round"]), json_text(rec))
        return rec

    # ----- result ----------------------------------------------------------------------------
    def _finish(self, rounds: list[dict[str, Any]], relaxed: list[int], ef: list[float], hull: ReferenceHull,
                stop: str) -> CampaignResult:
        pool, cfg = self.pool, self.config
        base = rounds[0]["cost_s"]
        steps = [c for r in rounds[1:] for c in r["chosen"]]
        cum = base + np.cumsum([c["relax_wall_time_s"] for c in steps]) if steps else np.zeros(0)
        cost_curve = np.concatenate([[base], cum])
        found = np.concatenate([[0], np.cumsum([bool(c["truly_stable"]) for c in steps])]) if pool.is_replay \
            else None
        relax_all = float(np.sum(self.relax_s)) if np.all(np.isfinite(self.relax_s)) else None
        idx = np.array(relaxed, int)
        known_eh = hull.e_above_hull_many([pool.compositions[i] for i in idx], np.array(ef, float))
        discovered = [{"id": str(pool.ids[i]), "formula": str(pool.formulas[i]),
                       "formation_energy_per_atom": float(f), "e_above_hull": float(e),
                       "round": next(r["round"] for r in rounds[1:] if any(c["index"] == i for c in r["chosen"])),
                       **({"truly_stable": bool(self.true_stable[i])} if pool.is_replay else {})}
                      for i, f, e in zip(idx, ef, known_eh) if e <= cfg.threshold + HULL_TOL]
        summary: dict[str, Any] = {
            "strategy": cfg.strategy, "config": cfg.to_dict(), "stop": stop, "finished": stop != "max_rounds",
            "n_rounds": len(rounds) - 1, "n_candidates": pool.n, "n_relaxed": int(len(idx)),
            "is_single_points_s": rounds[0]["is_single_points_s"], "reference_cost_s": rounds[0]["reference_cost_s"],
            "screening_s": rounds[0].get("screening_s", 0.0),
            "relaxations_s": float(sum(c["relax_wall_time_s"] for c in steps)),
            "total_cost_s": float(cost_curve[-1]), "relax_all_s": relax_all,
            "relaxation_equivalent_s": self.unit_s,
            "n_true_stable": self.n_true_stable, "n_stable_found": int(found[-1]) if found is not None else None,
            "n_discovered": len(discovered), "discovered": discovered}
        summary.update(self._prediction_report(rounds, idx))
        summary["total_cost_relaxations"] = summary["total_cost_s"] / self.unit_s if self._has_unit() else None
        summary["saving"] = 1 - summary["total_cost_s"] / relax_all if relax_all else None
        if found is not None and self.n_true_stable:
            summary["cost_to_recall"] = {str(q): cost_at_recall(cost_curve, found, self.n_true_stable, q,
                                                                 relax_all_s=relax_all, unit_s=self.unit_s)
                                         for q in RECALL_LEVELS}
        traj = {"cost_s": cost_curve, "ids": np.array([c["id"] for c in steps], str)}
        if found is not None:
            traj["n_stable_found"] = found
        if self.out is not None:
            write_text(self.out / "result.json", json_text(summary))
            write_discovered(discovered, self.out / "discovered_stable.csv")
        return CampaignResult(cfg, rounds, summary, self.out, traj)


def write_discovered(discovered: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The discovered stable materials (id, formula, DFT E_f and E_hull in eV/atom, round) as CSV, atomically."""
    import csv
    import io

    cols = ["id", "formula", "formation_energy_per_atom", "e_above_hull", "round", "truly_stable"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for d in discovered:
        w.writerow([d.get("id"), d.get("formula"), f"{d['formation_energy_per_atom']:.6f}",
                    f"{d['e_above_hull']:.6f}", d.get("round"), d.get("truly_stable", "")])
    return write_text(path, buf.getvalue())


def run_campaign(pool: Pool, config: CampaignConfig, out_dir: str | Path | None = None, *,
                 relaxer: Relaxer = replay_relaxer, refitter: Refitter | None = None,
                 progress: Callable[[str], None] | None = None) -> CampaignResult:
    """Run or resume one campaign (see the module docstring); `out_dir` None keeps it in memory."""
    return Campaign(pool, config, out_dir, relaxer=relaxer, refitter=refitter, progress=progress).run()


#: the files a campaign writes in its directory (besides rounds/round_NNNN.json): nothing else is ever removed
OWN_FILES = (STATE_FILE, "result.json", "discovered_stable.csv")
_OWN_ROUND = re.compile(r"^round_\d{4,}\.json$")
#: the hidden directory beside a campaign where `--overwrite` runs the new campaign until it is complete
OVERWRITE_STAGING = ".{name}.overwrite"


def campaign_files(out_dir: str | Path) -> list[Path]:
    """The files a campaign wrote in `out_dir`: campaign.json, result.json, discovered_stable.csv and
    rounds/round_NNNN.json. Files a user put there (also inside rounds/) are not among them."""
    out = Path(out_dir)
    own = [out / name for name in OWN_FILES if (out / name).is_file()]
    rounds = out / ROUNDS_DIR
    if rounds.is_dir() and not rounds.is_symlink():
        own += sorted(p for p in rounds.iterdir() if _OWN_ROUND.match(p.name) and p.is_file() and not p.is_symlink())
    return own


def clear_campaign(out_dir: str | Path) -> None:
    """Remove a campaign's own files from `out_dir` (`campaign_files`); rounds/ only when that leaves it empty."""
    out = Path(out_dir)
    with exclusive(out / STATE_FILE, "campaign"):
        _remove_own(out)


def _remove_own(out: Path, keep: set[str] = frozenset()) -> None:
    for f in campaign_files(out):
        if f.relative_to(out).as_posix() not in keep:
            f.unlink(missing_ok=True)
    try:
        (out / ROUNDS_DIR).rmdir()  # only when empty: a user's files inside stay, and so does the folder
    except OSError:
        pass


def _promote(staging: Path, target: Path) -> None:
    """Move the complete campaign in `staging` onto `target`'s own files (each by an atomic rename), then
    remove `target`'s own files the new campaign did not write; other files in `target` are left alone."""
    import shutil

    new = campaign_files(staging)
    names = {f.relative_to(staging).as_posix() for f in new}
    (target / ROUNDS_DIR).mkdir(parents=True, exist_ok=True)
    for f in sorted(new, key=lambda f: f.name == STATE_FILE):  # the header last: it says which rounds belong
        os.replace(f, target / f.relative_to(staging))
    _remove_own(target, keep=names)
    shutil.rmtree(staging, ignore_errors=True)  # only what this overwrite wrote (a lock file, empty rounds/)


def run_strategies(pool: Pool, config: CampaignConfig, strategies: Sequence[str], out_dir: str | Path | None, *,
                   relaxer: Relaxer = replay_relaxer, refitter: Refitter | None = None,
                   progress: Callable[[str], None] | None = None,
                   overwrite: bool = False) -> dict[str, CampaignResult]:
    """One campaign per strategy (the same settings otherwise), each in `out_dir/<strategy>/`.

    A rerun continues the campaigns found there. `overwrite`: every campaign is first checked (its
    pool and settings, as a fresh start), then run from round 0 in a hidden staging directory beside
    it; only when it is complete do its files replace the old campaign's own files
    (`campaign_files`). A failure or a kill before that leaves the old campaign as it was, and files
    a user put into a campaign's folder (also inside rounds/) are never removed.
    """
    from dataclasses import replace

    configs = {s: replace(config, strategy=s) for s in strategies}
    for cfg in configs.values():  # everything checked before anything runs or is replaced
        Campaign(pool, cfg, None, relaxer=relaxer, refitter=refitter)
    results = {}
    for s, cfg in configs.items():
        sub = None if out_dir is None else Path(out_dir) / s
        if not overwrite or sub is None or not campaign_files(sub):
            results[s] = run_campaign(pool, cfg, sub, relaxer=relaxer, refitter=refitter, progress=progress)
            continue
        staging = sub.parent / OVERWRITE_STAGING.format(name=sub.name)
        with exclusive(sub / STATE_FILE, "campaign"):  # nobody resumes the old campaign meanwhile
            if staging.exists():  # a killed overwrite's leftovers: start the new campaign again
                _remove_own(staging)
            res = run_campaign(pool, cfg, staging, relaxer=relaxer, refitter=refitter, progress=progress)
            _promote(staging, sub)
        res.out_dir = sub
        results[s] = res
    return results
