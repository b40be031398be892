"""What one CoAtNet architecture is: `StageConfig` and `CoAtNetConfig`, validated.

Every numerical knob has a name and a documented default. The table of
variants built from these is `keras_coatnet.configs.CONFIGS`. Imports no
framework (the command line lists models without TensorFlow).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BLOCK_TYPES = ("mbconv", "transformer")
PADDINGS = ("symmetric", "same")
POOL_TYPES = ("avg", "max", "max3")
# Every CoAtNet halves its input five times (`CoAtNetConfig.reduction`).
SIZE_STEP = 32
CHOICES = {
    "conv_activation": ("gelu", "silu"),
    "se_activation": ("silu", "relu"),
    "expand_from": ("output", "input"),
    "se_from": ("output", "hidden"),
    "mbconv_stride": ("depthwise", "pool"),
    "attention_width": ("output", "input"),
    "transformer_norm": ("layernorm", "batchnorm"),
    "relative_bias": ("table", "mlp"),
    "padding": PADDINGS,
    "pool_type": POOL_TYPES,
}


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
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(
                f"block_type must be one of {BLOCK_TYPES}, received: {self.block_type!r}"
            )
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, received: {self.depth!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, received: {self.dim!r}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, received: {self.stride!r}")


@dataclass(frozen=True)
class CoAtNetConfig:
    """Architecture of one CoAtNet variant.

    Args:
        name: Variant name, e.g. `"coatnet-0"`.
        stem_depth: Convolutions in the stem (S0). Only 2 is supported.
        stem_dim: Channels of the stem.
        stages: Stages after the stem (S1..S4; CoAtNet-6/7 split S3 in two).
        head_size: Channels per attention head.
        expand_ratio: Inverted-bottleneck expansion of MBConv (of the block's
            output channels) and of the transformer FFN.
        se_ratio: Squeeze-excite bottleneck as a fraction of the block's
            output channels.
        head_hidden_size: Width of the tanh pre-logits dense layer of the
            classifier head; `None` for no pre-logits layer.
        bn_epsilon: BatchNorm epsilon (PyTorch's 1e-5 matches timm).
        bn_momentum: BatchNorm moving-average momentum (Keras convention;
            0.9 is PyTorch's 0.1).
        ln_epsilon: LayerNorm epsilon (timm uses 1e-6).
        approximate_gelu: `False` for exact (erf) GELU as in timm; `True`
            for the tanh approximation used by Google's TF code.
        padding: Padding of stride-2 3x3 convolutions: `"symmetric"` pads one
            pixel on every side as PyTorch does; `"same"` is TF's `same`,
            which pads only bottom/right for even inputs.
        pool_type: Downsampling pool of the shortcuts and of the transformer
            input: `"avg"` or `"max"` 2x2 stride 2 (timm's `avg2` / `max2`;
            `"avg"` in every published model), or `"max3"`, 3x3 stride 2
            with one pixel of padding (timm's `max`, used by
            `coatnet_rmlp_1_rw_224`).
        stem_hidden_dim: Channels of the first stem convolution; `None` for
            `stem_dim` (the paper). timm's rw variants use half.
        conv_activation: Activation of the stem and the MBConv blocks:
            `"gelu"` (paper) or `"silu"` (timm rw).
        pre_norm_activation: Apply `conv_activation` after the MBConv
            pre-norm as well (timm rw: `True`; paper: `False`).
        expand_from: MBConv hidden width is `expand_ratio` times the block's
            `"output"` channels (paper) or its `"input"` channels (timm rw).
        se_from: Squeeze-excite bottleneck is `se_ratio` times the block's
            `"output"` channels (paper) or its `"hidden"` (expanded)
            channels (timm rw).
        se_activation: Activation inside squeeze-excite: `"silu"` or `"relu"`.
        se_before_norm: Squeeze-excite between the depthwise convolution and
            its norm instead of after the norm and activation (timm's
            `attn_early`).
        conv_output_bias: Bias on the last 1x1 convolution of MBConv and on
            its shortcut projection (paper: `True`; most rw: `False`).
        mbconv_stride: Where a stride-2 MBConv block downsamples: in the
            `"depthwise"` convolution (paper), or by 2x2 average `"pool"`ing
            after the pre-norm (timm's `stride_mode="pool"`).
        attention_width: Width of q, k, v in a transformer block that widens
            the map: the block's `"output"` channels (paper), or its
            `"input"` channels with the output projection widening (timm rw,
            `expand_first=False`). Heads = width / `head_size`.
        transformer_shortcut_bias: Bias on the transformer shortcut
            projection.
        transformer_norm: Norm of the transformer blocks and of the head:
            `"layernorm"` or `"batchnorm"` (`coatnet_bn_0_rw_224`), with
            epsilon `ln_epsilon` either way.
        layer_scale: Initial value of a learned per-channel scale on both
            transformer branches (timm's `init_values`), or `None` for none.
        relative_bias: Source of the relative bias w[i-j]: a learned
            `"table"` (paper), or `"mlp"`: a 2-layer ReLU MLP of width
            `relative_mlp_dim` over log-spaced offsets
            `sign(d) * log(1 + |d|)` (timm's rmlp variants, `RelPosMlp` in
            its "cr" mode).
        relative_mlp_dim: Hidden width of that MLP.
        mean: Per-channel input mean on the 0..1 scale used by the built-in
            preprocessing.
        std: Per-channel input std on the 0..1 scale.
        default_size: Image side the variant is evaluated at.
        source: Where the numbers come from.
    """

    name: str
    stem_dim: int
    stages: tuple[StageConfig, ...]
    stem_depth: int = 2
    head_size: int = 32
    expand_ratio: float = 4.0
    se_ratio: float = 0.25
    head_hidden_size: int | None = None
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    ln_epsilon: float = 1e-6
    approximate_gelu: bool = False
    padding: str = "symmetric"
    pool_type: str = "avg"
    stem_hidden_dim: int | None = None
    conv_activation: str = "gelu"
    pre_norm_activation: bool = False
    expand_from: str = "output"
    se_from: str = "output"
    se_activation: str = "silu"
    se_before_norm: bool = False
    conv_output_bias: bool = True
    mbconv_stride: str = "depthwise"
    attention_width: str = "output"
    transformer_shortcut_bias: bool = True
    transformer_norm: str = "layernorm"
    layer_scale: float | None = None
    relative_bias: str = "table"
    relative_mlp_dim: int = 512
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    default_size: int = 224
    source: str = ""

    def __post_init__(self):
        if self.stem_depth != 2:
            raise ValueError(f"stem_depth must be 2, received: {self.stem_depth!r}")
        if not self.stages:
            raise ValueError("stages must not be empty, received: ()")
        for stage in self.stages:
            if not isinstance(stage, StageConfig):
                raise ValueError(f"stages must hold StageConfig objects, received: {stage!r}")
            if stage.block_type == "transformer" and stage.dim % self.head_size:
                raise ValueError(
                    f"transformer width {stage.dim} is not a multiple of head_size={self.head_size}"
                )
        for field, allowed in CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, received: {value!r}")
        for field in ("stem_hidden_dim", "head_hidden_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{field} must be None or a positive int, received: {value!r}")
        if self.layer_scale is not None and not self.layer_scale > 0:
            raise ValueError(f"layer_scale must be None or > 0, received: {self.layer_scale!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, received: {self.mean!r}, {self.std!r}")

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

    def replace(self, **changes) -> CoAtNetConfig:
        """Return a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
