"""ESNet building blocks as registered, serializable Keras 3 layers (no Lambda, no closures).

- `ShapeCheck`: run-time check of an input's shape (a clear error in every saved form).
- `InputNormalization`: per-channel (x - mean) / std, statistics fitted on the training split
  and stored as (non-trainable) weights, so every saved form takes raw IS-DOS.
- `ChannelAttention`, `SpatialAttention`: the two halves of CBAM (Woo et al. 2018) in 1D.
- `ResidualCBAMBlock`: Conv-BN-ReLU-Conv-BN-CBAM plus shortcut (1x1 conv when the width changes).
- `SpinFeaturizer`: stem + stages of residual CBAM blocks for one spin channel.

Shapes are (batch, energy points, channels) throughout.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

PACKAGE = "esnet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShapeCheck(layers.Layer):
    """Identity that fails at run time, naming the input, when the non-batch shape is wrong.

    Keeps a SavedModel from silently accepting, e.g., a DOS on another energy grid (the network
    is otherwise length-agnostic through its global pooling). With `require_finite` it also
    refuses NaN or inf (an energy input that is unknown for an example, DESIGN.md section 1).
    """

    def __init__(self, input_name: str = "input", require_finite: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_name = input_name
        self.require_finite = bool(require_finite)

    def build(self, input_shape) -> None:
        self.expected = tuple(int(d) for d in input_shape[1:])

    def call(self, x):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            want = ", ".join(map(str, self.expected))
            check = tf.debugging.assert_equal(tf.shape(x)[1:], tf.constant(self.expected, dtype=tf.int32),
                                              message=f"input '{self.input_name}' must have shape (batch, {want})")
            checks = [check] if check is not None else []
            if self.require_finite:
                with tf.control_dependencies(checks):
                    finite = tf.debugging.Assert(
                        tf.reduce_all(tf.math.is_finite(x)),
                        [f"input '{self.input_name}' holds NaN or inf: the model needs it (eV/atom) for every example"])
                checks.append(finite)
            # the output waits for the check, so that no op reads a wrong-shaped input first (in a
            # frozen graph a MatMul on `composition` otherwise ran, and failed, before the assert)
            with tf.control_dependencies(checks):
                return tf.identity(x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = {**super().get_config(), "input_name": self.input_name}
        if self.require_finite:  # only then, so that the paper model's saved config is unchanged
            config["require_finite"] = True
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class InputNormalization(layers.Layer):
    """Per-channel standardisation (x - mean) / std over the last axis.

    `mean` and `std` are weights (not trainable) set with `set_statistics`; until then the
    layer is the identity. Units follow the input (states/eV/atom for IS-DOS).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)

    def build(self, input_shape) -> None:
        n = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(n,), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(n,), initializer="ones", trainable=False)

    def set_statistics(self, mean, std) -> None:
        """Store per-channel mean and std (std values <= 0 are replaced by 1)."""
        import numpy as np

        mean = np.asarray(mean, dtype="float32").reshape(-1)
        std = np.asarray(std, dtype="float32").reshape(-1)
        std = np.where(std > 1e-12, std, 1.0).astype("float32")
        self.mean.assign(mean)
        self.std.assign(std)

    def call(self, x):
        return (x - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelAttention(layers.Layer):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) * x, shared MLP."""

    def __init__(self, ratio: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ratio = int(ratio)

    def build(self, input_shape) -> None:
        channels = int(input_shape[-1])
        hidden = max(1, channels // self.ratio)
        self.hidden = layers.Dense(hidden, activation="relu", name="mlp_hidden")
        self.out = layers.Dense(channels, name="mlp_out")
        self.hidden.build((None, channels))
        self.out.build((None, hidden))

    def call(self, x):
        avg = self.out(self.hidden(ops.mean(x, axis=1)))
        mx = self.out(self.hidden(ops.max(x, axis=1)))
        scale = ops.sigmoid(avg + mx)
        return x * ops.expand_dims(scale, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "ratio": self.ratio}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialAttention(layers.Layer):
    """CBAM spatial attention: sigmoid(Conv1D(1, k)([mean_c(x), max_c(x)])) * x."""

    def __init__(self, kernel_size: int = 7, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape) -> None:
        self.conv = layers.Conv1D(1, self.kernel_size, padding="same", activation="sigmoid", name="conv")
        self.conv.build((input_shape[0], input_shape[1], 2))

    def call(self, x):
        pooled = ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)
        return x * self.conv(pooled)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualCBAMBlock(layers.Layer):
    """Conv(k)-BN-ReLU-Conv(k)-BN-CBAM + shortcut, then ReLU; 1x1 conv shortcut if width changes.

    `use_attention=False` drops the CBAM (channel + spatial attention): the ablation of the paper.
    """

    def __init__(self, filters: int, kernel_size: int = 3, attention_ratio: int = 8,
                 spatial_kernel: int = 7, bn_momentum: float = 0.99, use_attention: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.use_attention = bool(use_attention)
        self.bn_momentum = float(bn_momentum)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.attention_ratio = int(attention_ratio)
        self.spatial_kernel = int(spatial_kernel)

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        out_shape = shape[:-1] + (self.filters,)
        self.conv1 = layers.Conv1D(self.filters, self.kernel_size, padding="same", name="conv1")
        self.bn1 = layers.BatchNormalization(momentum=self.bn_momentum, name="bn1")
        self.conv2 = layers.Conv1D(self.filters, self.kernel_size, padding="same", name="conv2")
        self.bn2 = layers.BatchNormalization(momentum=self.bn_momentum, name="bn2")
        self.conv1.build(shape)
        for layer in (self.bn1, self.conv2, self.bn2):
            layer.build(out_shape)
        if self.use_attention:
            self.channel_attention = ChannelAttention(self.attention_ratio, name="channel_attention")
            self.spatial_attention = SpatialAttention(self.spatial_kernel, name="spatial_attention")
            self.channel_attention.build(out_shape)
            self.spatial_attention.build(out_shape)
        if int(shape[-1]) != self.filters:
            self.shortcut = layers.Conv1D(self.filters, 1, name="shortcut")
            self.shortcut.build(shape)
        else:
            self.shortcut = None

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        if self.use_attention:
            y = self.spatial_attention(self.channel_attention(y))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return ops.relu(y + skip)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "attention_ratio": self.attention_ratio, "spatial_kernel": self.spatial_kernel,
                "bn_momentum": self.bn_momentum, "use_attention": self.use_attention}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpinFeaturizer(layers.Layer):
    """One spin channel: stem Conv1D(stride)-BN-ReLU-AvgPool, then stages of residual CBAM blocks.

    AvgPool(pool_size) sits between consecutive stages. Input (batch, n_points, 9) normalised
    IS-DOS; output (batch, L, stage_widths[-1]).
    """

    def __init__(self, stem_filters: int = 64, stem_kernel: int = 20, stem_stride: int = 2,
                 pool_size: int = 2, stage_widths: Sequence[int] = (64, 128, 256, 512),
                 blocks_per_stage: int = 2, kernel_size: int = 3, attention_ratio: int = 8,
                 spatial_kernel: int = 7, bn_momentum: float = 0.99, use_attention: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.use_attention = bool(use_attention)
        self.bn_momentum = float(bn_momentum)
        self.stem_filters = int(stem_filters)
        self.stem_kernel = int(stem_kernel)
        self.stem_stride = int(stem_stride)
        self.pool_size = int(pool_size)
        self.stage_widths = tuple(int(w) for w in stage_widths)
        self.blocks_per_stage = int(blocks_per_stage)
        self.kernel_size = int(kernel_size)
        self.attention_ratio = int(attention_ratio)
        self.spatial_kernel = int(spatial_kernel)

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        self.stem_conv = layers.Conv1D(self.stem_filters, self.stem_kernel, strides=self.stem_stride,
                                       padding="same", name="stem_conv")
        self.stem_bn = layers.BatchNormalization(momentum=self.bn_momentum, name="stem_bn")
        self.pool = layers.AveragePooling1D(self.pool_size, name="pool")
        self.stem_conv.build(shape)
        shape = self.stem_conv.compute_output_shape(shape)
        self.stem_bn.build(shape)
        shape = self.pool.compute_output_shape(shape)
        blocks = []  # flat list (stage-major); stage s holds blocks[s*n:(s+1)*n]
        for s, width in enumerate(self.stage_widths):
            if s > 0:
                shape = self.pool.compute_output_shape(shape)
            for b in range(self.blocks_per_stage):
                block = ResidualCBAMBlock(width, self.kernel_size, self.attention_ratio, self.spatial_kernel,
                                          self.bn_momentum, self.use_attention,
                                          name=f"stage{s + 1}_block{b + 1}")
                block.build(shape)
                shape = block.compute_output_shape(shape)
                blocks.append(block)
        self.blocks = blocks

    def call(self, x, training=None, return_stages: bool = False):
        """Features (batch, L, width); with `return_stages` also the list of each stage's output."""
        x = ops.relu(self.stem_bn(self.stem_conv(x), training=training))
        x = self.pool(x)
        stages = []
        n = self.blocks_per_stage
        for s in range(len(self.stage_widths)):
            if s > 0:
                x = self.pool(x)
            for block in self.blocks[s * n:(s + 1) * n]:
                x = block(x, training=training)
            stages.append(x)
        return (x, stages) if return_stages else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.stage_lengths(input_shape[1])[-1:], self.stage_widths[-1])

    def stage_lengths(self, n_points: int | None) -> list[int | None]:
        """Sequence length (energy points) at the output of each stage."""
        if n_points is None:
            return [None] * len(self.stage_widths)
        length = -(-int(n_points) // self.stem_stride) // self.pool_size  # 'same' strided conv, pool
        out = [length]
        for _ in self.stage_widths[1:]:
            length //= self.pool_size
            out.append(length)
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "stem_filters": self.stem_filters, "stem_kernel": self.stem_kernel,
                "stem_stride": self.stem_stride, "pool_size": self.pool_size,
                "stage_widths": list(self.stage_widths), "blocks_per_stage": self.blocks_per_stage,
                "kernel_size": self.kernel_size, "attention_ratio": self.attention_ratio,
                "spatial_kernel": self.spatial_kernel, "bn_momentum": self.bn_momentum,
                "use_attention": self.use_attention}
