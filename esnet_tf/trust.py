"""Which models may run: the trust boundary of model loading.

A SavedModel is a program. TensorFlow's security policy says so plainly: models are programs
that TensorFlow executes, they can read and write files, use the network and start processes,
and running an untrusted model is equivalent to running untrusted code. So `esnet_tf` loads a
SavedModel only when it is trusted:

- **shipped**: it lies inside the installed `esnet_tf.saved_models` (`resources.saved_models_dir()`);
- **exported by esnet-tf**: `esnet export` wrote a manifest `MANIFEST_FILE` beside `saved_model.pb`
  listing the SHA-256 of every file of the SavedModel, every file still matches it, and the graph
  passes `graph_problems`: its serving functions use only the arithmetic ops of an ESNet
  (`COMPUTE_OPS`), never file, network or Python ops, and only the checkpoint save/restore
  functions TensorFlow writes for every SavedModel touch checkpoint files. The manifest is not a
  signature (anyone can write one); it records what export wrote and catches later changes, and the
  op check is what keeps a forged manifest from passing.

Any other SavedModel is refused with one line, unless the caller passes `trust_model_code=True`
(CLI: `--trust-model-code` of `esnet predict`, `esnet evaluate` and `esnet campaign live`). `.keras` files are loaded with Keras's safe mode on (no
Lambda layers, no arbitrary code); a malicious or broken one ends in one line (`load_keras`).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from esnet_tf.errors import UserError

#: the manifest `esnet export` writes in each SavedModel directory
MANIFEST_FILE = "esnet_manifest.json"
MANIFEST_FORMAT = "esnet-tf SavedModel manifest v1"
#: TensorFlow's warning, repeated wherever a model's code may be trusted by hand
TF_WARNING = ("TensorFlow models are programs: a SavedModel can read and write files, use the network and "
              "start processes, and running an untrusted model is equivalent to running untrusted code")
#: the CLI flag that loads an untrusted SavedModel anyway: every verb that loads a user's model has it
#: (esnet predict, esnet evaluate, esnet campaign live)
TRUST_FLAG = "--trust-model-code"
#: its help text, one for every verb
TRUST_HELP = ("load a SavedModel that esnet-tf neither ships nor exported. TensorFlow's warning: models are programs; "
              "a SavedModel can read and write files, use the network and start processes, and running an untrusted "
              "model is equivalent to running untrusted code. Use only with models from people you trust (.keras "
              "files always load in Keras's safe mode)")

#: ops of the serving graphs `esnet export` writes (ESNet single models, ensembles, energy inputs):
#: arithmetic, shapes and control of function calls; nothing that touches files, the network or Python
COMPUTE_OPS = frozenset({
    "Abs", "AddN", "AddV2", "All", "Any", "ArgMax", "ArgMin", "Assert", "AvgPool", "BatchMatMulV2", "BiasAdd",
    "BroadcastArgs", "BroadcastTo", "Cast", "ConcatV2", "Const", "Conv2D", "Cumsum", "DepthwiseConv2dNative",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "ExpandDims", "Fill", "Floor", "FloorDiv", "FusedBatchNormV3",
    "GatherV2", "Greater", "GreaterEqual", "Identity", "IdentityN", "IsFinite", "IsNan", "LeakyRelu", "Less",
    "LessEqual", "Log", "Log1p", "LogicalAnd", "LogicalNot", "LogicalOr", "MatMul", "Max", "MaxPool", "Maximum",
    "Mean", "Min", "Minimum", "Mul", "Neg", "NoOp", "NotEqual", "OnesLike", "Pack", "Pad", "PadV2",
    "PartitionedCall", "Placeholder", "Pow", "Prod", "Range", "RealDiv", "Reciprocal", "Relu", "Relu6",
    "Reshape", "Round", "Rsqrt", "Select", "SelectV2", "Selu", "Shape", "ShapeN", "Sigmoid", "Sign", "Slice",
    "Softmax", "Softplus", "Softsign", "Split", "SplitV", "Sqrt", "Square", "SquaredDifference", "Squeeze",
    "StatefulPartitionedCall", "StopGradient", "StridedSlice", "Sub", "Sum", "Tanh", "Tile", "Transpose",
    "Unpack", "ZerosLike", "ReadVariableOp", "VarHandleOp",
})
#: the extra ops of the checkpoint save / restore functions every SavedModel holds
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin",
                            "StaticRegexFullMatch", "AssignVariableOp"})
_SAVER_FUNCTION = re.compile(r"^__inference__traced_(save|restore)_\d+$")


class UntrustedModelError(UserError):
    """A SavedModel that is neither shipped nor exported by esnet-tf, loaded without trust_model_code."""


# ---------------------------------------------------------------- manifest

def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(saved_model_dir: str | Path) -> Path:
    """Write `MANIFEST_FILE` in a SavedModel directory: the SHA-256 of each of its files (`esnet export`)."""
    directory = Path(saved_model_dir)
    files = {p.relative_to(directory).as_posix(): _sha256(p) for p in _files(directory)}
    if "saved_model.pb" not in files:
        raise UserError(f"{directory}: no saved_model.pb to record in a manifest")
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True) + "\n")
    return path


def manifest_problem(saved_model_dir: str | Path) -> str | None:
    """Why the directory's manifest does not vouch for its files (None when every file matches it)."""
    directory = Path(saved_model_dir)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return f"it has no {MANIFEST_FILE} (esnet export writes one)"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        listed = dict(doc["files"]) if doc.get("format") == MANIFEST_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None
    if listed is None:
        return f"its {MANIFEST_FILE} is not an esnet-tf manifest"
    present = {p.relative_to(directory).as_posix(): p for p in _files(directory)}
    extra = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    changed = sorted(k for k in set(present) & set(listed) if _sha256(present[k]) != listed[k])
    for what, names in (("changed since export", changed), ("not in its manifest", extra),
                        ("missing", missing)):
        if names:
            return f"files {what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
    return None


# ---------------------------------------------------------------- graph

def _func_refs(node) -> set[str]:
    """Names of the functions a NodeDef calls (attributes of type func or list(func))."""
    out = set()
    for value in node.attr.values():
        if value.HasField("func"):
            out.add(value.func.name)
        if value.HasField("list"):
            out.update(f.name for f in value.list.func)
    return out


def graph_problems(saved_model_dir: str | Path) -> list[str]:
    """What in `saved_model.pb` an esnet-tf export never writes (empty: the graph only computes).

    Every function but TensorFlow's checkpoint save/restore pair may use only `COMPUTE_OPS`; the
    save/restore functions only those plus `CHECKPOINT_OPS`, and nothing else may call them (no
    function, no signature output, no object of the object graph).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    directory = Path(saved_model_dir)
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((directory / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf DecodeError, OSError
        return [f"saved_model.pb does not parse ({type(exc).__name__})"]
    problems: list[str] = []
    for mg in sm.meta_graphs:
        functions = {f.signature.name: f for f in mg.graph_def.library.function}
        savers = {name for name in functions if _SAVER_FUNCTION.match(name)}
        bad_ops: set[str] = set()
        for name, f in functions.items():
            allowed = COMPUTE_OPS | CHECKPOINT_OPS if name in savers else COMPUTE_OPS
            bad_ops |= {n.op for n in f.node_def if n.op not in allowed and n.op not in functions}
            if name not in savers and any(_func_refs(n) & savers for n in f.node_def):
                problems.append(f"function {name} calls the checkpoint functions")
        bad_ops |= {n.op for n in mg.graph_def.node if n.op not in COMPUTE_OPS and n.op not in functions}
        if bad_ops:
            problems.append(f"ops {', '.join(sorted(bad_ops)[:6])} (not the ops of an ESNet)")
        nodes = {n.name: n for n in mg.graph_def.node}
        for key, sig in mg.signature_def.items():
            for tensor in list(sig.outputs.values()) + list(sig.inputs.values()):
                node = nodes.get(tensor.name.split(":")[0].lstrip("^"))
                if node is not None and _func_refs(node) & savers:
                    problems.append(f"signature {key} runs the checkpoint functions")
        bound = set()
        for obj in mg.object_graph_def.nodes:
            kind = obj.WhichOneof("kind")
            if kind == "function":
                bound.update(obj.function.concrete_functions)
            elif kind == "bare_concrete_function":
                bound.add(obj.bare_concrete_function.concrete_function_name)
        if bound & savers:
            problems.append("an object of the object graph calls the checkpoint functions")
    return problems


# ---------------------------------------------------------------- the boundary

def is_shipped(path: str | Path) -> bool:
    """True when `path` lies inside the installed shipped models (`esnet_tf.saved_models`)."""
    from esnet_tf.resources import saved_models_dir

    try:
        Path(path).resolve().relative_to(saved_models_dir().resolve())
    except ValueError:
        return False
    return True


def untrusted_reason(saved_model_dir: str | Path) -> str | None:
    """Why a SavedModel is not trusted (None: shipped, or exported by esnet-tf and unchanged)."""
    if is_shipped(saved_model_dir):
        return None
    problem = manifest_problem(saved_model_dir)
    if problem is None:
        graph = graph_problems(saved_model_dir)
        problem = "; ".join(graph) if graph else None
    return problem


def check_saved_model(saved_model_dir: str | Path, trust_model_code: bool = False) -> None:
    """Raise `UntrustedModelError` (one line) unless the SavedModel is trusted or `trust_model_code`."""
    if trust_model_code:
        return
    reason = untrusted_reason(saved_model_dir)
    if reason is not None:
        raise UntrustedModelError(
            f"{saved_model_dir}: refusing to load this SavedModel, which esnet-tf neither ships nor exported "
            f"({reason}). "
            f"{TF_WARNING}. If you trust its author, pass {TRUST_FLAG} (Python: trust_model_code=True)")


def load_saved_model(saved_model_dir: str | Path, trust_model_code: bool = False):
    """`tf.saved_model.load` behind `check_saved_model`."""
    import tensorflow as tf

    check_saved_model(saved_model_dir, trust_model_code)
    try:
        return tf.saved_model.load(str(saved_model_dir))
    except Exception as exc:  # a broken SavedModel: one line
        raise UserError(f"{saved_model_dir}: cannot load the SavedModel ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None


def load_keras(path: str | Path):
    """A `.keras` ESNet loaded with Keras's safe mode on (`esnet_tf.model.load_model`); whatever a
    malicious or broken archive raises inside Keras becomes one `UserError` line naming the file."""
    from esnet_tf.model import load_model

    try:
        return load_model(path)
    except (UserError, FileNotFoundError):
        raise
    except Exception as exc:  # Keras raises many types on hostile configs (TypeError, AttributeError, ...)
        raise UserError(f"{path}: cannot load the .keras model ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); Keras safe mode refuses code in a model, so use "
                        "a .keras file written by esnet-tf") from None
