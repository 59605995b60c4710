"""The training domain of a model, and a per-row check of inputs against it.

A model trained on one DFT code's IS-DOS extrapolates silently elsewhere: the projections that
build IS-DOS hold different fractions of the occupied states in different codes (VASP's
LORBIT=11 spheres 25-78 % of the valence electrons, GPAW's projections 89-128 %), so the scale
of the input is the first thing to check. A `Domain` (stored as `domain.json` beside a shipped
model) records:

- `codes`: the DFT codes of the training inputs (first word of `ISDOSExample.code`, e.g. "GPAW")
  and `dft_settings` (from the dataset's provenance, for the README);
- `grid`: the energy grid (`EnergyGrid.to_dict()`);
- `elements`: the elements present in training compositions;
- `occupied_states_per_atom`: range of the integrated occupied IS-DOS (E <= E_F, all 9 channels,
  both spins; states/atom) over the training inputs;
- `occupied_states_ratio`: range of that integral divided by the value the training data predict
  for the composition (a per-element least-squares fit, `element_occupied_states`), which
  separates "a different code's scale" from "an element with many electrons".

- `occupied_centre`: range of the occupied IS-DOS's centre (mean E - E_F of the occupied states, eV);
- `energy_ranges`: for a model with energy inputs (e.g. `is_formation_energy_per_atom`), the
  training range of each (eV/atom): a strongly compressed or otherwise implausible initial
  structure has an IS energy far above it;
- `sigma_threshold`: the ensemble σ (eV/atom) above which a prediction is flagged, calibrated on
  held-out rows (`sigma_rule` says how), or None.

`Domain.check(arrays, std)` gives one string per row: "" inside the domain, else the reasons
("; "-joined). The occupied-states range is widened by `margin` (relative), the ratio range by the
factor `ratio_factor`, the centre and energy ranges by `margin` times their width, before they are
applied. `Domain.rule()` states the whole rule in words (written into domain.json as `rule`).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esnet_tf.atomic import write_text
from esnet_tf.errors import UserError
from esnet_tf.isdos import ENERGY_INPUTS, PAPER_GRID, EnergyGrid

#: relative widening of the training ranges before a row is called outside them
DEFAULT_MARGIN = 0.1
#: factor by which the occupied-states ratio range is widened (lo / f, hi * f): the per-element fit is
#: loose for elements seen in few training rows (Y, Ca of the demo data reach 1.8 on held-out rows)
DEFAULT_RATIO_FACTOR = 1.5


def _symbols() -> list[str]:
    from pymatgen.core.periodic_table import Element

    return [Element.from_Z(z).symbol for z in range(1, 119)]


def code_family(code: str) -> str:
    """'GPAW 26.7.0' -> 'GPAW', 'VASP (Materials Project)' -> 'VASP'; '' when unknown."""
    return str(code or "").split(" ")[0].strip()


def occupied_states(dos_up: np.ndarray, dos_down: np.ndarray, grid: EnergyGrid = PAPER_GRID) -> np.ndarray:
    """Integrated occupied IS-DOS per atom (states/atom): sum over channels and spins, E - E_F <= 0.

    `dos_up`, `dos_down`: (N, n_points, 9) states/eV/atom on `grid`. Returns float64 (N,).
    """
    e = grid.energies()
    occ = e <= 0.0
    total = (np.asarray(dos_up, np.float64) + np.asarray(dos_down, np.float64)).sum(axis=-1)
    return _integrate(total[:, occ], e[occ])


def _integrate(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.trapezoid(y, x, axis=1) if hasattr(np, "trapezoid") else np.trapz(y, x, axis=1)


def occupied_centre(dos_up: np.ndarray, dos_down: np.ndarray, grid: EnergyGrid = PAPER_GRID) -> np.ndarray:
    """Centre of the occupied IS-DOS (eV): the states-weighted mean of E - E_F over E - E_F <= 0,
    all channels and spins. float64 (N,); NaN for a row without occupied states."""
    e = grid.energies()
    occ = e <= 0.0
    total = (np.asarray(dos_up, np.float64) + np.asarray(dos_down, np.float64)).sum(axis=-1)[:, occ]
    weight = _integrate(total, e[occ])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, _integrate(total * e[occ], e[occ]) / weight, np.nan)


def _range_of(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if len(values) else (float("nan"), float("nan"))


@dataclass(frozen=True)
class Domain:
    """What a model was trained on (see module doc); `check` flags rows outside it."""

    codes: tuple[str, ...]
    grid: dict
    elements: tuple[str, ...]
    occupied_states_per_atom: tuple[float, float]
    occupied_states_ratio: tuple[float, float]
    element_occupied_states: dict = field(default_factory=dict)  #: element -> fitted states/atom
    dft_settings: dict = field(default_factory=dict)
    margin: float = DEFAULT_MARGIN
    ratio_factor: float = DEFAULT_RATIO_FACTOR
    n_examples: int = 0
    occupied_centre: tuple[float, float] | None = None  #: eV (E - E_F), training range; None: not checked
    energy_ranges: dict = field(default_factory=dict)  #: energy input -> (lo, hi) eV/atom of the training rows
    sigma_threshold: float | None = None  #: eV/atom; σ above it is flagged (None: not checked)
    sigma_rule: str = ""  #: how sigma_threshold was calibrated

    # ------------------------------------------------------------ fit / io

    @classmethod
    def fit(cls, arrays: dict, codes: Iterable[str], *, grid: EnergyGrid = PAPER_GRID,
            dft_settings: dict | None = None, margin: float = DEFAULT_MARGIN,
            energy_inputs: Iterable[str] = ()) -> "Domain":
        """The domain of training `arrays` (dos_up, dos_down, composition, and each of `energy_inputs`,
        eV/atom) whose inputs came from `codes`. `with_sigma_threshold` adds the σ rule."""
        comp = np.asarray(arrays["composition"], np.float64)
        occ = occupied_states(arrays["dos_up"], arrays["dos_down"], grid)
        present = comp.sum(axis=0) > 0
        symbols = _symbols()
        # occupied states per atom ~ composition . per-element states (least squares over the rows)
        coef, *_ = np.linalg.lstsq(comp[:, present], occ, rcond=None)
        per_element = {symbols[z]: float(c) for z, c in zip(np.flatnonzero(present), coef)}
        ratio = occ / (comp[:, present] @ coef)
        return cls(codes=tuple(sorted({code_family(c) for c in codes if code_family(c)})), grid=grid.to_dict(),
                   elements=tuple(symbols[z] for z in np.flatnonzero(present)),
                   occupied_states_per_atom=(float(occ.min()), float(occ.max())),
                   occupied_states_ratio=(float(ratio.min()), float(ratio.max())),
                   element_occupied_states=per_element, dft_settings=dict(dft_settings or {}), margin=margin,
                   n_examples=int(len(occ)),
                   occupied_centre=_range_of(occupied_centre(arrays["dos_up"], arrays["dos_down"], grid)),
                   energy_ranges={e: _range_of(arrays[e]) for e in energy_inputs})

    def with_sigma_threshold(self, std: np.ndarray, quantile: float = 0.9, rows: str = "held-out rows") -> "Domain":
        """A copy whose σ rule flags σ above the `quantile` of `std` (eV/atom), the ensemble's σ on
        `rows` never used for training or early stopping."""
        import dataclasses

        std = np.asarray(std, np.float64).reshape(-1)
        if not len(std) or not np.all(np.isfinite(std)):
            raise ValueError("std must be a non-empty array of finite sigmas")
        value = float(np.quantile(std, quantile))
        return dataclasses.replace(self, sigma_threshold=value, sigma_rule=(
            f"the {quantile:.0%} quantile of the ensemble σ on the {len(std)} {rows}"))

    def to_dict(self) -> dict:
        return {"codes": list(self.codes), "grid": dict(self.grid), "elements": list(self.elements),
                "occupied_states_per_atom": list(self.occupied_states_per_atom),
                "occupied_states_ratio": list(self.occupied_states_ratio),
                "element_occupied_states": dict(self.element_occupied_states),
                "dft_settings": dict(self.dft_settings), "margin": self.margin,
                "ratio_factor": self.ratio_factor, "n_examples": self.n_examples,
                "occupied_centre": None if self.occupied_centre is None else list(self.occupied_centre),
                "energy_ranges": {k: list(v) for k, v in self.energy_ranges.items()},
                "inputs": ["dos_up", "dos_down", "composition", *self.energy_ranges],
                "sigma_threshold": self.sigma_threshold, "sigma_rule": self.sigma_rule, "rule": self.rule(),
                "units": {"occupied_states_per_atom": "states/atom (E - E_F <= 0, 9 channels, both spins)",
                          "occupied_states_ratio": "observed / fitted for the composition",
                          "occupied_centre": "eV (E - E_F)", "energy_ranges": "eV/atom",
                          "sigma_threshold": "eV/atom"}}

    @classmethod
    def from_dict(cls, d: dict) -> "Domain":
        return cls(codes=tuple(d["codes"]), grid=dict(d["grid"]), elements=tuple(d["elements"]),
                   occupied_states_per_atom=tuple(d["occupied_states_per_atom"]),
                   occupied_states_ratio=tuple(d["occupied_states_ratio"]),
                   element_occupied_states=dict(d.get("element_occupied_states", {})),
                   dft_settings=dict(d.get("dft_settings", {})), margin=float(d.get("margin", DEFAULT_MARGIN)),
                   ratio_factor=float(d.get("ratio_factor", DEFAULT_RATIO_FACTOR)),
                   n_examples=int(d.get("n_examples", 0)),
                   occupied_centre=None if d.get("occupied_centre") is None else tuple(d["occupied_centre"]),
                   energy_ranges={str(k): (float(v[0]), float(v[1])) for k, v in d.get("energy_ranges", {}).items()
                                  if k in ENERGY_INPUTS},
                   sigma_threshold=None if d.get("sigma_threshold") is None else float(d["sigma_threshold"]),
                   sigma_rule=str(d.get("sigma_rule", "")))

    def save(self, path: str | Path) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Domain":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a readable domain record ({exc}); re-ship the model with "
                            "scripts/train_pretrained.py") from None

    # ------------------------------------------------------------ check

    def _widen(self, lo: float, hi: float) -> tuple[float, float]:
        return lo * (1 - self.margin), hi * (1 + self.margin)

    def _widen_abs(self, lo: float, hi: float) -> tuple[float, float]:
        pad = self.margin * (hi - lo)
        return lo - pad, hi + pad

    def rule(self) -> str:
        """The flag rule in words: a row's `domain` is non-empty when any of these holds."""
        lo, hi = self._widen(*self.occupied_states_per_atom)
        parts = [f"the DFT code is not {'/'.join(self.codes) or 'any recorded'}" if self.codes else "",
                 "an element is not among the training elements",
                 f"the occupied IS-DOS is outside {lo:.2f}-{hi:.2f} states/atom (training range ±{self.margin:.0%})",
                 f"its ratio to the per-element fit is outside {self.occupied_states_ratio[0] / self.ratio_factor:.2f}-"
                 f"{self.occupied_states_ratio[1] * self.ratio_factor:.2f} (training range ×/÷ {self.ratio_factor:g})"]
        if self.occupied_centre is not None:
            clo, chi = self._widen_abs(*self.occupied_centre)
            parts.append(f"the occupied IS-DOS centre is outside {clo:.2f} to {chi:.2f} eV (training range "
                         f"± {self.margin:.0%} of its width)")
        for name, (elo, ehi) in self.energy_ranges.items():
            wlo, whi = self._widen_abs(elo, ehi)
            parts.append(f"{name} is outside {wlo:.2f} to {whi:.2f} eV/atom (training range {elo:.2f} to {ehi:.2f} "
                         f"± {self.margin:.0%} of its width)")
        if self.sigma_threshold is not None:
            parts.append(f"the ensemble σ exceeds {self.sigma_threshold:.3f} eV/atom ({self.sigma_rule})")
        return "flagged when " + "; or ".join(p for p in parts if p) + \
            f"; inputs on another grid than {self.grid.get('n_points')} points are all flagged"

    def check(self, arrays: dict, std: np.ndarray | None = None) -> np.ndarray:
        """One reason string per row ('' = inside the domain) for `arrays` (dos_up, dos_down,
        composition, the energy inputs of `energy_ranges` where present, optionally `code` per row;
        '' code = unknown, not checked) and the ensemble's σ `std` (eV/atom, (N,)) where given."""
        n = len(arrays["dos_up"])
        grid = EnergyGrid(**self.grid)
        if np.shape(arrays["dos_up"])[1] != grid.n_points:
            return np.array([f"energy grid of {np.shape(arrays['dos_up'])[1]} points, trained on "
                             f"{grid.n_points}"] * n, dtype=object)
        comp = np.asarray(arrays["composition"], np.float64)
        occ = occupied_states(arrays["dos_up"], arrays["dos_down"], grid)
        symbols = _symbols()
        known = set(self.elements)
        fitted = np.array([self.element_occupied_states.get(s, np.nan) for s in symbols])
        codes = arrays.get("code")
        lo, hi = self._widen(*self.occupied_states_per_atom)
        rlo, rhi = self.occupied_states_ratio[0] / self.ratio_factor, self.occupied_states_ratio[1] * self.ratio_factor
        centre = occupied_centre(arrays["dos_up"], arrays["dos_down"], grid) if self.occupied_centre else None
        clo, chi = self._widen_abs(*self.occupied_centre) if self.occupied_centre else (None, None)
        energies = {k: (np.asarray(arrays[k], np.float64).reshape(n, -1)[:, 0], self._widen_abs(*r))
                    for k, r in self.energy_ranges.items() if k in arrays}
        sigma = None if std is None or self.sigma_threshold is None else np.asarray(std, np.float64).reshape(-1)
        out = []
        for i in range(n):
            reasons = []
            code = code_family(codes[i]) if codes is not None else ""
            if code and self.codes and code not in self.codes:
                reasons.append(f"DFT code {code} (trained on {'/'.join(self.codes)} IS-DOS)")
            zs = np.flatnonzero(comp[i] > 0)
            unseen = [symbols[z] for z in zs if symbols[z] not in known]
            if unseen:
                reasons.append(f"element(s) {', '.join(unseen)} not in the training data")
            if not lo <= occ[i] <= hi:
                reasons.append(f"occupied states {occ[i]:.2f}/atom outside the accepted "
                               f"{lo:.2f}-{hi:.2f} (training {self.occupied_states_per_atom[0]:.2f}-"
                               f"{self.occupied_states_per_atom[1]:.2f})")
            if not unseen:
                expected = float(comp[i, zs] @ fitted[zs])
                ratio = occ[i] / expected if expected > 0 else np.nan
                if not rlo <= ratio <= rhi:
                    reasons.append(f"DOS scale {ratio:.2f} x the training data's for this composition "
                                   f"(accepted {rlo:.2f}-{rhi:.2f})")
            if centre is not None and not clo <= centre[i] <= chi:
                reasons.append(f"occupied IS-DOS centre {centre[i]:.2f} eV outside the accepted {clo:.2f} to {chi:.2f}")
            for name, (values, (elo, ehi)) in energies.items():
                if np.isfinite(values[i]) and not elo <= values[i] <= ehi:
                    reasons.append(f"{name} {values[i]:.2f} eV/atom outside the accepted {elo:.2f} to {ehi:.2f} "
                                   "(a strongly compressed or implausible initial structure?)")
            if sigma is not None and sigma[i] > self.sigma_threshold:
                reasons.append(f"ensemble σ {sigma[i]:.3f} eV/atom above the threshold {self.sigma_threshold:.3f}")
            out.append("; ".join(reasons))
        return np.array(out, dtype=object)


def find_domain(path: str | Path) -> Domain | None:
    """The `domain.json` of a shipped model at `path` (its folder, a file or version dir inside it)."""
    path = Path(path)
    for d in (path, path.parent):
        if d.is_dir() and (d / "domain.json").is_file():
            return Domain.load(d / "domain.json")
    return None
