"""What one CoAtNet architecture is: `CoAtNetConfig` and its sub-configs, validated.

As timm nests `MaxxVitConvCfg` and `MaxxVitTransformerCfg` in `MaxxVitCfg`,
`CoAtNetConfig` holds the layout and one sub-config per kind of layer, named
as that layer's arguments: `MBConvConfig` (`MBConvBlock`, and the stem's
convolution settings), `TransformerConfig` (`TransformerBlock`) and
`HeadConfig` (the classifier). The builder passes their fields as keyword
arguments; each choice is checked once, in its dataclass, which a block
built directly validates through too. The flat names of earlier versions
(`FLAT_FIELDS`) still read and `replace`. Imports no framework.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

BLOCK_TYPES = ("mbconv", "transformer")
PADDINGS = ("symmetric", "same")
POOL_TYPES = ("avg", "max", "max3")
CONV_ACTIVATIONS = ("gelu", "silu")
SE_ACTIVATIONS = ("silu", "relu")
NORMS = ("layernorm", "batchnorm")
RELATIVE_BIASES = ("table", "mlp")
# Every CoAtNet halves its input five times (`CoAtNetConfig.reduction`).
SIZE_STEP = 32


def check_choice(name: str, value, allowed: tuple) -> None:
    """A ValueError quoting `value` unless it is one of `allowed`: the one choice check."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, received: {value!r}")


def _check_positive(name: str, value, integer: bool = False, optional: bool = False) -> None:
    if optional and value is None:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "a positive int" if integer else "a positive number"
        raise ValueError(
            f"{name} must be {'None or ' if optional else ''}{what}, received: {value!r}"
        )


def is_image_size(size) -> bool:
    """Whether `size` is an image side every CoAtNet takes: a positive multiple of 32."""
    return (
        isinstance(size, int)
        and not isinstance(size, bool)
        and size >= SIZE_STEP
        and not (size % SIZE_STEP)
    )


def check_image_size(size, flag: str = "--image-size", context: str = "") -> int:
    """`size`, or a ValueError naming `flag`: the one image-size rule (see `is_image_size`).

    Args:
        size: The side to check.
        flag: What the user gave it as (`"--image-size"`, `"input height"`).
        context: Appended to the message (where the value came from, why).
    """
    if not is_image_size(size):
        raise ValueError(
            f"{flag} must be a positive multiple of {SIZE_STEP}, received: {size!r}{context}"
        )
    return size


class _Settings:
    """What the sub-configs share: `CHOICES` and `POSITIVE` checked in `__post_init__`."""

    CHOICES: ClassVar[dict[str, tuple]] = {}
    # Fields that must be positive: `int`, or `float` for any number; `None`
    # is allowed where it is the default.
    POSITIVE: ClassVar[dict[str, type]] = {}

    def __post_init__(self):
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for f in dataclasses.fields(self):
            if f.name in self.POSITIVE:
                integer = self.POSITIVE[f.name] is int
                _check_positive(f.name, getattr(self, f.name), integer, f.default is None)

    def replace(self, **changes):
        """Return a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, layer):
        """The settings `layer` stores under the fields' names, checked as a config's are."""
        return cls(**{f.name: getattr(layer, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class MBConvConfig(_Settings):
    """`MBConvBlock`'s arguments, under its names; the stem takes its settings from here too.

    The defaults, the field values, are the paper's block (timm's
    `coatnet_N_224`); the stem reads `activation`, `bn_epsilon`,
    `bn_momentum`, `approximate_gelu` and `padding` (timm's reads `conv_cfg`).

    Args:
        expand_ratio: Hidden width of the inverted bottleneck, a multiple of
            the channels `expand_from` names (`4.0`).
        expand_from: `"output"` channels (paper) or `"input"` (timm rw).
        se_ratio: Squeeze-excite bottleneck, a fraction of the channels
            `se_from` names (`0.25`).
        se_from: `"output"` channels (paper) or `"hidden"` (expanded) ones.
        se_activation: Activation inside squeeze-excite: `"silu"`, `"relu"`.
        se_before_norm: Squeeze-excite between the depthwise convolution and
            its norm, not after the activation (timm's `attn_early`).
        activation: `"gelu"` (paper) or `"silu"` (timm rw), stem included.
        pre_norm_activation: `activation` after the pre-norm too (timm rw).
        output_bias: Bias on the last 1x1 convolution and the shortcut
            projection (`True`; most rw: `False`).
        stride_mode: Where a stride-2 block downsamples: the `"depthwise"`
            convolution (paper), or a 2x2 average `"pool"` after the pre-norm.
        bn_epsilon: BatchNorm epsilon (`1e-5`, PyTorch's; Keras uses 1e-3).
        bn_momentum: BatchNorm momentum, Keras convention (`0.9`: PyTorch 0.1).
        approximate_gelu: tanh GELU (Google's TF code) instead of the exact
            erf GELU (timm).
        padding: Of the stride-2 3x3 convolutions: `"symmetric"`, one pixel
            on every side (PyTorch), or TF's `"same"`, bottom/right only.
        pool_type: Shortcut downsampling: `"avg"` or `"max"` 2x2 stride 2
            (timm's `avg2`/`max2`), or `"max3"`, 3x3 stride 2 padded by one
            (timm's `max`, in `coatnet_rmlp_1_rw_224`).
    """

    expand_ratio: float = 4.0
    expand_from: str = "output"
    se_ratio: float = 0.25
    se_from: str = "output"
    se_activation: str = "silu"
    se_before_norm: bool = False
    activation: str = "gelu"
    pre_norm_activation: bool = False
    output_bias: bool = True
    stride_mode: str = "depthwise"
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    approximate_gelu: bool = False
    padding: str = "symmetric"
    pool_type: str = "avg"

    CHOICES: ClassVar[dict[str, tuple]] = {
        "expand_from": ("output", "input"),
        "se_from": ("output", "hidden"),
        "se_activation": SE_ACTIVATIONS,
        "activation": CONV_ACTIVATIONS,
        "stride_mode": ("depthwise", "pool"),
        "padding": PADDINGS,
        "pool_type": POOL_TYPES,
    }
    POSITIVE: ClassVar[dict[str, type]] = {
        "expand_ratio": float,
        "se_ratio": float,
        "bn_epsilon": float,
    }


@dataclass(frozen=True)
class TransformerConfig(_Settings):
    """`TransformerBlock`'s arguments, under its names; the defaults are the paper's.

    Args:
        head_size: Channels per attention head (`32`).
        attention_width: Width of q, k, v in a block that widens the map: the
            `"output"` channels (paper), or the `"input"` ones with the output
            projection widening (timm rw, `expand_first=False`).
        expand_ratio: Expansion of the feed-forward network (`4.0`).
        norm: `"layernorm"` or `"batchnorm"` (`coatnet_bn_0_rw_224`), with
            epsilon `ln_epsilon` either way.
        ln_epsilon: Epsilon of the norms (`1e-6`, timm's).
        bn_momentum: BatchNorm momentum with `norm="batchnorm"` (`0.9`).
        shortcut_bias: Bias on the shortcut projection (`True`).
        layer_scale: Initial value of a learned per-channel scale on both
            branches (timm's `init_values`), or `None` for none.
        relative_bias: The relative bias w[i-j]: a learned `"table"` (paper),
            or `"mlp"`, a 2-layer ReLU MLP of width `relative_mlp_dim` over
            offsets `sign(d) * log(1 + |d|)` (timm's rmlp, `RelPosMlp` "cr").
        relative_mlp_dim: Hidden width of that MLP (`512`).
        approximate_gelu: tanh GELU in the feed-forward network.
        pool_type: Downsampling of the shortcut and the attention input (see
            `MBConvConfig.pool_type`).
    """

    head_size: int = 32
    attention_width: str = "output"
    expand_ratio: float = 4.0
    norm: str = "layernorm"
    ln_epsilon: float = 1e-6
    bn_momentum: float = 0.9
    shortcut_bias: bool = True
    layer_scale: float | None = None
    relative_bias: str = "table"
    relative_mlp_dim: int = 512
    approximate_gelu: bool = False
    pool_type: str = "avg"

    CHOICES: ClassVar[dict[str, tuple]] = {
        "attention_width": ("output", "input"),
        "norm": NORMS,
        "relative_bias": RELATIVE_BIASES,
        "pool_type": POOL_TYPES,
    }
    POSITIVE: ClassVar[dict[str, type]] = {
        "head_size": int,
        "expand_ratio": float,
        "ln_epsilon": float,
        "layer_scale": float,
        "relative_mlp_dim": int,
    }


@dataclass(frozen=True)
class HeadConfig(_Settings):
    """The classifier head (timm's `NormMlpClassifierHead`, or its rw head).

    Args:
        hidden_size: Width of the tanh pre-logits dense layer after pooling
            and the norm (the paper's head); `None` for none, the norm then
            applied at every position before pooling (timm's rw head).
        norm: `"layernorm"` or `"batchnorm"`.
        ln_epsilon: Epsilon of the norm (`1e-6`).
        bn_momentum: Momentum of the norm with `norm="batchnorm"` (`0.9`).
    """

    hidden_size: int | None = None
    norm: str = "layernorm"
    ln_epsilon: float = 1e-6
    bn_momentum: float = 0.9

    CHOICES: ClassVar[dict[str, tuple]] = {"norm": NORMS}
    POSITIVE: ClassVar[dict[str, type]] = {"hidden_size": int, "ln_epsilon": float}


@dataclass(frozen=True)
class StageConfig:
    """One stage: `depth` blocks of one type at one width.

    The first block applies `stride` (1 or 2); the others keep the resolution.
    """

    block_type: str
    depth: int
    dim: int
    stride: int = 2

    def __post_init__(self):
        check_choice("block_type", self.block_type, BLOCK_TYPES)
        _check_positive("depth", self.depth, integer=True)
        _check_positive("dim", self.dim, integer=True)
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, received: {self.stride!r}")


# The flat field names of earlier versions -> the sub-config fields each one
# sets in `CoAtNetConfig.replace`; reading one returns the first.
FLAT_FIELDS: dict[str, tuple[str, ...]] = {
    "head_size": ("transformer.head_size",),
    "expand_ratio": ("mbconv.expand_ratio", "transformer.expand_ratio"),
    "se_ratio": ("mbconv.se_ratio",),
    "head_hidden_size": ("head.hidden_size",),
    "bn_epsilon": ("mbconv.bn_epsilon",),
    "bn_momentum": ("mbconv.bn_momentum", "transformer.bn_momentum", "head.bn_momentum"),
    "ln_epsilon": ("transformer.ln_epsilon", "head.ln_epsilon"),
    "approximate_gelu": ("mbconv.approximate_gelu", "transformer.approximate_gelu"),
    "padding": ("mbconv.padding",),
    "pool_type": ("mbconv.pool_type", "transformer.pool_type"),
    "conv_activation": ("mbconv.activation",),
    "pre_norm_activation": ("mbconv.pre_norm_activation",),
    "expand_from": ("mbconv.expand_from",),
    "se_from": ("mbconv.se_from",),
    "se_activation": ("mbconv.se_activation",),
    "se_before_norm": ("mbconv.se_before_norm",),
    "conv_output_bias": ("mbconv.output_bias",),
    "mbconv_stride": ("mbconv.stride_mode",),
    "attention_width": ("transformer.attention_width",),
    "transformer_shortcut_bias": ("transformer.shortcut_bias",),
    "transformer_norm": ("transformer.norm", "head.norm"),
    "layer_scale": ("transformer.layer_scale",),
    "relative_bias": ("transformer.relative_bias",),
    "relative_mlp_dim": ("transformer.relative_mlp_dim",),
}
_SUB_CONFIGS = {"mbconv": MBConvConfig, "transformer": TransformerConfig, "head": HeadConfig}
# Fields that do not change the network: not in `CoAtNetConfig.architecture()`.
NOT_ARCHITECTURE = ("name", "source")
# Fields of earlier versions that belong to the weights, not the architecture.
EVALUATION_FIELDS = ("mean", "std", "default_size")


@dataclass(frozen=True)
class CoAtNetConfig:
    """Architecture of one CoAtNet variant.

    Args:
        name: Variant name, e.g. `"coatnet-0"`.
        stem_dim: Channels of the stem.
        stages: Stages after the stem (S1..S4; CoAtNet-6/7 split S3 in two).
        stem_depth: Convolutions in the stem (S0). Only 2 is supported.
        stem_hidden_dim: Channels of the first stem convolution; `None` for
            `stem_dim` (the paper). timm's rw variants use half.
        mbconv: The MBConv blocks' settings (and the stem's activation, norm
            and padding), an `MBConvConfig`.
        transformer: The transformer blocks' settings, a `TransformerConfig`.
        head: The classifier head's settings, a `HeadConfig`.
        source: Where the numbers come from.

    The input normalisation and the image size are not architecture: they
    belong to the weights' evaluation settings
    (`keras_coatnet.weights.eval_defaults(name)`: the checkpoint's, else a
    documented default).

    The flat names of `FLAT_FIELDS` read as attributes (`config.head_size`
    is `config.transformer.head_size`) and are accepted by `replace`.
    """

    name: str
    stem_dim: int
    stages: tuple[StageConfig, ...]
    stem_depth: int = 2
    stem_hidden_dim: int | None = None
    mbconv: MBConvConfig = field(default_factory=MBConvConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    source: str = ""

    def __post_init__(self):
        if self.stem_depth != 2:
            raise ValueError(f"stem_depth must be 2, received: {self.stem_depth!r}")
        _check_positive("stem_dim", self.stem_dim, integer=True)
        _check_positive("stem_hidden_dim", self.stem_hidden_dim, integer=True, optional=True)
        for name, kind in _SUB_CONFIGS.items():
            if not isinstance(value := getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, received: {value!r}")
        if not self.stages:
            raise ValueError("stages must not be empty, received: ()")
        head_size = self.transformer.head_size
        for stage in self.stages:
            if not isinstance(stage, StageConfig):
                raise ValueError(f"stages must hold StageConfig objects, received: {stage!r}")
            if stage.block_type == "transformer" and stage.dim % head_size:
                raise ValueError(
                    f"transformer width {stage.dim} is not a multiple of head_size={head_size}"
                )

    def __getattr__(self, name):
        # Only for names that are not attributes: the flat names of FLAT_FIELDS.
        if name in FLAT_FIELDS:
            sub, field_name = FLAT_FIELDS[name][0].split(".")
            return getattr(getattr(self, sub), field_name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def reduction(self) -> int:
        """Total downsampling factor (32 for every CoAtNet)."""
        factor = 2
        for stage in self.stages:
            factor *= stage.stride
        return factor

    @property
    def num_features(self) -> int:
        """Channels of the last feature map."""
        return self.stages[-1].dim

    def architecture(self) -> dict:
        """Every field the network is built from, as plain data (no name, source, eval settings)."""
        fields = dataclasses.asdict(self)
        return {key: value for key, value in fields.items() if key not in NOT_ARCHITECTURE}

    def replace(self, **changes) -> CoAtNetConfig:
        """Return a copy with `changes` applied (validated again).

        `changes` name fields (`stem_dim=16`, `mbconv=MBConvConfig(...)`) or
        the flat names of `FLAT_FIELDS` (`head_size=16`,
        `conv_activation="silu"`), which set the sub-config fields they
        stand for, after any sub-config given in the same call.
        """
        moved = [key for key in changes if key in EVALUATION_FIELDS]
        if moved:
            raise ValueError(
                f"{', '.join(moved)} belong to the weights' evaluation settings, not to "
                f"CoAtNetConfig (received: {', '.join(f'{k}={changes[k]!r}' for k in moved)}); "
                "the built-in preprocessing takes the weights' mean and std, and input_shape "
                "sets the size"
            )
        grouped: dict[str, dict] = {}
        for flat in [key for key in changes if key in FLAT_FIELDS]:
            value = changes.pop(flat)
            for path in FLAT_FIELDS[flat]:
                sub, field_name = path.split(".")
                grouped.setdefault(sub, {})[field_name] = value
        for sub, fields in grouped.items():
            changes[sub] = dataclasses.replace(changes.get(sub, getattr(self, sub)), **fields)
        return dataclasses.replace(self, **changes)
