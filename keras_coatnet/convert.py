"""Convert timm CoAtNet models and checkpoints to keras_coatnet.

torch and timm are imported lazily, only by the functions that need them;
`load_timm_state_dict` itself needs neither (it takes NumPy arrays too).

Every variable of the Keras model is matched with exactly one tensor of the
timm state dict and every tensor is used; shapes are checked for all of them
before the first assignment, so a checkpoint that does not fit raises a
`ValueError` naming the first mismatch and leaves the model untouched.

Layout conversions: PyTorch convolutions are `(out, in, kh, kw)` and Keras
`(kh, kw, in, out)`; depthwise `(C, 1, kh, kw)` becomes `(kh, kw, C, 1)`;
1x1 convolutions and linear layers become dense `(in, out)` kernels. The
fused q/k/v projection keeps timm's head-major channel order, so it copies
as it is. Relative tables of another feature-map size are resized with
`keras_coatnet.resize.resize_relative_table` (timm's interpolation).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_coatnet.configs import get_config, timm_names
from keras_coatnet.layers import (
    LayerScale,
    MBConvBlock,
    RelativeAttention,
    SqueezeExcite,
    Stem,
    TransformerBlock,
)
from keras_coatnet.naming import HEAD_LAYER, parse_block_name
from keras_coatnet.resize import resize_relative_table

# timm buffers that are derived state, not weights.
_IGNORED_SUFFIXES = (
    "num_batches_tracked",
    "relative_position_index",
    "rel_coords_log",
)


class _Plan:
    """Collects `(keras variable, array)` pairs and the timm keys they use."""

    def __init__(self, state):
        self.state = state
        self.used = set()
        self.pairs = []

    def take(self, key):
        if key not in self.state:
            raise ValueError(f"the timm state dict has no {key!r}")
        self.used.add(key)
        return np.asarray(self.state[key], dtype="float32")

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
            old = window or _square_window(table.shape[0], key)
            table = resize_relative_table(table, old, (attn.height, attn.width))
        self.assign(attn.relative_table, table, key)


def _square_window(rows, key):
    side = (int(round(rows**0.5)) + 1) // 2
    if (2 * side - 1) ** 2 != rows:
        raise ValueError(
            f"{key!r} has {rows} rows, not (2k-1)^2 for a square window; "
            "resize it with keras_coatnet.resize.resize_relative_table and the window size"
        )
    return side


def load_timm_state_dict(model, state_dict, windows=None) -> None:
    """Load a timm CoAtNet state dict into a keras_coatnet model.

    Args:
        model: A model from `keras_coatnet.create_model` (or `CoAtNet`) with
            the architecture of the checkpoint, `include_top=True`, at any
            input size (relative tables are resized to it).
        state_dict: `{name: tensor or array}` as `timm_model.state_dict()`
            or `torch.load(checkpoint)` returns it.
        windows: Optional `{timm attention module path: (H, W)}` feature
            sizes of the checkpoint's tables, for non-square sources; by
            default sources are taken as square (timm's own rule).

    Raises:
        ValueError: If any variable or tensor is missing, left over, or of
            the wrong shape. Nothing is assigned in that case.
    """
    state = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
    plan = _Plan(state)
    windows = windows or {}
    plan.stem(model.get_layer("stem"), "stem")
    for layer in model.layers:
        parsed = parse_block_name(layer.name)
        if parsed is None:
            continue
        prefix = f"stages.{parsed[0] - 1}.blocks.{parsed[1]}"
        if isinstance(layer, MBConvBlock):
            plan.mbconv(layer, prefix)
        elif isinstance(layer, TransformerBlock):
            plan.transformer(layer, prefix, windows.get(f"{prefix}.attn"))
    _plan_head(plan, model)
    unused = sorted(set(state) - plan.used)
    if unused:
        raise ValueError(
            f"{len(unused)} timm tensor(s) have no place in model {model.name!r}, "
            f"first {unused[0]!r}; is it the same architecture?"
        )
    targets = {id(v) for v, _ in plan.pairs}
    # The bias caches are state, not weights: model.weights leaves them out.
    missing = [v.path for v in model.weights if id(v) not in targets]
    if missing:
        raise ValueError(f"the timm state dict gives no value for {missing[0]!r}")
    for variable, value in plan.pairs:
        variable.assign(value)


def _plan_head(plan, model):
    names = {layer.name for layer in model.layers}
    if HEAD_LAYER not in names:
        raise ValueError("load_timm_state_dict needs a model with include_top=True")
    if "head_pre_logits" in names:
        plan.norm(model.get_layer("head_norm"), "head.norm")
        plan.dense(model.get_layer("head_pre_logits"), "head.pre_logits.fc")
    else:
        plan.norm(model.get_layer("head_norm"), "norm")
    plan.dense(model.get_layer(HEAD_LAYER), "head.fc")


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def _timm_model(model_or_name, pretrained):
    torch, timm = _import()
    if isinstance(model_or_name, str):
        model = timm.create_model(model_or_name, pretrained=pretrained)
    else:
        model = model_or_name
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a timm model or name, received: {model_or_name!r}")
    return model.eval()


def _import():
    from keras_coatnet._timm import import_timm

    return import_timm()


def architecture(timm_model) -> str:
    """The timm architecture name of a timm model (e.g. `"coatnet_0_rw_224"`)."""
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ValueError("the timm model carries no pretrained_cfg['architecture']")
    return name


def from_timm(
    model_or_name,
    input_shape=None,
    pretrained: bool = False,
    classifier_activation="softmax",
    **kwargs,
):
    """A keras_coatnet model with the weights of a timm CoAtNet.

    Args:
        model_or_name: A timm CoAtNet (`timm.create_model(...)`, with any
            weights loaded), or a timm model name or tag such as
            `"coatnet_0_rw_224.sw_in1k"`.
        input_shape: `(H, W, 3)` of the Keras model; defaults to the timm
            model's image size. Another size resizes the relative tables
            the way timm does.
        pretrained: With a name, ask timm for its published weights (this
            downloads through timm / the Hugging Face hub).
        classifier_activation: As for the builders. Defaults to `"softmax"`.
        **kwargs: Passed on to `keras_coatnet.CoAtNet` (e.g. `cache_bias`).

    Returns:
        A `keras.Model` with `include_top=True` and the timm model's classes.

    Raises:
        ImportError: If torch or timm is not installed (with the install hint).
        ValueError: For a timm model keras_coatnet has no config for.
    """
    from keras_coatnet.model import CoAtNet

    timm_model = _timm_model(model_or_name, pretrained)
    name = architecture(timm_model)
    try:
        config = get_config(name)
    except ValueError:
        raise ValueError(
            f"keras_coatnet has no config for timm architecture {name!r}; "
            f"convertible: {timm_names()}"
        ) from None
    height, width = timm_model.img_size
    if input_shape is None:
        input_shape = (height, width, 3)
    windows = {
        module_name: tuple(module.window_size)
        for module_name, module in timm_model.named_modules()
        if hasattr(module, "relative_position_bias_table")
    }
    windows = {k[: -len(".rel_pos")]: v for k, v in windows.items()}
    model = CoAtNet(
        config,
        input_shape=input_shape,
        classes=timm_model.num_classes,
        classifier_activation=classifier_activation,
        **kwargs,
    )
    load_timm_state_dict(model, timm_model.state_dict(), windows=windows)
    return model
