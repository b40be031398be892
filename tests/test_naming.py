"""Layer names are part of the weight format: written and read back by `keras_coatnet.naming`."""

from helpers import tiny_model

from keras_coatnet.naming import HEAD_LAYER, block_name, parse_block_name


def test_layer_names_are_pinned():
    # Converters and .weights.h5 files find layers by these names: changing
    # one breaks every saved file and the timm mapping.
    names = [layer.name for layer in tiny_model().layers]
    assert names == [
        "images",
        "preprocessing",
        "stem",
        "stage1_block0",
        "stage2_block0",
        "stage2_block1",
        "stage3_block0",
        "stage3_block1",
        "stage4_block0",
        "head_pool",
        "head_norm",
        "head_pre_logits",
        HEAD_LAYER,
    ]
    assert HEAD_LAYER == "predictions"


def test_block_names_read_back():
    assert block_name(3, 12) == "stage3_block12"
    assert parse_block_name(block_name(3, 12)) == (3, 12)
    assert parse_block_name("stage10_block0") == (10, 0)
    others = ("stem", "stage3", "stage3_block", "stage3_block0x", "stage3_block0/attn", HEAD_LAYER)
    assert [parse_block_name(name) for name in others] == [None] * len(others)
