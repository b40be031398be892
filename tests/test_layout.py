"""Package structure rules of docs/ARCHITECTURE.md that would otherwise rot."""

import importlib
import os
import pkgutil

import keras_coatnet

PACKAGE = os.path.dirname(keras_coatnet.__file__)
MAX_LINES = 400


def _modules():
    for info in pkgutil.walk_packages([PACKAGE], prefix="keras_coatnet."):
        if info.name.endswith("__main__"):
            continue
        yield info.name


def test_no_file_is_over_400_lines():
    long = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    lines = sum(1 for _ in f)
                if lines > MAX_LINES:
                    long[os.path.relpath(path, PACKAGE)] = lines
    assert not long, long


def test_no_module_is_shadowed_by_a_name_of_its_package():
    """`keras_coatnet.x.y` is the module `y`, never a function of `x` with its name."""
    shadowed = []
    for name in _modules():
        module = importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        if getattr(importlib.import_module(parent), leaf) is not module:
            shadowed.append(name)
    assert not shadowed, shadowed
    # The check can fail: `keras_coatnet.profile` is the function, and a module of that
    # name would be hidden by it.
    assert not hasattr(keras_coatnet.profile, "__path__") and callable(keras_coatnet.profile)
