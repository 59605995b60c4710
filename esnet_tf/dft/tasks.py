"""A unit of DFT work: one structure, its settings and what to compute."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from pymatgen.core import Structure

from esnet_tf.dft.settings import DFTSettings

RELAX_MODES = ("none", "eos", "optimizer")


@dataclass
class Task:
    """One structure to compute.

    `relax`: "none" (single point on the unrelaxed structure only), "eos" (isotropic
    lattice scan, for cubic cells without internal degrees of freedom) or "optimizer"
    (ASE BFGS with a Frechet cell filter). `kind` is "crystal" or "molecule" (Gamma only).
    """

    id: str
    structure: Structure
    settings: DFTSettings = field(default_factory=DFTSettings)
    relax: str = "none"
    kind: str = "crystal"
    prototype: str = ""
    timeout: float = 1800.0  # seconds of wall time allowed for the whole task

    def __post_init__(self) -> None:
        if self.relax not in RELAX_MODES:
            raise ValueError(f"task {self.id}: relax must be one of {RELAX_MODES}, got {self.relax!r}")

    def to_dict(self) -> dict:
        return {"id": self.id, "structure": self.structure.as_dict(),
                "settings": self.settings.to_dict(), "relax": self.relax, "kind": self.kind,
                "prototype": self.prototype, "timeout": self.timeout}

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(id=d["id"], structure=Structure.from_dict(d["structure"]),
                   settings=DFTSettings.from_dict(d["settings"]), relax=d["relax"],
                   kind=d.get("kind", "crystal"), prototype=d.get("prototype", ""),
                   timeout=d.get("timeout", 1800.0))


#: Bumped when the EOS relaxation changes behaviour, so that cached results of the old one are
#: not reused. 2: the k-point mesh of the initial cell is held through the scan, and an
#: unbracketed minimum is chased by extrapolation (1-3 steps) rather than single steps.
EOS_REVISION = 2


@dataclass(frozen=True)
class OptimizerSettings:
    """What `engine.relax_optimizer` does after its EOS scan (part of the cache key, see `task_hash`).

    `fmax`: BFGS force and cell-filter threshold, eV/Å. 0.02, not 0.05: at the EOS vertex wurtzite
    ZnO with the ideal u = 3/8 and c/a already has fmax 0.047, so 0.05 would stop BFGS before it
    relaxes anything beyond the volume. `steps`: step cap; a relaxation that hits it is kept and
    flagged (`relax_converged` False). `max_stages`: BFGS stages with a recalibrated stress
    correction. `pulay_fd_step`: relative lattice step of the finite difference that calibrates
    the stress (`engine.pulay_correction`). `pulay_drift_tol`: eV/atom; a recalibrated correction
    whose change would move the energy by more than this starts another stage (the finite
    difference is noisy at the meV level, so not tighter). `volume_range`: BFGS stops (flagged not
    converged) when the volume leaves this range of the scan vertex's.
    """

    fmax: float = 0.02
    steps: int = 60
    max_stages: int = 2
    pulay_fd_step: float = 0.01
    pulay_drift_tol: float = 0.002
    volume_range: tuple[float, float] = (0.75, 1.33)


#: the settings `esnet dft --relax optimizer` uses
OPTIMIZER = OptimizerSettings()
#: the settings of the first optimizer results (the demo data's). The cache key carries the optimizer
#: settings only when they differ from these, so that changing them recomputes instead of silently
#: reusing results of other settings, while the results computed before the key had them stay valid.
FIRST_OPTIMIZER = OptimizerSettings(fmax=0.02, steps=60, max_stages=2, pulay_fd_step=0.01, pulay_drift_tol=0.002,
                                    volume_range=(0.75, 1.33))


def task_hash(task: Task) -> str:
    """Hash of structure + settings + what is computed (the cache key), 16 hex digits."""
    s = task.structure
    payload = {
        "lattice": [[round(x, 6) for x in row] for row in s.lattice.matrix.tolist()],
        "species": [sp.symbol for sp in s.species],
        "frac": [[round(x % 1.0, 6) % 1.0 for x in site.frac_coords] for site in s],
        "settings": task.settings.key(), "relax": task.relax, "kind": task.kind,
    }
    if task.relax == "eos":
        payload["eos_revision"] = EOS_REVISION
    if task.relax == "optimizer" and OPTIMIZER != FIRST_OPTIMIZER:
        payload["optimizer"] = asdict(OPTIMIZER)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
