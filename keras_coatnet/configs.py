"""Architecture configurations: one frozen dataclass and one table.

Each row cites where its numbers come from. Training knobs (drop path rate,
dropout) are builder arguments, not architecture fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BLOCK_TYPES = ("mbconv", "transformer")
PADDINGS = ("symmetric", "same")
POOL_TYPES = ("avg", "max", "max3")
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


def _cctt(depths, dims, **kwargs) -> CoAtNetConfig:
    """The standard C-C-T-T layout: `depths` and `dims` list S0..S4."""
    kinds = ("mbconv", "mbconv", "transformer", "transformer")
    stages = tuple(
        StageConfig(kind, depth, dim)
        for kind, depth, dim in zip(kinds, depths[1:], dims[1:], strict=True)
    )
    return CoAtNetConfig(
        stem_depth=depths[0],
        stem_dim=dims[0],
        stages=stages,
        head_hidden_size=dims[-1],
        **kwargs,
    )


def _scaled(dims, **kwargs) -> CoAtNetConfig:
    """CoAtNet-6/7: S3 is 8 MBConv at 1/16, then 42 stride-1 transformers."""
    depths = (2, 4, 8, 42, 2)
    kinds = ("mbconv", "mbconv", "mbconv", "transformer", "transformer")
    strides = (2, 2, 2, 1, 2)
    stages = tuple(
        StageConfig(kind, depth, dim, stride)
        for kind, depth, dim, stride in zip(kinds, depths, dims[1:], strides, strict=True)
    )
    return CoAtNetConfig(
        stem_dim=dims[0], stages=stages, head_hidden_size=dims[-1], head_size=128, **kwargs
    )


_TABLE3 = "paper Table 3; timm coatnet_{}_224"
CONFIGS: dict[str, CoAtNetConfig] = {
    "coatnet-0": _cctt(
        (2, 2, 3, 5, 2), (64, 96, 192, 384, 768), name="coatnet-0", source=_TABLE3.format(0)
    ),
    "coatnet-1": _cctt(
        (2, 2, 6, 14, 2), (64, 96, 192, 384, 768), name="coatnet-1", source=_TABLE3.format(1)
    ),
    "coatnet-2": _cctt(
        (2, 2, 6, 14, 2), (128, 128, 256, 512, 1024), name="coatnet-2", source=_TABLE3.format(2)
    ),
    "coatnet-3": _cctt(
        (2, 2, 6, 14, 2), (192, 192, 384, 768, 1536), name="coatnet-3", source=_TABLE3.format(3)
    ),
    "coatnet-4": _cctt(
        (2, 2, 12, 28, 2), (192, 192, 384, 768, 1536), name="coatnet-4", source=_TABLE3.format(4)
    ),
    # Head size 64 as the paper's appendix A.2 says; timm's coatnet_5_224 uses 32.
    "coatnet-5": _cctt(
        (2, 2, 12, 28, 2),
        (192, 256, 512, 1280, 2048),
        name="coatnet-5",
        head_size=64,
        source="paper Table 11 (appendix A.2); timm coatnet_5_224 with head size 64",
    ),
    # Paper appendix A.2, Table 12: 2/3 of S2's MBConv blocks move into S3 at
    # twice the width, head size 128.
    "coatnet-6": _scaled(
        (192, 192, 384, 768, 1536, 2048), name="coatnet-6", source="paper Table 12"
    ),
    "coatnet-7": _scaled(
        (192, 256, 512, 1024, 2048, 3072), name="coatnet-7", source="paper Table 12"
    ),
    # Not from the paper: a CPU-sized model for the README's digits run and tests.
    "coatnet-digits": CoAtNetConfig(
        name="coatnet-digits",
        stem_dim=32,
        stages=(
            StageConfig("mbconv", 1, 32),
            StageConfig("mbconv", 1, 64),
            StageConfig("transformer", 2, 96),
            StageConfig("transformer", 1, 128),
        ),
        head_hidden_size=128,
        default_size=64,
        source="keras_coatnet: C-C-T-T at 1/20 of CoAtNet-0's width, for CPU demos",
    ),
}


# timm 1.0.31 (`timm/models/maxxvit.py`): its paper-like configs and its own
# variants, which carry the only published ImageNet weights. Rows keep timm's
# model names so a timm tag maps to a row by dropping the pretrained tag.
_TIMM = "timm 1.0.31 maxxvit.py model_cfgs[{!r}]"


def _timm_layout(dims, depths, stem, default_size=224, **kwargs):
    """timm's `embed_dim`, `depths`, `stem_width` for a C-C-T-T model."""
    kinds = ("mbconv", "mbconv", "transformer", "transformer")
    stem_hidden, stem_dim = stem if isinstance(stem, tuple) else (None, stem)
    return CoAtNetConfig(
        stem_dim=stem_dim,
        stem_hidden_dim=stem_hidden,
        stages=tuple(
            StageConfig(kind, depth, dim)
            for kind, depth, dim in zip(kinds, depths, dims, strict=True)
        ),
        default_size=default_size,
        **kwargs,
    )


# `_rw_coat_cfg`: the docstring's "common differences" of timm's first models.
_RW_COAT = dict(
    conv_activation="silu",
    pre_norm_activation=True,
    expand_from="input",
    se_from="hidden",
    se_activation="relu",
    conv_output_bias=False,
    mbconv_stride="pool",
    attention_width="input",
)
# `_rw_max_cfg` (MaxViT-style defaults; used by the nano models): no
# activation after the pre-norm, SiLU squeeze-excite, strided depthwise conv.
_RW_MAX = dict(
    conv_activation="silu",
    expand_from="input",
    se_from="hidden",
    se_ratio=1 / 16,
    conv_output_bias=False,
    attention_width="input",
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_C0 = ((96, 192, 384, 768), (32, 64))
_C1 = ((96, 192, 384, 768), (32, 64))
_C2 = ((128, 256, 512, 1024), (64, 128))
_C3 = ((192, 384, 768, 1536), (96, 192))
_NANO = ((64, 128, 256, 512), (32, 64))


def _rw(cfg_name, dims_stem, depths, base, default_size=224, **overrides):
    dims, stem = dims_stem
    name = f"{cfg_name}_{default_size}"
    return name, _timm_layout(
        dims,
        depths,
        stem,
        default_size=default_size,
        name=name,
        source=_TIMM.format(cfg_name),
        **{**base, **overrides},
    )


_TIMM_ROWS = dict(
    [
        _rw("coatnet_pico_rw", _NANO, (2, 3, 5, 2), _RW_MAX, conv_output_bias=True, se_ratio=0.25),
        _rw(
            "coatnet_nano_rw",
            _NANO,
            (3, 4, 6, 3),
            _RW_MAX,
            mbconv_stride="pool",
            conv_output_bias=True,
            se_ratio=0.25,
        ),
        _rw(
            "coatnet_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            se_before_norm=True,
            transformer_shortcut_bias=False,
        ),
        _rw(
            "coatnet_1_rw",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            se_before_norm=True,
            transformer_shortcut_bias=False,
        ),
        _rw(
            "coatnet_2_rw",
            _C2,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            se_activation="silu",
        ),
        _rw(
            "coatnet_3_rw",
            _C3,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            se_activation="silu",
            layer_scale=1e-6,
        ),
        _rw(
            "coatnet_bn_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            se_before_norm=True,
            transformer_shortcut_bias=False,
            transformer_norm="batchnorm",
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
        ),
        _rw(
            "coatnet_rmlp_nano_rw",
            _NANO,
            (3, 4, 6, 3),
            _RW_MAX,
            conv_output_bias=True,
            se_ratio=0.25,
            relative_bias="mlp",
            relative_mlp_dim=384,
        ),
        _rw(
            "coatnet_rmlp_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            relative_bias="mlp",
        ),
        # timm: "rel_pos_dim=384, was supposed to be 512, woops"
        _rw(
            "coatnet_rmlp_1_rw",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            pool_type="max3",
            se_before_norm=True,
            transformer_shortcut_bias=False,
            relative_bias="mlp",
            relative_mlp_dim=384,
        ),
        _rw(
            "coatnet_rmlp_1_rw2",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            relative_bias="mlp",
        ),
        *[
            _rw(
                "coatnet_rmlp_2_rw",
                _C2,
                (2, 6, 14, 2),
                _RW_COAT,
                default_size=size,
                mbconv_stride="depthwise",
                se_activation="silu",
                layer_scale=1e-6,
                relative_bias="mlp",
            )
            for size in (224, 384)
        ],
        _rw(
            "coatnet_rmlp_3_rw",
            _C3,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv_stride="depthwise",
            se_activation="silu",
            layer_scale=1e-6,
            relative_bias="mlp",
        ),
    ]
)
# timm's "trying to be like the CoAtNet paper" configs: the paper rows above,
# except that coatnet_5_224 keeps head size 32.
_PAPER_ROWS = {
    f"coatnet_{n}_224": CONFIGS[f"coatnet-{n}"].replace(
        name=f"coatnet_{n}_224", source=_TIMM.format(f"coatnet_{n}")
    )
    for n in range(5)
}
_PAPER_ROWS["coatnet_5_224"] = CONFIGS["coatnet-5"].replace(
    name="coatnet_5_224", head_size=32, source=_TIMM.format("coatnet_5")
)
CONFIGS.update(_PAPER_ROWS)
CONFIGS.update(_TIMM_ROWS)


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


_BY_NORMALIZED = {_normalize(key): key for key in CONFIGS}


def get_config(name: str) -> CoAtNetConfig:
    """Look up a row of `CONFIGS` by name; `-` and `_` are interchangeable.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    key = _BY_NORMALIZED.get(_normalize(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"Unknown CoAtNet variant {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[key]
