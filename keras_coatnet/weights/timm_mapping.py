"""timm's CoAtNet state dict mapped onto a keras_coatnet model, in NumPy (no torch).

Every variable of the Keras model is matched with exactly one tensor of the
timm state dict and every tensor is used; shapes are checked for all of them
before the first assignment, so a checkpoint that does not fit raises a
`ValueError` naming the first mismatch and leaves the model untouched.

Layout conversions: PyTorch convolutions are `(out, in, kh, kw)` and Keras
`(kh, kw, in, out)`; depthwise `(C, 1, kh, kw)` becomes `(kh, kw, C, 1)`;
1x1 convolutions and linear layers become dense `(in, out)` kernels. The
fused q/k/v projection keeps timm's head-major channel order, so it copies
as it is. Relative tables of another feature-map size are resized with timm's
interpolation (`keras_coatnet.resize`).

The head follows timm's `load_pretrained`: with `skip_head=True` the
classifier (`head.fc`) is not loaded, and the head tensors of a model built
with `include_top=False` are left aside, so a checkpoint loads into the one
model being built whatever its head.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_coatnet.layers import (
    LayerScale,
    MBConvBlock,
    RelativeAttention,
    SqueezeExcite,
    Stem,
    TransformerBlock,
)
from keras_coatnet.naming import HEAD_LAYER, HEAD_NORM, HEAD_PRE_LOGITS, STEM, parse_block_name
from keras_coatnet.resize import resize_relative_table, resize_square_table
from keras_coatnet.weights.checkpoint import TensorFile

# timm's classifier and the head modules before it (the rw models' `norm` too).
CLASSIFIER_KEYS = ("head.fc.",)
HEAD_KEYS = ("head.", "norm.")

# timm buffers that are derived state, not weights.
_IGNORED_SUFFIXES = (
    "num_batches_tracked",
    "relative_position_index",
    "rel_coords_log",
)


class _Lazy:
    """A tensor of the state dict, read when its value is needed.

    Supports what the mapping does to a tensor before assigning it (its
    shape, `transpose`, `reshape`, `.T`), so every shape is checked before
    any tensor is read, and tensors are read one at a time while assigning:
    the peak memory of a load is the model plus one tensor, not the model
    plus the whole checkpoint.
    """

    def __init__(self, shape, read):
        self.shape = tuple(int(d) for d in shape)
        self._read = read

    def __array__(self, dtype=None, copy=None):
        value = np.asarray(self._read(), dtype="float32")
        return value if dtype is None else value.astype(dtype)

    def transpose(self, *axes):
        shape = tuple(self.shape[a] for a in axes)
        return _Lazy(shape, lambda: np.asarray(self).transpose(*axes))

    def reshape(self, *shape):
        if int(np.prod(shape)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot reshape a tensor of shape {self.shape} into {shape}")
        return _Lazy(shape, lambda: np.asarray(self).reshape(*shape))

    @property
    def T(self):  # noqa: N802 - NumPy's name
        return self.transpose(*reversed(range(len(self.shape))))


class _State:
    """The timm tensors by name, as shapes first and values on demand."""

    def __init__(self, names, shape, read):
        self._names = {k for k in names if not k.endswith(_IGNORED_SUFFIXES)}
        self._shape, self._read = shape, read

    @classmethod
    def of_dict(cls, state_dict):
        def read(key):
            return _to_numpy(state_dict[key])

        return cls(state_dict, lambda k: np.shape(state_dict[k]), read)

    @classmethod
    def of_file(cls, tensors):
        """From an open `weights.checkpoint.TensorFile`."""
        return cls(tensors.keys(), tensors.shape, tensors.read)

    def __contains__(self, key):
        return key in self._names

    def __iter__(self):
        return iter(sorted(self._names))

    def get(self, key) -> _Lazy:
        return _Lazy(self._shape(key), lambda: self._read(key))


class _Plan:
    """Collects `(keras variable, tensor)` pairs and the timm keys they use."""

    def __init__(self, state: _State):
        self.state = state
        self.used = set()
        self.pairs = []
        self.head_skipped = False

    def take(self, key) -> _Lazy:
        if key not in self.state:
            raise ValueError(f"the timm state dict has no {key!r}")
        self.used.add(key)
        return self.state.get(key)

    def assign(self, variable, value, key):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"{key!r} has shape {tuple(value.shape)} after conversion, but Keras variable "
                f"{variable.path!r} has shape {tuple(variable.shape)}"
            )
        self.pairs.append((variable, value))

    # One method per Keras layer kind: `prefix` is the timm module path.
    def conv(self, layer, prefix):
        w = self.take(f"{prefix}.weight")
        if layer.__class__.__name__ == "DepthwiseConv2D":
            kernel = w.transpose(2, 3, 0, 1)
        else:
            kernel = w.transpose(2, 3, 1, 0)
        self.assign(layer.kernel, kernel, f"{prefix}.weight")
        self._bias(layer, prefix)

    def dense(self, layer, prefix):
        w = self.take(f"{prefix}.weight")
        w = w.reshape(w.shape[0], w.shape[1])  # a 1x1 conv is a dense layer
        self.assign(layer.kernel, w.T, f"{prefix}.weight")
        self._bias(layer, prefix)

    def _bias(self, layer, prefix):
        has_torch_bias = f"{prefix}.bias" in self.state
        if layer.use_bias != has_torch_bias:
            raise ValueError(
                f"bias mismatch at {prefix!r}: timm {'has' if has_torch_bias else 'has no'} "
                f"bias, Keras layer {layer.path!r} use_bias={layer.use_bias}"
            )
        if layer.use_bias:
            self.assign(layer.bias, self.take(f"{prefix}.bias"), f"{prefix}.bias")

    def norm(self, layer, prefix):
        self.assign(layer.gamma, self.take(f"{prefix}.weight"), f"{prefix}.weight")
        self.assign(layer.beta, self.take(f"{prefix}.bias"), f"{prefix}.bias")
        if isinstance(layer, keras.layers.BatchNormalization):
            for name, key in (("moving_mean", "running_mean"), ("moving_variance", "running_var")):
                value = self.take(f"{prefix}.{key}")
                self.assign(getattr(layer, name), value, f"{prefix}.{key}")

    def stem(self, layer: Stem, prefix):
        self.conv(layer.conv1, f"{prefix}.conv1")
        self.norm(layer.norm1, f"{prefix}.norm1")
        self.conv(layer.conv2, f"{prefix}.conv2")

    def mbconv(self, block: MBConvBlock, prefix):
        if block.shortcut is not None:
            self.conv(block.shortcut, f"{prefix}.shortcut.expand")
        self.norm(block.pre_norm, f"{prefix}.pre_norm")
        self.conv(block.conv1, f"{prefix}.conv1_1x1")
        self.norm(block.norm1, f"{prefix}.norm1")
        self.conv(block.conv2, f"{prefix}.conv2_kxk")
        self.norm(block.norm2, f"{prefix}.norm2")
        self.squeeze_excite(block.se, f"{prefix}.{'se_early' if block.se_before_norm else 'se'}")
        self.conv(block.conv3, f"{prefix}.conv3_1x1")

    def squeeze_excite(self, se: SqueezeExcite, prefix):
        self.conv(se.reduce, f"{prefix}.fc1")
        self.conv(se.expand, f"{prefix}.fc2")

    def transformer(self, block: TransformerBlock, prefix, window=None):
        if block.shortcut is not None:
            self.dense(block.shortcut, f"{prefix}.shortcut.expand")
        self.norm(block.norm1, f"{prefix}.norm1.norm" if block.strides == 2 else f"{prefix}.norm1")
        self.attention(block.attn, f"{prefix}.attn", window)
        self.norm(block.norm2, f"{prefix}.norm2")
        self.dense(block.fc1, f"{prefix}.mlp.fc1")
        self.dense(block.fc2, f"{prefix}.mlp.fc2")
        for scale, key in ((block.layer_scale1, "ls1"), (block.layer_scale2, "ls2")):
            if scale is not None:
                self.layer_scale(scale, f"{prefix}.{key}")

    def layer_scale(self, layer: LayerScale, prefix):
        self.assign(layer.gamma, self.take(f"{prefix}.gamma"), f"{prefix}.gamma")

    def attention(self, attn: RelativeAttention, prefix, window=None):
        self.dense(attn.qkv, f"{prefix}.qkv")
        self.dense(attn.proj, f"{prefix}.proj")
        if attn.bias_type == "mlp":
            self.dense(attn.relative_mlp1, f"{prefix}.rel_pos.mlp.fc1")
            self.dense(attn.relative_mlp2, f"{prefix}.rel_pos.mlp.fc2")
            return
        key = f"{prefix}.rel_pos.relative_position_bias_table"
        table = self.take(key)
        if table.shape != tuple(attn.relative_table.shape):
            # Another feature-map size: timm's interpolation. Without the
            # source window (a bare state dict), assume it square, as timm does.
            new_size = (attn.height, attn.width)
            if window:
                table = resize_relative_table(table, window, new_size)
            else:
                table = resize_square_table(table, new_size, repr(key))
        self.assign(attn.relative_table, table, key)

    def skip(self, prefixes):
        """Mark every tensor under `prefixes` used without reading it."""
        self.used.update(k for k in self.state if k.startswith(prefixes))


def load_timm_state_dict(model, state_dict, windows=None, skip_head: bool = False) -> None:
    """Load a timm CoAtNet state dict into a keras_coatnet model.

    Args:
        model: A model from `keras_coatnet.create_model` (or `CoAtNet`) with
            the architecture of the checkpoint, at any input size (relative
            tables are resized to it).
        state_dict: `{name: tensor or array}` as `timm_model.state_dict()`
            or `torch.load(checkpoint)` returns it.
        windows: Optional `{timm attention module path: (H, W)}` feature
            sizes of the checkpoint's tables, for non-square sources; by
            default sources are taken as square (timm's own rule).
        skip_head: Leave the model's classifier (`head.fc`) as it is (another
            class count), and ignore the checkpoint's head when the model has
            none (`include_top=False`). Defaults to `False`: the model needs
            `include_top=True` and the checkpoint's classes.

    Raises:
        ValueError: If any variable or tensor is missing, left over, or of
            the wrong shape. Nothing is assigned in that case.
    """
    _load(model, _State.of_dict(state_dict), windows, skip_head)


def load_timm_file(model, path: str, skip_head: bool = False) -> None:
    """`load_timm_state_dict` from a safetensors file, read one tensor at a time.

    Every shape is checked from the file's header before the first tensor is
    read; the file is never held in memory whole.
    """
    with TensorFile(path) as tensors:
        _load(model, _State.of_file(tensors), None, skip_head)


def _load(model, state: _State, windows, skip_head) -> None:
    plan = _Plan(state)
    windows = windows or {}
    plan.stem(model.get_layer(STEM), STEM)
    for layer in model.layers:
        parsed = parse_block_name(layer.name)
        if parsed is None:
            continue
        prefix = f"stages.{parsed[0] - 1}.blocks.{parsed[1]}"
        if isinstance(layer, MBConvBlock):
            plan.mbconv(layer, prefix)
        elif isinstance(layer, TransformerBlock):
            plan.transformer(layer, prefix, windows.get(f"{prefix}.attn"))
    _plan_head(plan, model, skip_head)
    unused = sorted(set(state) - plan.used)
    if unused:
        raise ValueError(
            f"{len(unused)} timm tensor(s) have no place in model {model.name!r}, "
            f"first {unused[0]!r}; is it the same architecture?"
        )
    targets = {id(v) for v, _ in plan.pairs}
    classifier = {id(v) for v in model.get_layer(HEAD_LAYER).weights} if plan.head_skipped else ()
    # The bias caches are state, not weights: model.weights leaves them out.
    missing = [v.path for v in model.weights if id(v) not in targets and id(v) not in classifier]
    if missing:
        raise ValueError(f"the timm state dict gives no value for {missing[0]!r}")
    for variable, value in plan.pairs:
        variable.assign(np.asarray(value))


def _plan_head(plan, model, skip_head):
    names = {layer.name for layer in model.layers}
    if HEAD_LAYER not in names:
        if not skip_head:
            raise ValueError("load_timm_state_dict needs a model with include_top=True")
        plan.skip(HEAD_KEYS)
        return
    if HEAD_PRE_LOGITS in names:
        plan.norm(model.get_layer(HEAD_NORM), "head.norm")
        plan.dense(model.get_layer(HEAD_PRE_LOGITS), "head.pre_logits.fc")
    else:
        plan.norm(model.get_layer(HEAD_NORM), "norm")
    if skip_head:
        plan.skip(CLASSIFIER_KEYS)
        plan.head_skipped = True
    else:
        plan.dense(model.get_layer(HEAD_LAYER), "head.fc")


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)
