"""Floating-point work of ESNet per example: counted analytically from the config, and from TF's graph.

    from esnet_tf.flops import forward_macs, graph_flops
    forward_macs(ESNetConfig.paper())["total"]   # multiply-accumulates of the convolutions and dense layers
    graph_flops(build_esnet(ESNetConfig.paper())) # {'conv_matmul': ..., 'other': ...} from TF's op statistics

One MAC = 2 FLOPs. Training (forward + backward) costs about 3x the forward FLOPs (the backward
pass computes the gradients with respect to both the activations and the weights, each a
convolution/matmul of the forward's size; the stem's input gradient, which is not needed, is
included in that estimate).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from esnet_tf.model import ESNetConfig

if TYPE_CHECKING:
    import keras


def _conv_out(length: int, stride: int) -> int:
    return -(-length // stride)  # 'same' padding


def forward_macs(config: ESNetConfig) -> dict[str, int]:
    """MACs per example of every convolution and dense layer of ESNet (forward pass), by group.

    Keys: 'stem', 'stage1'..'stageN' (both spins, CBAM MLPs and spatial convolutions included),
    'merge', 'head' (composition and head dense layers), 'total'.
    """
    c = config
    out: dict[str, int] = {}
    length = _conv_out(c.n_points, c.stem_stride)
    out["stem"] = 2 * length * c.stem_kernel * c.n_orbitals * c.stem_filters
    length //= c.pool_size
    channels = c.stem_filters
    for s, width in enumerate(c.stage_widths):
        if s > 0:
            length //= c.pool_size
        macs = 0
        for _ in range(c.blocks_per_stage):
            macs += length * c.kernel_size * channels * width + length * c.kernel_size * width * width
            if c.use_attention:
                hidden = max(1, width // c.attention_ratio)
                macs += 2 * (width * hidden + hidden * width)  # shared MLP on avg- and max-pooled features
                macs += length * c.spatial_kernel * 2  # Conv1D(1, k) over [mean, max]
            if channels != width:
                macs += length * channels * width  # 1x1 shortcut
            channels = width
        out[f"stage{s + 1}"] = 2 * macs  # two spins
    out["merge"] = length * c.merge_kernel * 2 * channels * c.merge_filters
    head, units_in = c.n_elements * c.composition_units, c.merge_filters + c.composition_units
    for units in (*c.head_units, 1):
        head += units_in * units
        units_in = units
    out["head"] = head
    out["total"] = sum(out.values())
    return out


def forward_flops(config: ESNetConfig) -> int:
    """FLOPs (2 x MACs) per example of the forward pass, convolutions and dense layers."""
    return 2 * forward_macs(config)["total"]


def training_flops(config: ESNetConfig) -> int:
    """FLOPs per example of one training step (forward + backward), the usual 3x forward estimate."""
    return 3 * forward_flops(config)


#: op types whose FLOPs are matrix products (oneDNN convolutions and GEMMs)
MATMUL_OPS = ("Conv2D", "Conv1D", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "_FusedConv2D",
              "_FusedMatMul", "DepthwiseConv2dNative")


def graph_flops(model: keras.Model, batch_size: int = 1) -> dict[str, int]:
    """FLOPs per example from TensorFlow's registered op statistics (the tf.compat.v1 profiler's source).

    Traces `model(inputs, training=False)` at a fixed batch size and sums `flops` statistics over
    the graph's ops, nested function bodies included (TF's private statistics API, through
    `esnet_tf.compat.op_flops` / `graph_functions`): {'conv_matmul': ..., 'other': ..., 'total': ...,
    'by_op': {op type: flops}}, each divided by `batch_size`.
    """
    import tensorflow as tf

    from esnet_tf.compat import graph_functions, op_flops

    specs = {t.name: tf.TensorSpec((batch_size, *t.shape[1:]), tf.float32) for t in model.inputs}
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
    by_op: dict[str, int] = {}

    def visit(graph) -> None:
        for op in graph.get_operations():
            flops = op_flops(graph, op)
            if flops:
                by_op[op.type] = by_op.get(op.type, 0) + flops
        for inner in graph_functions(graph):
            visit(inner)

    visit(concrete.graph)
    matmul = sum(v for k, v in by_op.items() if k in MATMUL_OPS)
    total = sum(by_op.values())
    return {"conv_matmul": matmul // batch_size, "other": (total - matmul) // batch_size,
            "total": total // batch_size, "by_op": {k: v // batch_size for k, v in sorted(by_op.items())}}
