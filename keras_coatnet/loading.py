"""Loading `.weights.h5` files: check the whole structure first, then load.

Keras 3 addresses a `.weights.h5` file by layer class, order and sublayer
attribute names, and it loads layer by layer: a file that does not fit can
leave a model half-loaded, and a file with extra layers loads silently. Here
the file's variables are compared with the ones the model would save before
anything is assigned, and the first mismatch is named.

One mismatch is allowed: a relative attention table saved at another feature
size (a checkpoint trained at 224 loaded into a 384 model). Such tables are
resized on load with timm's interpolation (`keras_coatnet.resize`).
"""

from __future__ import annotations

import os

import h5py

from keras_coatnet._keras_compat import saved_variable_shapes
from keras_coatnet.naming import HEAD_LAYER


def _normalize(path: str) -> str:
    return path.strip("/")


def model_structure(model) -> dict[str, tuple[str, dict[str, tuple]]]:
    """`{path: (layer name, {index: shape})}` for every variable the model saves."""
    records = saved_variable_shapes(model)
    return {_normalize(p): rec for p, rec in records.items() if rec[1]}


def file_structure(path: str) -> dict[str, tuple[str, dict[str, tuple]]]:
    """The same map read from a `.weights.h5` file."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" and len(obj):
                parent = _normalize(name[: -len("vars")])
                layer = obj.attrs.get("name", "")
                out[parent] = (str(layer), {k: tuple(obj[k].shape) for k in obj})

        f.visititems(visit)
    return out


def _describe(path, record):
    name, shapes = record
    return f"{name or path!r} (at {path!r}: {dict(sorted(shapes.items()))})"


def check_path(path) -> str:
    """Raise a `ValueError` unless `path` names an existing `.weights.h5` file."""
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"weights must be None or a path to a '.weights.h5' file, received: {path!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path!r}")
    return path


def _is_table(record) -> bool:
    name, shapes = record
    return name.split("/")[-1] == "attn" and list(shapes) == ["0"] and len(shapes["0"]) == 2


def _resizable(stored, expected) -> bool:
    """Both are relative tables with the same heads and a square-window source."""
    if not (_is_table(stored) and _is_table(expected)):
        return False
    rows, heads = stored[1]["0"]
    side = (round(rows**0.5) + 1) // 2
    return heads == expected[1]["0"][1] and (2 * side - 1) ** 2 == rows


def check_weights_file(model, path, stored=None) -> None:
    """Raise a `ValueError` naming the first variable where file and model differ.

    Relative tables of another (square) feature size pass: they are resized
    when loaded. `stored` is the file's `file_structure`, when already read.
    """
    path = check_path(path)
    if stored is None:
        try:
            stored = file_structure(path)
        except OSError as e:
            raise ValueError(f"weights file {path!r} is not a readable HDF5 file: {e}") from None
    expected = model_structure(model)
    for key, record in expected.items():
        if key not in stored:
            raise ValueError(
                f"weights file {path!r} does not fit model {model.name!r}: it has no "
                f"variables for layer {_describe(key, record)}"
            )
        if stored[key][1] != record[1] and not _resizable(stored[key], record):
            raise ValueError(
                f"weights file {path!r} does not fit model {model.name!r}: layer "
                f"{record[0]!r} expects shapes {record[1]}, the file holds {stored[key][1]}"
            )
    # Optimizer and metric state of a compiled model is not the model's to check.
    extra = [k for k in stored if k not in expected and k.split("/")[0] == "layers"]
    if extra:
        raise ValueError(
            f"weights file {path!r} does not fit model {model.name!r}: the file has "
            f"{len(extra)} variable group(s) the model lacks, "
            f"first {_describe(extra[0], stored[extra[0]])}"
        )


def structure_classes(structure) -> int | None:
    """Number of classes of a `file_structure`'s classifier head, `None` without one."""
    for record in structure.values():
        if record[0] == HEAD_LAYER and "0" in record[1]:
            return record[1]["0"][-1]
    return None


def load_weights(model, path, structure=None) -> None:
    """Load a `.weights.h5` file into `model` after checking that it fits whole.

    Args:
        model: The model to load into.
        path: The `.weights.h5` file.
        structure: The file's `file_structure`, when already read.
    """
    check_weights_file(model, path, structure)
    model.load_weights(path)
