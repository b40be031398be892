"""Parameter and multiply-add (MAC) counts of a built model.

The TF profiler misses einsum and batched matmuls, so MACs are counted by
walking the layers instead. What is counted, per forward pass of one image:

- `Conv2D`: output pixels x kernel area x input channels / groups x filters;
- `DepthwiseConv2D`: output pixels x kernel area x channels;
- `Dense`: every position it is applied at x input width x units;
- `RelativeAttention`: its two batched products, `q k^T` and `attn v`,
  2 x heads x tokens^2 x head size (q, k, v and output projections are
  `Dense` sublayers, counted above).

Normalization, activations, pooling, the squeeze-excite mean, the softmax and
the bias addition are elementwise and not counted. Parameters are the
trainable weights; BatchNorm moving statistics and the inference cache of
the relative bias are reported apart as non-trainable.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.layers import RelativeAttention


@dataclasses.dataclass(frozen=True)
class Profile:
    """Counts for one model at its input size."""

    params: int
    non_trainable: int
    macs: int
    per_layer: dict[str, int]

    def __str__(self):
        return f"params={self.params / 1e6:.2f}M MACs={self.macs / 1e9:.3f}G"


def _input_shape(layer):
    shape = (layer.get_build_config() or {}).get("input_shape")
    if shape is None:
        raise ValueError(f"layer {layer.name!r} is not built; build the model first")
    return tuple(shape)


def layer_macs(layer) -> int:
    """MACs of one leaf layer for one image (batch dimension dropped)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = layer.compute_output_shape(_input_shape(layer))
        kernel = math.prod(layer.kernel_size)
        return math.prod(out[1:-1]) * kernel * out[-1]
    if isinstance(layer, keras.layers.Conv2D):
        shape = _input_shape(layer)
        out = layer.compute_output_shape(shape)
        kernel = math.prod(layer.kernel_size)
        return math.prod(out[1:-1]) * kernel * shape[-1] // layer.groups * layer.filters
    if isinstance(layer, keras.layers.Dense):
        shape = _input_shape(layer)
        return math.prod(shape[1:-1]) * shape[-1] * layer.units
    if isinstance(layer, RelativeAttention):
        tokens = layer.height * layer.width
        return 2 * layer.num_heads * tokens * tokens * layer.head_size
    return 0


def profile(model: keras.Model) -> Profile:
    """Count parameters and MACs of a built model by walking its layers.

    Args:
        model: A built `keras.Model` (any model whose layers were built with
            static spatial shapes).

    Returns:
        A `Profile` with `params` (trainable), `non_trainable`, `macs`, and
        `per_layer` MACs keyed by layer path.
    """
    per_layer = {}
    for path, layer in walk_layers(model, paths=True):
        macs = layer_macs(layer)
        if macs:
            per_layer[path] = macs
    params = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return Profile(params, non_trainable, sum(per_layer.values()), per_layer)
