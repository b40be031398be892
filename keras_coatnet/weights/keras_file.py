"""`.weights.h5` files of this package: their structure, checked whole, loaded into one model.

Keras 3 addresses a `.weights.h5` file by layer class, order and sublayer
attribute names, and `model.load_weights` loads layer by layer: a file that
does not fit can leave a model half-loaded, and a file with extra layers
loads silently. Here the file's variables are compared with the ones the
model would save before anything is assigned, the first mismatch is named,
and then each layer reads its own variables from the file.

Two differences are allowed:
- A relative attention table saved at another (square) feature size: the
  layer resizes it on load, as timm does (`keras_coatnet.resize`).
- With `skip_head=True`, the classification head: the model's classifier
  keeps its fresh initialisation (another class count, fine-tuning), and
  head layers the model lacks (`include_top=False`) are not read. This is
  how a file with any head loads into the one model being built.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from keras_coatnet._errors import first_line
from keras_coatnet.naming import ATTENTION, HEAD_LAYER, HEAD_LAYERS
from keras_coatnet.resize import square_side

_VARS = "vars"


def _normalize(path: str) -> str:
    return path.strip("/")


def model_structure(model) -> dict[str, tuple[str, dict[str, tuple]]]:
    """`{path: (layer name, {index: shape})}` for every variable the model saves."""
    # Here, not at the top: `resolve()` reads files without importing Keras.
    from keras_coatnet._keras_compat import saved_variable_shapes

    records = saved_variable_shapes(model)
    return {_normalize(p): rec for p, rec in records.items() if rec[1]}


def file_structure(path: str) -> dict[str, tuple[str, dict[str, tuple]]]:
    """The same map read from a `.weights.h5` file."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.split("/")[-1] == _VARS and len(obj):
                parent = _normalize(name[: -len(_VARS)])
                layer = obj.attrs.get("name", "")
                out[parent] = (str(layer), {k: tuple(obj[k].shape) for k in obj})

        f.visititems(visit)
    return out


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


def read_structure(path) -> dict:
    """`file_structure(path)`, with a one-line error for a file that is not HDF5."""
    path = check_path(path)
    try:
        return file_structure(path)
    except OSError as error:
        raise ValueError(
            f"weights file {path!r} is not a readable .weights.h5 (HDF5) file: {first_line(error)}"
        ) from None


def structure_classes(structure) -> int | None:
    """Number of classes of a `file_structure`'s classifier head, `None` without one."""
    for record in structure.values():
        if record[0] == HEAD_LAYER and "0" in record[1]:
            return record[1]["0"][-1]
    return None


def _describe(path, record):
    name, shapes = record
    return f"{name or path!r} (at {path!r}: {dict(sorted(shapes.items()))})"


def _is_table(record) -> bool:
    name, shapes = record
    return name.split("/")[-1] == ATTENTION and list(shapes) == ["0"] and len(shapes["0"]) == 2


def _resizable(stored, expected) -> bool:
    """Both are relative tables with the same heads and a square-window source."""
    if not (_is_table(stored) and _is_table(expected)):
        return False
    rows, heads = stored[1]["0"]
    return heads == expected[1]["0"][1] and square_side(rows) is not None


def _in_head(record) -> bool:
    return record[0].split("/")[0] in HEAD_LAYERS


def plan(model, path, stored=None, skip_head: bool = False) -> dict[str, tuple]:
    """The `{file path: model record}` to load, or a `ValueError` naming the first misfit.

    Args:
        model: The model to load into.
        path: The `.weights.h5` file.
        stored: The file's `file_structure`, when already read.
        skip_head: Leave the model's classifier out, and ignore the file's
            head layers the model lacks.
    """
    path = check_path(path)
    if stored is None:
        stored = read_structure(path)
    expected = model_structure(model)
    if skip_head:
        expected = {k: r for k, r in expected.items() if r[0] != HEAD_LAYER}
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
    extra = [
        k
        for k in stored
        if k not in expected
        and k.split("/")[0] == "layers"
        and not (skip_head and _in_head(stored[k]))
    ]
    if extra:
        raise ValueError(
            f"weights file {path!r} does not fit model {model.name!r}: the file has "
            f"{len(extra)} variable group(s) the model lacks, "
            f"first {_describe(extra[0], stored[extra[0]])}"
        )
    return expected


def check_weights_file(model, path, stored=None) -> None:
    """Raise a `ValueError` naming the first variable where file and model differ.

    Relative tables of another (square) feature size pass: they are resized
    when loaded. `stored` is the file's `file_structure`, when already read.
    """
    plan(model, path, stored)


def load_weights(model, path, structure=None, skip_head: bool = False) -> None:
    """Load a `.weights.h5` file into `model` after checking that it fits whole.

    Args:
        model: The model to load into.
        path: The `.weights.h5` file.
        structure: The file's `file_structure`, when already read.
        skip_head: Keep the model's classifier as it is (another class count)
            and ignore head layers the model lacks (`include_top=False`).
            Defaults to `False`: the file must fit the model exactly.

    Raises:
        ValueError: Naming the first layer where file and model differ;
            nothing is assigned then.
    """
    from keras_coatnet._keras_compat import walk_layers

    to_load = plan(model, path, structure, skip_head)
    root = model.name + "/"
    layers = {p[len(root) :]: layer for p, layer in walk_layers(model, paths=True)}
    with h5py.File(path, "r") as f:
        values = {}
        for key in to_load:
            group = f[f"{key}/{_VARS}"]
            values[key] = {k: np.asarray(group[k]) for k in group}
    for key, record in to_load.items():
        layers[record[0]].load_own_variables(values[key])
