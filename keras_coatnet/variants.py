"""Architecture configurations: one row per variant, each citing its source.

`CONFIGS` maps a variant name to its `CoAtNetConfig`: the paper's
CoAtNet-0..7 (Table 3 and appendix A.2), timm 1.0.31's configs under timm's
model names (they carry the only published weights), and a CPU-sized
`coatnet-digits`. Training knobs (drop path rate, dropout) are builder
arguments, not architecture fields. Imports no framework (the command line
lists models without TensorFlow).
"""

from __future__ import annotations

from keras_coatnet.config import (
    CoAtNetConfig,
    HeadConfig,
    MBConvConfig,
    StageConfig,
    TransformerConfig,
)
from keras_coatnet.naming import model_key

__all__ = [
    "CONFIGS",
    "CoAtNetConfig",
    "HeadConfig",
    "MBConvConfig",
    "StageConfig",
    "TransformerConfig",
    "get_config",
    "timm_names",
]


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
        head=HeadConfig(hidden_size=dims[-1]),
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
        stem_dim=dims[0],
        stages=stages,
        head=HeadConfig(hidden_size=dims[-1]),
        transformer=TransformerConfig(head_size=128),
        **kwargs,
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
        transformer=TransformerConfig(head_size=64),
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
        head=HeadConfig(hidden_size=128),
        source="keras_coatnet: C-C-T-T at 1/20 of CoAtNet-0's width, for CPU demos",
    ),
}


# timm 1.0.31 (`timm/models/maxxvit.py`): its paper-like configs and its own
# variants, which carry the only published ImageNet weights. Rows keep timm's
# model names so a timm tag maps to a row by dropping the pretrained tag.
_TIMM = "timm 1.0.31 maxxvit.py model_cfgs[{!r}]"


def _timm_layout(dims, depths, stem, **kwargs):
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
        **kwargs,
    )


# `_rw_coat_cfg`: the docstring's "common differences" of timm's first models.
_RW_COAT = (
    MBConvConfig(
        activation="silu",
        pre_norm_activation=True,
        expand_from="input",
        se_from="hidden",
        se_activation="relu",
        output_bias=False,
        stride_mode="pool",
    ),
    TransformerConfig(attention_width="input"),
)
# `_rw_max_cfg` (MaxViT-style defaults; used by the nano models): no
# activation after the pre-norm, SiLU squeeze-excite, strided depthwise conv.
_RW_MAX = (
    MBConvConfig(
        activation="silu",
        expand_from="input",
        se_from="hidden",
        se_ratio=1 / 16,
        output_bias=False,
    ),
    TransformerConfig(attention_width="input"),
)
_C0 = ((96, 192, 384, 768), (32, 64))
_C1 = ((96, 192, 384, 768), (32, 64))
_C2 = ((128, 256, 512, 1024), (64, 128))
_C3 = ((192, 384, 768, 1536), (96, 192))
_NANO = ((64, 128, 256, 512), (32, 64))


def _rw(cfg_name, dims_stem, depths, base, mbconv=(), transformer=(), head=(), **fields):
    """A timm row, `(name, config)`: `base`'s settings with the row's changes.

    `base` is an `(MBConvConfig, TransformerConfig)` pair; `mbconv`,
    `transformer` and `head` map sub-config fields to the row's values, and
    `fields` are the other `CoAtNetConfig` fields.
    """
    dims, stem = dims_stem
    name = f"{cfg_name}_{fields.pop('size', 224)}"
    return name, _timm_layout(
        dims,
        depths,
        stem,
        name=name,
        source=_TIMM.format(cfg_name),
        mbconv=base[0].replace(**dict(mbconv)),
        transformer=base[1].replace(**dict(transformer)),
        head=HeadConfig(**dict(head)),
        **fields,
    )


_TIMM_ROWS = dict(
    [
        _rw(
            "coatnet_pico_rw",
            _NANO,
            (2, 3, 5, 2),
            _RW_MAX,
            mbconv=dict(output_bias=True, se_ratio=0.25),
        ),
        _rw(
            "coatnet_nano_rw",
            _NANO,
            (3, 4, 6, 3),
            _RW_MAX,
            mbconv=dict(output_bias=True, se_ratio=0.25, stride_mode="pool"),
        ),
        _rw(
            "coatnet_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            mbconv=dict(se_before_norm=True),
            transformer=dict(shortcut_bias=False),
        ),
        _rw(
            "coatnet_1_rw",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise", se_before_norm=True),
            transformer=dict(shortcut_bias=False),
        ),
        _rw(
            "coatnet_2_rw",
            _C2,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise", se_activation="silu"),
        ),
        _rw(
            "coatnet_3_rw",
            _C3,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise", se_activation="silu"),
            transformer=dict(layer_scale=1e-6),
        ),
        # BatchNorm in the transformer blocks and the head.
        _rw(
            "coatnet_bn_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise", se_before_norm=True),
            transformer=dict(shortcut_bias=False, norm="batchnorm"),
            head=dict(norm="batchnorm"),
        ),
        _rw(
            "coatnet_rmlp_nano_rw",
            _NANO,
            (3, 4, 6, 3),
            _RW_MAX,
            mbconv=dict(output_bias=True, se_ratio=0.25),
            transformer=dict(relative_bias="mlp", relative_mlp_dim=384),
        ),
        _rw(
            "coatnet_rmlp_0_rw",
            _C0,
            (2, 3, 7, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise"),
            transformer=dict(relative_bias="mlp"),
        ),
        # timm: "rel_pos_dim=384, was supposed to be 512, woops"; 3x3 max
        # pooling in the shortcuts and the attention input (timm's `max`).
        _rw(
            "coatnet_rmlp_1_rw",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(pool_type="max3", se_before_norm=True),
            transformer=dict(
                pool_type="max3", shortcut_bias=False, relative_bias="mlp", relative_mlp_dim=384
            ),
        ),
        _rw(
            "coatnet_rmlp_1_rw2",
            _C1,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise"),
            transformer=dict(relative_bias="mlp"),
        ),
        *[
            _rw(
                "coatnet_rmlp_2_rw",
                _C2,
                (2, 6, 14, 2),
                _RW_COAT,
                size=size,
                mbconv=dict(stride_mode="depthwise", se_activation="silu"),
                transformer=dict(layer_scale=1e-6, relative_bias="mlp"),
            )
            for size in (224, 384)
        ],
        _rw(
            "coatnet_rmlp_3_rw",
            _C3,
            (2, 6, 14, 2),
            _RW_COAT,
            mbconv=dict(stride_mode="depthwise", se_activation="silu"),
            transformer=dict(layer_scale=1e-6, relative_bias="mlp"),
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
    name="coatnet_5_224",
    transformer=TransformerConfig(head_size=32),
    source=_TIMM.format("coatnet_5"),
)
CONFIGS.update(_PAPER_ROWS)
CONFIGS.update(_TIMM_ROWS)


_BY_KEY = {model_key(key): key for key in CONFIGS}


def get_config(name: str) -> CoAtNetConfig:
    """Look up a row of `CONFIGS` by name; `-` and `_` are interchangeable.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    key = _BY_KEY.get(model_key(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"Unknown CoAtNet variant {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[key]


def timm_names() -> list[str]:
    """Rows under timm's model names (`coatnet_0_rw_224`, ...): what timm checkpoints map to."""
    return sorted(name for name in CONFIGS if name.startswith("coatnet_"))
