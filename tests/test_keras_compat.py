"""Private Keras APIs stay in keras_coatnet/_keras_compat.py; its layer walker."""

import pathlib
import re

import keras
import numpy as np
from helpers import tiny_model

from keras_coatnet._keras_compat import seed_generators, walk_layers
from keras_coatnet.layers import RelativeAttention, TransformerBlock

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_coatnet"

# `keras.src`, the private saving module, and private attributes of Keras
# objects (read as `x._name`, or by name as `getattr(x, "_name")`).
PRIVATE = re.compile(
    r"keras\.src|saving_lib|[.'\"]_(layers|flatten_layers|seed_generators|tracker"
    r"|save_model|load_model|initial_epoch|current_epoch)\b"
)


def test_only_the_compat_module_uses_private_keras_apis():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keras_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "private Keras API outside _keras_compat.py:\n" + "\n".join(found)


def test_walk_layers_finds_each_nested_layer_once_depth_first():
    model = tiny_model(drop_path_rate=0.1)
    walked = list(walk_layers(model))
    blocks = [layer for layer in walked if isinstance(layer, TransformerBlock)]
    attention = [layer for layer in walked if isinstance(layer, RelativeAttention)]
    assert len(blocks) == 3  # TINY: two stage-3 blocks, one stage-4 block
    assert [block.attn for block in blocks] == attention  # the nested layer, once each
    assert len({id(layer) for layer in walked}) == len(walked)
    for block in blocks:  # depth first: a block, then its own sublayers
        assert walked.index(block.attn) > walked.index(block)
    paths = dict((id(layer), path) for path, layer in walk_layers(model, paths=True))
    assert paths[id(blocks[0].attn)] == f"tiny/{blocks[0].name}/{blocks[0].attn.name}"
    # Drop path masks: every block's SeedGenerators, none twice.
    generators = seed_generators(model)
    assert generators and len({id(g) for g in generators}) == len(generators)


def test_walk_layers_visits_a_shared_sublayer_once():
    shared = keras.layers.Dense(2, name="shared")

    class Holder(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = shared

    class Outer(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="outer")
            self.first, self.second = Holder(name="first"), Holder(name="second")

    names = [layer.name for layer in walk_layers(Outer())]
    assert names == ["outer", "first", "shared", "second"]


def test_cutmix_augmenter_runs():
    """The newest Keras layer the recipe uses (keras.layers.CutMix, Keras 3.9)."""
    from keras_coatnet.training import recipe

    augment = recipe.augmenter(recipe.PAPER.replace(cutmix=True), seed=0)
    images = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")
    out_images, out_labels = augment(images, labels)
    assert out_images.shape == images.shape
    np.testing.assert_allclose(np.sum(out_labels, axis=-1), 1.0, rtol=1e-5)
    assert not np.array_equal(np.asarray(out_labels), labels)  # labels were mixed


def test_the_keras_floor_ci_tests_is_the_one_pyproject_allows():
    root = PACKAGE.parent
    makefile = re.search(r"^KERAS_FLOOR := (\S+)$", (root / "Makefile").read_text(), re.M)
    pyproject = re.search(r'"keras>=([^,"]+),<4"', (root / "pyproject.toml").read_text())
    assert makefile and pyproject and makefile.group(1) == pyproject.group(1)
