"""Relative positions on a feature grid: the bias table's index and the bias MLP's input.

Each in NumPy, for grids known when a layer is built or traced, and in
keras.ops (`*_ops`), for the grids of a size-free model's TensorFlow graph,
whose sides are tensors.
"""

import numpy as np
from keras import ops


def relative_position_index(height, width):
    """Index into a `(2H-1)(2W-1)` table for every (query, key) pair.

    Returns an int32 array of shape `(H*W, H*W)` whose entry `[i, j]` is
    `(h_i - h_j + H - 1) * (2W - 1) + (w_i - w_j + W - 1)`: the flat position
    of the offset `i - j` in a row-major `(2H-1, 2W-1)` table (timm's and
    Swin's layout).
    """
    hh, ww = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([hh.ravel(), ww.ravel()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return ((rel[0] + height - 1) * (2 * width - 1) + rel[1] + width - 1).astype("int32")


def relative_log_coords(height, width):
    """`sign(d) * log(1 + |d|)` of every offset `d = (dh, dw)`, float32 `((2H-1)(2W-1), 2)`.

    Rows follow the table layout of `relative_position_index`; this is the
    input of timm's `RelPosMlp` in its default "cr" mode.
    """
    dh = np.arange(-(height - 1), height, dtype="float32")
    dw = np.arange(-(width - 1), width, dtype="float32")
    grid = np.stack(np.meshgrid(dh, dw, indexing="ij"), axis=-1).reshape(-1, 2)
    return (np.sign(grid) * np.log1p(np.abs(grid))).astype("float32")


def is_static(*sides):
    """Whether every side is a Python int (known when the graph is traced)."""
    return all(isinstance(side, int) for side in sides)


def relative_position_index_ops(height, width):
    """`relative_position_index` for sides that are scalar tensors, flat `((HW)^2,)` int32."""
    hh, ww = ops.meshgrid(ops.arange(height), ops.arange(width), indexing="ij")
    hh, ww = ops.reshape(hh, (-1,)), ops.reshape(ww, (-1,))
    rows = hh[:, None] - hh[None, :] + height - 1
    cols = ww[:, None] - ww[None, :] + width - 1
    return ops.reshape(ops.cast(rows * (2 * width - 1) + cols, "int32"), (-1,))


def relative_log_coords_ops(height, width):
    """`relative_log_coords` for sides that are scalar tensors."""
    dh = ops.cast(ops.arange(1 - height, height), "float32")
    dw = ops.cast(ops.arange(1 - width, width), "float32")
    gh, gw = ops.meshgrid(dh, dw, indexing="ij")
    grid = ops.stack([ops.reshape(gh, (-1,)), ops.reshape(gw, (-1,))], axis=-1)
    return ops.sign(grid) * ops.log1p(ops.abs(grid))
