"""Layer names the weight format depends on, written and read back in one place.

Converters find layers by name and `.weights.h5` files record them, so these
names are part of the weight format: `stem`, `stage2_block0` (stage 2, its
first block), `head_norm`, `predictions` (the classifier). Every other module
takes these names from here. Imports no framework.
"""

from __future__ import annotations

import re

# Layers of the functional model, in graph order.
INPUT = "images"
PREPROCESSING = "preprocessing"
STEM = "stem"
HEAD_POOL = "head_pool"
HEAD_NORM = "head_norm"
HEAD_PRE_LOGITS = "head_pre_logits"
HEAD_LAYER = "predictions"  # the classifier
# Every layer of the classification head (`include_top=True`), classifier last.
HEAD_LAYERS = (HEAD_POOL, HEAD_NORM, HEAD_PRE_LOGITS, HEAD_LAYER)
POOLING_LAYERS = {"avg": "avg_pool", "max": "max_pool"}
# The attention sublayer of a transformer block (holds the relative table).
ATTENTION = "attn"
_BLOCK = re.compile(r"stage([0-9]+)_block([0-9]+)")


def stage_name(stage: int) -> str:
    """`"stage{stage}"`: S1..S4 (S1..S5 for CoAtNet-6/7); the stem is S0."""
    return f"stage{stage}"


def block_name(stage: int, block: int) -> str:
    """`"stage{stage}_block{block}"`, blocks counted from 0 within the stage."""
    return f"{stage_name(stage)}_block{block}"


def parse_block_name(name: str) -> tuple[int, int] | None:
    """`(stage, block)` of a name `block_name` wrote, `None` for any other name."""
    match = _BLOCK.fullmatch(name)
    return (int(match[1]), int(match[2])) if match else None


def model_key(name: str) -> str:
    """The one spelling of a model name for look-ups: lower case, `_` for `-`.

    `"CoAtNet-0"`, `"coatnet-0"` and `"coatnet_0"` name the same model, in
    `get_config`, the weights registry and the command line alike.
    """
    return name.lower().replace("-", "_")


def keras_name(name: str) -> str:
    """A model name as a Keras model's `name` (`"coatnet-0"` -> `"coatnet_0"`)."""
    return name.replace("-", "_")


def split_tag(tag: str) -> tuple[str, str]:
    """`(model, pretrained tag)` of a timm tag: `"coatnet_0_rw_224.sw_in1k"` ->
    `("coatnet_0_rw_224", "sw_in1k")`; the second is `""` without a dot."""
    model, _, pretrained = tag.partition(".")
    return model, pretrained
