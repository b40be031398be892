import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import pytest  # noqa: E402
from helpers import timm_extra  # noqa: E402, F401  (the fixture, for every test module)


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.utils.set_random_seed(0)
    yield
    if keras.backend.backend() == "tensorflow":
        # train() turns op determinism on process-wide; it would switch XLA off
        # in the tests that follow.
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
