"""The bfloat16 twin of a model that `export(..., precision="bf16")` serves.

The twin is rebuilt from the model's config under a `DTypePolicyMap`:

- every `Dense`, `Conv2D` and `DepthwiseConv2D` layer gets the `"bfloat16"`
  policy: its kernel and bias are bfloat16 variables, so the SavedModel
  stores them in half the bytes and the matmuls and convolutions read them
  as they are;
- every other layer gets `"mixed_bfloat16"`: bfloat16 compute over float32
  variables. BatchNorm and LayerNorm scales, offsets and moving statistics,
  layer scales, the relative tables (so the biases that `serving.frozen`
  stores) and the bias MLP (always float32) keep float32 values.

The float32 values come from the model (`set_weights` casts), and the export
traces the twin only, so no weight is stored twice. What runs in float32
under this policy: Keras's BatchNormalization and `ops.layer_normalization`
upcast bfloat16 inputs and compute their statistics in float32 (Keras
3.15); `RelativeAttention` adds the bias to float32 logits and takes the
softmax in float32; `MBConvBlock` and `Stem` fold their BatchNorms into the
kernels in float32 (bfloat16 kernel times float32 statistics) and round the
folded kernel once; TensorFlow's CPU bfloat16 matmuls and convolutions
sum their products in float32 (4096 products of ones sum to 4096, where
bfloat16 additions would stop at 256). A softmax head becomes linear in the twin, and the
SavedModel's signatures take the softmax of its float32-cast logits.

The alternatives: the `"mixed_bfloat16"` policy alone computes in bfloat16
but keeps float32 variables, so the SavedModel is as large as the float32
one and every weight is cast on every call (on the trained digits model its
probabilities differ from float32's as much as this twin's: storing the
kernels in bfloat16 costs nothing measurable); casting inside the traced
function stores float32 variables too; the `"bfloat16"` policy alone also
stores the BatchNorm moving statistics in bfloat16 (a channel's folded
offset moves by up to `|mean| / std * 2**-9` of its standard deviation) and
the relative tables and biases, which `RelativeAttention` then adds to
float32 logits, an addition TensorFlow refuses.
"""

from __future__ import annotations

import keras

from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.naming import HEAD_LAYER

# The layers whose kernels are stored and applied in bfloat16.
_MATMUL_LAYERS = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def bfloat16_twin(model: keras.Model) -> keras.Model:
    """A copy of functional `model` with bfloat16 kernels and compute, linear head.

    Args:
        model: A built functional CoAtNet.

    Returns:
        A new `keras.Model` holding the model's weights, its `Dense` and
        convolution weights cast to bfloat16, the others float32; a softmax
        head is replaced by a linear one (the caller applies the softmax).
    """
    policies = keras.dtype_policies.DTypePolicyMap(default_policy="mixed_bfloat16")
    # A layer's path is fixed when it is built, and the twin is built from the
    # same config, so the paths are the model's.
    matmuls = [layer.path for layer in walk_layers(model) if isinstance(layer, _MATMUL_LAYERS)]
    for path in matmuls:
        policies[path] = keras.dtype_policies.DTypePolicy("bfloat16")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":  # float32 pixels in
            layer["config"]["dtype"] = policies
        if layer["config"]["name"] == HEAD_LAYER:
            layer["config"]["activation"] = "linear"
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    # Every layer that took the map (the bias MLP is float32 by construction).
    missed = [
        layer.path
        for layer in walk_layers(twin)
        if isinstance(layer, _MATMUL_LAYERS)
        and layer.dtype_policy is policies
        and layer.kernel.dtype != "bfloat16"
    ]
    if missed:
        raise RuntimeError(f"the bfloat16 twin of {model.name!r} has float32 kernels: {missed}")
    return twin
