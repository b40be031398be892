"""Layer names the weight format depends on, written and read back in one place.

Converters find layers by name and `.weights.h5` files record them, so these
names are part of the weight format: `stem`, `stage2_block0` (stage 2, its
first block), `predictions` (the classifier). Imports no framework.
"""

from __future__ import annotations

import re

HEAD_LAYER = "predictions"
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
