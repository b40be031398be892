"""Architecture configurations: one frozen dataclass and one table.

Each row cites where its numbers come from. Training knobs (drop path rate,
dropout) are builder arguments, not architecture fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BLOCK_TYPES = ("mbconv", "transformer")
PADDINGS = ("symmetric", "same")
POOL_TYPES = ("avg", "max")


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
        pool_type: Downsampling pool of the shortcut and of the transformer
            input, 2x2 stride 2: `"avg"` (timm) or `"max"` (the paper's text).
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
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, received: {self.padding!r}")
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, received: {self.pool_type!r}")
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


def get_config(name: str) -> CoAtNetConfig:
    """Look up a variant of `CONFIGS` by name (`"coatnet-0"` .. `"coatnet-7"`)."""
    key = name.lower().replace("_", "-")
    if key not in CONFIGS:
        raise ValueError(f"Unknown CoAtNet variant {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[key]
