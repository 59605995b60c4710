"""A unit of DFT work: one structure, its settings and what to compute."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from pymatgen.core import Structure

from esnet_tf.dft.settings import DFTSettings

if TYPE_CHECKING:
    from esnet_tf.uip import UIPConfig

RELAX_MODES = ("none", "eos", "optimizer")
#: `Task.relax_start` of a relaxation that starts from the unrelaxed structure (the default)
RELAX_START_IS = "is"


@dataclass
class Task:
    """One structure to compute.

    `relax`: "none" (single point on the unrelaxed structure only), "eos" (isotropic
    lattice scan, for cubic cells without internal degrees of freedom) or "optimizer"
    (ASE BFGS with a Frechet cell filter). `kind` is "crystal" or "molecule" (Gamma only).
    `relax_start` (optimizer relaxations only): "is", the relaxation starts from the unrelaxed
    structure; "<model>-<weights>" (e.g. "chgnet-0.3.0", `uip_relax_start`), it starts from that
    universal potential's relaxation of it (`engine.uip_start`). The IS single point and IS-DOS stay on
    the unrelaxed structure and the label stays DFT's either way; the start is part of the cache key.
    """

    id: str
    structure: Structure
    settings: DFTSettings = field(default_factory=DFTSettings)
    relax: str = "none"
    kind: str = "crystal"
    prototype: str = ""
    timeout: float = 1800.0  # seconds of wall time allowed for the whole task
    relax_start: str = RELAX_START_IS

    def __post_init__(self) -> None:
        if self.relax not in RELAX_MODES:
            raise ValueError(f"task {self.id}: relax must be one of {RELAX_MODES}, got {self.relax!r}")
        if self.relax_start != RELAX_START_IS:
            relax_start_config(self.relax_start)  # ValueError for an unknown start
            if self.relax != "optimizer":
                raise ValueError(f"task {self.id}: relax_start {self.relax_start!r} needs relax 'optimizer' "
                                 f"(got {self.relax!r}); EOS scans and single points start from the IS")

    def to_dict(self) -> dict:
        return {"id": self.id, "structure": self.structure.as_dict(),
                "settings": self.settings.to_dict(), "relax": self.relax, "kind": self.kind,
                "prototype": self.prototype, "timeout": self.timeout, "relax_start": self.relax_start}

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(id=d["id"], structure=Structure.from_dict(d["structure"]),
                   settings=DFTSettings.from_dict(d["settings"]), relax=d["relax"],
                   kind=d.get("kind", "crystal"), prototype=d.get("prototype", ""),
                   timeout=d.get("timeout", 1800.0), relax_start=d.get("relax_start", RELAX_START_IS))


def relax_start_config(relax_start: str) -> UIPConfig | None:
    """The `esnet_tf.uip.UIPConfig` of a universal-potential start ("chgnet-0.3.0": CHGNet, weights
    0.3.0, `UIPConfig`'s default relaxation settings); None for "is". ValueError for anything else.
    Imports no potential (torch and chgnet load only in `engine.uip_start`)."""
    if relax_start == RELAX_START_IS:
        return None
    from esnet_tf.uip import MODELS, UIPConfig

    model, _, version = str(relax_start).partition("-")
    if model not in MODELS or version not in MODELS[model][1]:
        known = [RELAX_START_IS] + [f"{m}-{v}" for m, (_, vs) in MODELS.items() for v in vs]
        raise ValueError(f"relax_start {relax_start!r} unknown; choose one of {', '.join(known)}")
    return UIPConfig(model=model, model_version=version)


def uip_relax_start(model: str = "chgnet", model_version: str | None = None) -> str:
    """`Task.relax_start` of a start from `model`'s relaxation (weights `model_version`, default
    the model's in `UIPConfig`: "chgnet-0.3.0", "sevennet-7net-0")."""
    from esnet_tf.uip import UIPConfig

    start = f"{model}-{model_version or UIPConfig(model=model).model_version}"
    relax_start_config(start)
    return start


def with_relax_start(task: Task, relax_start: str) -> Task:
    """`task` with `relax_start` when it is an optimizer relaxation; any other task unchanged (EOS scans
    and single points always start from the IS)."""
    from dataclasses import replace

    return replace(task, relax_start=relax_start) if task.relax == "optimizer" else task


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
        # `+ 0.0` turns -0.0 into 0.0: a lattice entry of -5e-16 on one CPU and 0.0 on another is one key
        "lattice": [[round(x, 6) + 0.0 for x in row] for row in s.lattice.matrix.tolist()],
        "species": [sp.symbol for sp in s.species],
        "frac": [[round(x % 1.0, 6) % 1.0 + 0.0 for x in site.frac_coords] for site in s],
        "settings": task.settings.key(), "relax": task.relax, "kind": task.kind,
    }
    if task.relax == "eos":
        payload["eos_revision"] = EOS_REVISION
    if task.relax == "optimizer" and OPTIMIZER != FIRST_OPTIMIZER:
        payload["optimizer"] = asdict(OPTIMIZER)
    if task.relax_start != RELAX_START_IS:  # absent for the IS start: the keys of every earlier result hold
        payload["relax_start"] = task.relax_start
        payload["relax_start_settings"] = relax_start_config(task.relax_start).key()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
