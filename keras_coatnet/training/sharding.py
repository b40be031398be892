"""Model parallelism: a `keras.distribution.LayoutMap` for any CoAtNet.

    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"])
    layouts = layout_map(mesh, "coatnet-7", input_shape=(224, 224, 3))
    with keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch").scope():
        model = keras_coatnet.CoAtNet(keras_coatnet.get_config("coatnet-7"), ...)

The layouts are derived from the layers of a built model, not from a list
of names: each Dense, Conv2D and DepthwiseConv2D kernel and each relative
attention table of at least `min_size` elements is split along the model
axis, the rest (norms, biases, BatchNorm statistics, small kernels) is
replicated. Which dimension is split keeps the collectives cheap (Megatron
style): the first layer of a pair splits its output channels ("column"),
the second its input channels ("row"), so the activation between them is
split on channels and needs no communication; only the pair's output is
summed across the model axis.

- MBConv: expansion conv1 column, depthwise conv2 on its channels, the
  squeeze-excite reduce row and expand column, projection conv3 row.
- Transformer: qkv column (head-major, so the split is by heads), output
  projection row, FFN fc1 column and fc2 row, the bias MLP likewise, the
  relative table and its inference cache on their heads dimension.
- Stem: conv1 column, conv2 row. Any other kernel (the head, shortcut
  projections, a layer added later) is split column-wise.

A dimension is split only if the model axis size divides it; a kernel whose
preferred dimension does not divide falls back to the other one of the
pair, then to replication.
"""

from __future__ import annotations

import math
import re

import keras

from keras_coatnet._keras_compat import discard_uninitialized, walk_layers
from keras_coatnet.layers.attention import RelativeAttention
from keras_coatnet.layers.mbconv import MBConvBlock, SqueezeExcite
from keras_coatnet.layers.stem import Stem
from keras_coatnet.layers.transformer import TransformerBlock

__all__ = ["DEFAULT_MIN_SIZE", "layout_map", "variable_axes"]

# Variables with fewer elements than this stay replicated (4 KiB in float32).
DEFAULT_MIN_SIZE = 1024

COLUMN, ROW = "column", "row"

# The role of each sublayer of a pair, by the attribute that holds it. A
# sublayer not named here (or renamed later) is split column-wise, which is
# still correct and still saves memory; only the collectives get dearer.
_ROLES = {
    Stem: {"conv1": COLUMN, "conv2": ROW},
    MBConvBlock: {"shortcut": COLUMN, "conv1": COLUMN, "conv3": ROW},
    SqueezeExcite: {"reduce": ROW, "expand": COLUMN},
    TransformerBlock: {"shortcut": COLUMN, "fc1": COLUMN, "fc2": ROW},
    RelativeAttention: {
        "qkv": COLUMN,
        "proj": ROW,
        "relative_mlp1": COLUMN,
        "relative_mlp2": ROW,
    },
}


# Split whatever their size: an MBConv's expansion, depthwise and projection
# kernels. XLA's SPMD partitioner (jax 0.10.2, measured on CPU) computes the
# kernel gradient of a depthwise (grouped) convolution wrong on a 2-D mesh when
# its input is split on the batch axis only: multiplied by the model axis
# size. Splitting the expansion's output channels splits the depthwise input
# on channels too, which it gets right.
_ALWAYS = {MBConvBlock: ("conv1", "conv2", "conv3")}


def _roles(model) -> dict[int, str]:
    """`{id(sublayer): role}` for every sublayer a known parent holds."""
    roles = {}
    for layer in walk_layers(model):
        for cls, attributes in _ROLES.items():
            if isinstance(layer, cls):
                for attribute, role in attributes.items():
                    child = getattr(layer, attribute, None)
                    if child is not None:
                        roles[id(child)] = role
    return roles


def _split(shape, dims, size, min_size, model_axis):
    """Axes splitting the first of `dims` that `size` divides, or `None`."""
    if math.prod(shape) < min_size:
        return None
    for dim in dims:
        if shape[dim] % size == 0:
            axes = [None] * len(shape)
            axes[dim] = model_axis
            return tuple(axes)
    return None


def variable_axes(
    model, size: int, model_axis: str = "model", min_size: int = DEFAULT_MIN_SIZE
) -> dict[str, tuple]:
    """`{variable.path: axes}` of every variable `layout_map` splits.

    `axes` has one entry per dimension of the variable: `model_axis` on the
    split one, `None` elsewhere. Variables not listed are replicated.

    Args:
        model: A built `keras.Model` or layer.
        size: Number of devices on the model axis.
        model_axis: Name of the model axis.
        min_size: Variables with fewer elements are replicated.
    """
    roles = _roles(model)
    always = {
        id(getattr(layer, attribute, None))
        for layer in walk_layers(model)
        for cls, attributes in _ALWAYS.items()
        if isinstance(layer, cls)
        for attribute in attributes
    }
    axes = {}

    def add(variable, dims, layer=None):
        if variable is None:
            return
        shape = tuple(variable.shape)
        forced = id(layer) in always or isinstance(layer, keras.layers.DepthwiseConv2D)
        # Negative dims count from the end; make them positive for the tuple.
        dims = [d % len(shape) for d in dims]
        found = _split(shape, dims, size, 1 if forced else min_size, model_axis)
        if found is not None:
            axes[variable.path] = found
        elif isinstance(layer, keras.layers.DepthwiseConv2D) and size > 1:
            raise ValueError(
                f"{variable.path} has {shape[dims[0]]} channels, which the model axis size "
                f"{size} does not divide; a replicated depthwise kernel gets a wrong gradient "
                "from XLA on a 2-D mesh, so pick a model axis size that divides it"
            )

    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # (kh, kw, channels, multiplier): split the channels, whatever the size.
            add(layer.kernel, [-2], layer)
        elif isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            # (in, out) or (kh, kw, in, out): column splits out, row splits in.
            row = roles.get(id(layer)) == ROW
            add(layer.kernel, [-2, -1] if row else [-1, -2], layer)
        elif isinstance(layer, RelativeAttention):
            # Tables are (offsets, heads) and the cache (heads, HW, HW): by heads,
            # like the head-major qkv projection.
            add(getattr(layer, "relative_table", None), [1])
            add(getattr(layer, "cached_table", None), [1])
            add(getattr(layer, "bias_cache", None), [0])
    return axes


def layout_map(
    mesh,
    model,
    model_axis: str = "model",
    min_size: int = DEFAULT_MIN_SIZE,
    **build_kwargs,
):
    """A `keras.distribution.LayoutMap` splitting a CoAtNet's large variables.

    Pass it to `keras.distribution.ModelParallel(layout_map=...)` and build
    the model in that distribution's scope; its variables are then created
    split across the model axis of `mesh` (see the module docstring for which
    dimension of which variable). Each key is one variable's exact path,
    regex-escaped (Keras matches keys as regexes, whole paths only).

    Args:
        mesh: A `keras.distribution.DeviceMesh` with an axis `model_axis`.
        model: The model to lay out: a built `keras.Model`, or a
            `CoAtNetConfig` or config name (`"coatnet-7"`), which is built
            with `keras_coatnet.CoAtNet(config, **build_kwargs)` without
            allocating its weights (inside a `keras.StatelessScope`).
        model_axis: Name of the mesh axis to split weights along.
        min_size: Variables with fewer elements stay replicated.
        **build_kwargs: For a config: the `CoAtNet` arguments the real model
            will be built with (`input_shape`, `classes`, ...); the variable
            shapes, and so the layouts, depend on them.

    Returns:
        A `keras.distribution.LayoutMap` on `mesh`.
    """
    names = tuple(getattr(mesh, "axis_names", ()))
    if model_axis not in names:
        raise ValueError(f"model_axis={model_axis!r} is not an axis of the mesh; it has {names}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size={min_size!r} must be a positive integer")
    size = int(mesh.shape[names.index(model_axis)])
    if not isinstance(model, keras.layers.Layer):
        model = _abstract_model(model, build_kwargs)
        built = model
    else:
        if build_kwargs:
            raise ValueError(
                f"build arguments {sorted(build_kwargs)} are for a config, not a built model"
            )
        built = None
    layouts = keras.distribution.LayoutMap(mesh)
    for path, axes in variable_axes(model, size, model_axis, min_size).items():
        layouts[re.escape(path)] = axes
    if built is not None:
        discard_uninitialized(built.weights)
    return layouts


def _abstract_model(config, build_kwargs):
    """The CoAtNet of `config`, its variables shapes without values."""
    from keras_coatnet.model import CoAtNet
    from keras_coatnet.variants import CoAtNetConfig, get_config

    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, CoAtNetConfig):
        raise ValueError(
            f"model={config!r} must be a built keras model, a CoAtNetConfig or a config name"
        )
    with keras.StatelessScope(initialize_variables=False):
        return CoAtNet(config, **build_kwargs)
