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

`Domain.check(arrays)` gives one string per row: "" inside the domain, else the reasons
("; "-joined). The occupied-states range is widened by `margin` (relative), the ratio range by the
factor `ratio_factor`, before they are applied.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esnet_tf.atomic import write_text
from esnet_tf.errors import UserError
from esnet_tf.isdos import PAPER_GRID, EnergyGrid

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
    return np.trapezoid(total[:, occ], e[occ], axis=1) if hasattr(np, "trapezoid") else \
        np.trapz(total[:, occ], e[occ], axis=1)


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

    # ------------------------------------------------------------ fit / io

    @classmethod
    def fit(cls, arrays: dict, codes: Iterable[str], *, grid: EnergyGrid = PAPER_GRID,
            dft_settings: dict | None = None,
            margin: float = DEFAULT_MARGIN) -> "Domain":
        """The domain of training `arrays` (dos_up, dos_down, composition) whose inputs came from `codes`."""
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
                   n_examples=int(len(occ)))

    def to_dict(self) -> dict:
        return {"codes": list(self.codes), "grid": dict(self.grid), "elements": list(self.elements),
                "occupied_states_per_atom": list(self.occupied_states_per_atom),
                "occupied_states_ratio": list(self.occupied_states_ratio),
                "element_occupied_states": dict(self.element_occupied_states),
                "dft_settings": dict(self.dft_settings), "margin": self.margin,
                "ratio_factor": self.ratio_factor, "n_examples": self.n_examples,
                "units": {"occupied_states_per_atom": "states/atom (E - E_F <= 0, 9 channels, both spins)",
                          "occupied_states_ratio": "observed / fitted for the composition"}}

    @classmethod
    def from_dict(cls, d: dict) -> "Domain":
        return cls(codes=tuple(d["codes"]), grid=dict(d["grid"]), elements=tuple(d["elements"]),
                   occupied_states_per_atom=tuple(d["occupied_states_per_atom"]),
                   occupied_states_ratio=tuple(d["occupied_states_ratio"]),
                   element_occupied_states=dict(d.get("element_occupied_states", {})),
                   dft_settings=dict(d.get("dft_settings", {})), margin=float(d.get("margin", DEFAULT_MARGIN)),
                   ratio_factor=float(d.get("ratio_factor", DEFAULT_RATIO_FACTOR)),
                   n_examples=int(d.get("n_examples", 0)))

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

    def check(self, arrays: dict) -> np.ndarray:
        """One reason string per row ('' = inside the domain) for `arrays` (dos_up, dos_down,
        composition, optionally `code` per row; '' code = unknown, not checked)."""
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
            out.append("; ".join(reasons))
        return np.array(out, dtype=object)


def find_domain(path: str | Path) -> Domain | None:
    """The `domain.json` of a shipped model at `path` (its folder, a file or version dir inside it)."""
    path = Path(path)
    for d in (path, path.parent):
        if d.is_dir() and (d / "domain.json").is_file():
            return Domain.load(d / "domain.json")
    return None
