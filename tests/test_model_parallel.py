"""`coatnet train --distribution model-parallel --model-axis N`: the flags' checks.

The runs themselves (two processes of 4 virtual devices, a killed process,
resume, the checkpoint loading into an unsharded model and back) are in
tests/test_distributed.py, beside the data-parallel runs whose reference
they share; the layouts in tests/test_sharding.py.
"""

import pytest

from keras_coatnet.training.config import RunConfig


def test_model_axis_is_a_flag_of_model_parallel():
    assert RunConfig(distribution="model-parallel", model_axis=4).model_axis == 4
    # Without --model-axis: the devices of one process (decided when JAX starts).
    assert RunConfig(distribution="model-parallel").model_axis is None
    with pytest.raises(ValueError, match="^--model-axis 4 needs --distribution model-parallel"):
        RunConfig(model_axis=4)
    with pytest.raises(ValueError, match="^--model-axis 4 needs .*received: --distribution data"):
        RunConfig(distribution="data-parallel", model_axis=4)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"^--model-axis must be at least 1, received: {bad}"):
            RunConfig(distribution="model-parallel", model_axis=bad)
    with pytest.raises(ValueError, match="^--model-axis must be an integer"):
        RunConfig(distribution="model-parallel", model_axis=2.0)
