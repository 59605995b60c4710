"""A unit of DFT work: one structure, its settings and what to compute."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

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
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
