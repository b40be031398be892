"""Training: the run config, data pipelines, the paper's recipe, placement.

    from keras_coatnet.training import RunConfig, train
    result = train(RunConfig(epochs=3, output_dir="runs/digits"))

`train` lives in `keras_coatnet.training.trainer` and `layout_map` (model
parallelism) in `keras_coatnet.training.sharding`; both are imported on first
use: `RunConfig` and the recipe presets are plain data, importable (by the
command line, to build and check its flags) without TensorFlow or JAX.
"""

from keras_coatnet.training.config import DIGITS, PAPER, Recipe, RunConfig

__all__ = ["DIGITS", "PAPER", "Recipe", "RunConfig", "layout_map", "train"]


def __getattr__(name):
    if name == "train":
        from keras_coatnet.training.trainer import train

        return train
    if name == "layout_map":
        from keras_coatnet.training.sharding import layout_map

        return layout_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
