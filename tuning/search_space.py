"""The ESNet search space as data: a JSON file a user edits without touching code.

    {"base": "small",                       # ESNetConfig giving every field not listed
     "hyperparameters": {
        "stem_kernel": {"values": [7, 11, 15, 20]},           # a choice
        "n_stages": {"min": 2, "max": 4},                     # an integer range
        "learning_rate": {"min": 3e-4, "max": 3e-3, "sampling": "log"},  # a float range
        "kernel_size": 3}}                                    # a fixed value

Names are ESNetConfig fields (stem_filters, stem_kernel, stem_stride, pool_size,
blocks_per_stage, kernel_size, attention_ratio, spatial_kernel, merge_filters, merge_kernel,
composition_units, dropout, bn_momentum, use_attention) or the derived names of `DERIVED`
(stage widths and dense head as a few numbers, plus the training choices learning_rate and
loss). `tuning/search_space.json` is the default space; `SearchSpace.sample(hp)` turns one
KerasTuner `HyperParameters` draw into an `ESNetConfig` and training settings.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from esnet_tf.model import ESNetConfig
from esnet_tf.model import LOSSES

DEFAULT_PATH = Path(__file__).with_name("search_space.json")

#: names in the space that are not ESNetConfig fields, and what they mean
DERIVED: dict[str, str] = {
    "n_stages": "number of residual stages (length of stage_widths)",
    "first_width": "channels of the first stage",
    "width_growth": "ratio of consecutive stage widths: width_i = round(first_width * width_growth**i)",
    "head_layers": "number of dense head layers before the output",
    "head_width": "units of the first dense head layer; each next layer halves (at least 4)",
    "learning_rate": "Adam learning rate",
    "loss": f"training loss on eV/atom, one of {', '.join(LOSSES)}",
}
#: ESNetConfig fields that are not searchable (the input contract, or replaced by DERIVED names)
NOT_SEARCHABLE = ("n_points", "n_orbitals", "n_elements", "name", "stage_widths", "head_units")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ESNetConfig) if f.name not in NOT_SEARCHABLE)
#: hyperparameters that only matter with CBAM on (conditional on use_attention when it is searched)
ATTENTION_FIELDS = ("attention_ratio", "spatial_kernel")
SAMPLINGS = ("linear", "log", "reverse_log")


class SearchSpaceError(ValueError):
    """A search-space file or dict that cannot be used (the message names the source and entry)."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Hyperparameter entries (name -> fixed value or spec dict) over a base ESNetConfig."""

    hyperparameters: dict[str, Any]
    base: str = "small"
    source: str = "<dict>"

    def __post_init__(self) -> None:
        for name, spec in self.hyperparameters.items():
            _check_entry(self.source, name, spec)
        try:
            ESNetConfig.named(self.base)
        except ValueError as exc:
            raise SearchSpaceError(f"{self.source}: base: {exc}") from None
        self._check_corners()

    def input_names(self) -> tuple[str, ...]:
        """The model inputs every sampled config takes: the base config's (`esnet_tf.data.model_input_names`:
        the three IS-DOS inputs, then its named energy inputs, eV/atom); the space does not vary them."""
        from esnet_tf.data import model_input_names

        return model_input_names(ESNetConfig.named(self.base))

    # ------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "SearchSpace":
        """From the JSON structure {"base": ..., "hyperparameters": {...}} (keys starting with _ ignored)."""
        if not isinstance(d, dict) or not isinstance(d.get("hyperparameters"), dict):
            raise SearchSpaceError(f"{source}: expected an object with a 'hyperparameters' object")
        unknown = sorted(k for k in d if not k.startswith("_") and k not in ("base", "hyperparameters"))
        if unknown:
            raise SearchSpaceError(f"{source}: unknown top-level keys {unknown}; use 'base' and 'hyperparameters'")
        entries = {k: v for k, v in d["hyperparameters"].items() if not k.startswith("_")}
        return cls(entries, str(d.get("base", "small")), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SearchSpace":
        """Read a search-space JSON file (default: the packaged tuning/search_space.json)."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(f"{path}: search-space file not found")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SearchSpaceError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(d, str(path))

    def to_dict(self) -> dict:
        return {"base": self.base, "hyperparameters": copy.deepcopy(self.hyperparameters)}

    def digest(self) -> str:
        """Short hash of the space's content (a project remembers the space it was started with)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------ sampling
    def sample(self, hp) -> tuple[ESNetConfig, dict]:
        """(ESNetConfig, {'learning_rate', 'loss'}) for one `keras_tuner.HyperParameters` draw.

        Declares each entry in `hp` (so a first call defines the space); pure, no training.
        """
        base = ESNetConfig.named(self.base)
        get = _Getter(self.hyperparameters, hp)
        changes: dict[str, Any] = {}
        for name in CONFIG_FIELDS:
            if name in ATTENTION_FIELDS:
                continue
            value = get(name)
            if value is not None:
                changes[name] = value
        use_attention = changes.get("use_attention", base.use_attention)
        attention_searched = _is_choice_of_both(self.hyperparameters.get("use_attention"))
        if attention_searched:
            with hp.conditional_scope("use_attention", [True]):
                changes.update({n: v for n in ATTENTION_FIELDS if (v := get(n)) is not None})
        elif use_attention:
            changes.update({n: v for n in ATTENTION_FIELDS if (v := get(n)) is not None})

        n_stages, first, growth = get("n_stages"), get("first_width"), get("width_growth")
        if (n_stages, first, growth) == (None, None, None):
            widths = base.stage_widths
        else:
            n = int(n_stages if n_stages is not None else len(base.stage_widths))
            first = float(first if first is not None else base.stage_widths[0])
            if growth is None:
                w = base.stage_widths
                growth = (w[-1] / w[0]) ** (1 / (len(w) - 1)) if len(w) > 1 else 1.0
            widths = tuple(max(1, int(round(first * float(growth) ** i))) for i in range(n))
        changes["stage_widths"] = widths
        changes.setdefault("merge_filters", widths[-1])

        layers, head_width = get("head_layers"), get("head_width")
        if layers is None and head_width is None:
            head = base.head_units
        else:
            n = int(layers if layers is not None else len(base.head_units))
            top = int(head_width if head_width is not None else (base.head_units or (64,))[0])
            head = tuple(max(4, int(round(top / 2 ** i))) for i in range(n))
        changes["head_units"] = head

        for key in ("stem_filters", "stem_kernel", "stem_stride", "pool_size", "blocks_per_stage",
                    "kernel_size", "attention_ratio", "spatial_kernel", "merge_filters", "merge_kernel",
                    "composition_units"):
            if key in changes:
                changes[key] = int(changes[key])
        for key in ("dropout", "bn_momentum"):
            if key in changes:
                changes[key] = float(changes[key])
        if "use_attention" in changes:
            changes["use_attention"] = bool(changes["use_attention"])
        try:
            config = base.replace(name="tuned", **changes)
        except (ValueError, TypeError) as exc:
            raise SearchSpaceError(f"{self.source}: sampled an invalid ESNetConfig ({exc})") from None
        _check_lengths(config, self.source)

        lr = get("learning_rate")
        loss = get("loss")
        training = {"learning_rate": float(lr) if lr is not None else 1.5e-3,
                    "loss": str(loss) if loss is not None else "log_cosh"}
        return config, training

    def _check_corners(self) -> None:
        """Sample the all-lowest and all-highest corners (no TF model): catches impossible spaces early."""
        import keras_tuner

        for corner in (0, -1):
            hp = keras_tuner.HyperParameters()
            self.sample(hp)  # declares the space
            for p in hp.space:
                hp.values[p.name] = _corner(p, corner)
            self.sample(hp)


class _Getter:
    """Declare-and-read one entry in a HyperParameters object (None when not in the space)."""

    def __init__(self, entries: dict, hp) -> None:
        self.entries, self.hp = entries, hp

    def __call__(self, name: str):
        if name not in self.entries:
            return None
        spec, hp = self.entries[name], self.hp
        if not isinstance(spec, dict):
            return hp.Fixed(name, spec)
        if "values" in spec:
            values = list(spec["values"])
            if len(values) == 1:
                return hp.Fixed(name, values[0])
            if _is_choice_of_both(spec):  # KerasTuner's Choice would store 1/0
                return hp.Boolean(name, default=bool(spec.get("default", values[0])))
            return hp.Choice(name, values, default=spec.get("default"))
        lo, hi, step = spec["min"], spec["max"], spec.get("step")
        sampling = spec.get("sampling", "linear")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step if step else 1)):
            return hp.Int(name, lo, hi, step=step, sampling=sampling, default=spec.get("default"))
        return hp.Float(name, float(lo), float(hi), step=step, sampling=sampling, default=spec.get("default"))


def _corner(p, corner: int):
    from keras_tuner.engine.hyperparameters import Boolean, Choice, Fixed, Float, Int

    if isinstance(p, Boolean):
        return corner == 0
    if isinstance(p, Choice):
        return p.values[corner]
    if isinstance(p, (Int, Float)):
        return p.min_value if corner == 0 else p.max_value
    if isinstance(p, Fixed):
        return p.value
    return p.default


def _is_choice_of_both(spec) -> bool:
    """True for {"values": [true, false]} (either order)."""
    return (isinstance(spec, dict) and isinstance(spec.get("values"), list) and len(spec["values"]) == 2
            and all(isinstance(v, bool) for v in spec["values"]) and set(spec["values"]) == {True, False})


def _check_entry(source: str, name: str, spec) -> None:
    where = f"{source}: hyperparameter '{name}'"
    if name not in CONFIG_FIELDS and name not in DERIVED:
        hint = " (use n_stages, first_width, width_growth)" if name == "stage_widths" else \
            " (use head_layers, head_width)" if name == "head_units" else ""
        raise SearchSpaceError(f"{where}: unknown name{hint}; known: {', '.join(CONFIG_FIELDS + tuple(DERIVED))}")
    if not isinstance(spec, dict):
        if not isinstance(spec, (int, float, str, bool)):
            raise SearchSpaceError(f"{where}: a fixed value must be a number, string or boolean, got {spec!r}")
        values = [spec]
    elif "values" in spec:
        extra = set(spec) - {"values", "default"}
        values = spec["values"]
        if extra or not isinstance(values, list) or not values:
            raise SearchSpaceError(f"{where}: a choice is {{\"values\": [non-empty list], \"default\": optional}}")
        if len({type(v) for v in values}) > 1 and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in values):
            raise SearchSpaceError(f"{where}: choice values must all have one type, got {values}")
    else:
        extra = set(spec) - {"min", "max", "step", "sampling", "default"}
        if extra or "min" not in spec or "max" not in spec:
            raise SearchSpaceError(f"{where}: a range is {{\"min\": a, \"max\": b, \"step\": optional, "
                                   f"\"sampling\": {'|'.join(SAMPLINGS)}}}, got keys {sorted(spec)}")
        lo, hi = spec["min"], spec["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo > hi:
            raise SearchSpaceError(f"{where}: min and max must be numbers with min <= max, got {lo}, {hi}")
        if spec.get("sampling", "linear") not in SAMPLINGS:
            raise SearchSpaceError(f"{where}: sampling must be one of {', '.join(SAMPLINGS)}")
        if spec.get("sampling") in ("log", "reverse_log") and lo <= 0:
            raise SearchSpaceError(f"{where}: log sampling needs min > 0, got {lo}")
        values = [lo, hi]
    if name == "loss" and any(v not in LOSSES for v in values):
        raise SearchSpaceError(f"{where}: losses must be among {', '.join(LOSSES)}, got {values}")
    if name == "use_attention" and not all(isinstance(v, bool) for v in values):
        raise SearchSpaceError(f"{where}: use_attention takes true/false, got {values}")


def _check_lengths(config: ESNetConfig, source: str) -> None:
    """The strided stem and the pools must leave at least one energy point after the last stage."""
    length = -(-config.n_points // config.stem_stride) // config.pool_size
    for _ in config.stage_widths[1:]:
        length //= config.pool_size
    if length < 1:
        raise SearchSpaceError(f"{source}: {len(config.stage_widths)} stages with stem stride {config.stem_stride} "
                               f"and pool {config.pool_size} leave no energy points of {config.n_points}")
