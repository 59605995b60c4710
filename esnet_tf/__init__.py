"""esnet-tf: ESNet on the DOS of unrelaxed structures (IS-DOS).

    from esnet_tf import ESNetConfig, build_esnet, featurize
    model = esnet_tf.load_model("ESNet-GPAWDemo-2026.12-EFormPerAtom")   # shipped models: list_models()
    table = model.predict(["vasprun.xml.gz", example])   # eV/atom, with std and a domain column
    esnet_tf.predict_formation_energy(name_or_model, inputs)   # the same in one call

TensorFlow is imported only when a model-related name is first used.
"""
from __future__ import annotations

from esnet_tf.isdos import ORBITALS, PAPER_GRID, DOSInputError, EnergyGrid, ISDOSExample

__version__ = "0.1.0"

_LAZY = {
    "featurize": "esnet_tf.featurize",
    "ESNetConfig": "esnet_tf.model",
    "build_esnet": "esnet_tf.model",
    "load_model": "esnet_tf.pretrained",
    "predict_formation_energy": "esnet_tf.pretrained",
    "list_models": "esnet_tf.pretrained",
}

__all__ = ["ORBITALS", "PAPER_GRID", "DOSInputError", "EnergyGrid", "ISDOSExample", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esnet_tf' has no attribute {name!r}")
