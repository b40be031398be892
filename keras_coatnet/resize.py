"""Resizing a relative position bias table to a new feature-map size.

A checkpoint trained at one resolution holds, per transformer block, a table
of `(2H-1)(2W-1)` relative offsets by `heads`; a model built for another
resolution needs `(2H'-1)(2W'-1)` rows. `resize_relative_table` computes the
new table with exactly timm's numbers (`timm.layers.resize_rel_pos_bias_table`,
its default path without scipy, as used by `timm.models.maxxvit` when it loads
a CoAtNet checkpoint at another image size), in NumPy only.

timm's method, from BEiT: along each axis the source offsets `0, ±1, ..., ±n`
are placed at the non-uniform coordinates `0, ±1, ±(1+q), ±(1+q+q^2), ...`,
with the ratio `q` in `[1.01, 1.5]` found by bisection so that the outermost
coordinate reaches the outermost destination offset. The destination table
is that grid bilinearly interpolated at the integer offsets, clamped at the
edges. Small offsets, where the bias varies most, are kept nearly as they
were and the large ones are stretched.
"""

from __future__ import annotations

import numbers

import numpy as np


def _size_pair(name, size):
    """`size` as a `(height, width)` tuple of positive Python ints."""
    pair = (size, size) if isinstance(size, numbers.Integral) else size
    try:
        pair = tuple(pair)
    except TypeError:
        pair = None
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)
        or isinstance(size, bool)
        or min(pair) < 1
    ):
        raise ValueError(
            f"{name}={size!r} is not a feature-map size; expected a positive int "
            "or a (height, width) pair of positive ints"
        )
    return int(pair[0]), int(pair[1])


def _source_coordinates(src, dst):
    """Coordinates of a source table axis of length `src`, as timm's `_calc`.

    Args:
        src: Source table length along the axis, `2 * old_size - 1`.
        dst: Destination table length along the axis, `2 * new_size - 1`.

    Returns:
        A float32 array of `src` increasing coordinates, symmetric about 0.
    """
    # Float64 Python arithmetic, step for step as timm: the ratio is the last
    # midpoint of the bisection (not either bound), and the coordinates are
    # rounded to float32 only at the end (timm's `torch.tensor(list)`).
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis = []
    cur = 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0] + dis, dtype=np.float32)


def _axis_weights(points, targets):
    """Bracketing indices and distances along one axis, as timm's interpolator.

    Args:
        points: Increasing float32 source coordinates.
        targets: Float32 coordinates to interpolate at.

    Returns:
        `(idx_left, idx_right, dist_left, dist_right)`; the weight of
        `idx_left` is `dist_right` and vice versa. Outside the source range
        both indices are the edge and all weight falls on it.
    """
    # torch.bucketize(x, p) with right=False is searchsorted side="left".
    idx_right = np.searchsorted(points, targets, side="left")
    idx_right = np.minimum(idx_right, len(points) - 1)
    idx_left = np.clip(idx_right - 1, 0, len(points) - 1)
    dist_left = np.maximum(targets - points[idx_left], np.float32(0))
    dist_right = np.maximum(points[idx_right] - targets, np.float32(0))
    both_zero = (dist_left == 0) & (dist_right == 0)
    dist_left[both_zero] = 1
    dist_right[both_zero] = 1
    return idx_left, idx_right, dist_left, dist_right


def resize_relative_table(table, old_size, new_size):
    """Resizes a relative position bias table from one feature-map size to another.

    Reproduces timm's `resize_rel_pos_bias_table` (default, non-scipy path)
    with `old_window_size=old_size`, in the same float32 operations and order,
    so the result matches timm's bit for bit. For a square
    `old_size` this is also what timm's checkpoint filter computes, which
    infers a square source window from the table length.

    Two properties of timm's method carry over, on purpose:

    - Shrinking does not rescale. With fewer destination offsets than
      source offsets the bisection bottoms out at its lower bound,
      `q ~ 1.01`, so source offset `k` sits at coordinate
      `1 + 1.01 + ... + 1.01^(k-1)`, slightly beyond `k`, and the
      destination offsets `-(n'-1) .. n'-1` land on the central part of the
      source grid: the result is a center crop of the source table (offsets
      beyond the new window are dropped), each value blended with its inner
      neighbour by the accumulated 1% stretch (weight ~1% at offset 2, ~14%
      at offset 6, ~61% at offset 12).
    - Each axis is mapped separately, and an axis whose size does not change
      is still resampled when the other one changes (timm interpolates as
      soon as either axis differs): its ratio is also `q ~ 1.01`, so its
      values come out blended in the same way rather than copied.

    Growing by more than the ratio `q = 1.5` can cover (for example a 2x2
    window to a large one) clamps the outer offsets to the source edge.

    Args:
        table: Array `[(2*oh - 1) * (2*ow - 1), heads]`, row-major over a
            `(2*oh - 1, 2*ow - 1)` grid of offsets (timm's and Swin's layout,
            see `relative_position_index`). Cast to float32 first, as timm does.
        old_size: Feature-map size `(oh, ow)` the table was trained for; an int
            means a square map.
        new_size: Feature-map size `(nh, nw)` to resize to; an int means a
            square map.

    Returns:
        A float32 array `[(2*nh - 1) * (2*nw - 1), heads]`. When the sizes are
        equal, a float32 copy of `table`.

    Raises:
        ValueError: If a size is not a positive int or a pair of positive
            ints, if `table` is not 2-D, or if its row count is not
            `(2*oh - 1) * (2*ow - 1)`.
    """
    old_h, old_w = _size_pair("old_size", old_size)
    new_h, new_w = _size_pair("new_size", new_size)
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"table has shape {table.shape}; expected 2-D [(2*oh-1)*(2*ow-1), heads]")
    src = (2 * old_h - 1, 2 * old_w - 1)
    dst = (2 * new_h - 1, 2 * new_w - 1)
    if table.shape[0] != src[0] * src[1]:
        raise ValueError(
            f"table has {table.shape[0]} rows; old_size=({old_h}, {old_w}) needs "
            f"(2*{old_h}-1)*(2*{old_w}-1) = {src[0] * src[1]}"
        )
    table = table.astype(np.float32)  # always a copy
    if src == dst:
        return table

    heads = table.shape[1]
    values = table.reshape(src[0], src[1], heads)
    # Destination offsets -(dst//2) .. dst//2, exact in float32.
    targets = [np.arange(-(d // 2), d // 2 + 1).astype(np.float32) for d in dst]
    axes = [
        _axis_weights(_source_coordinates(s, d), t)
        for s, d, t in zip(src, dst, targets, strict=True)
    ]
    (y_left, y_right, dy_left, dy_right), (x_left, x_right, dx_left, dx_right) = axes
    y_idx, y_dist = (y_left, y_right), (dy_left, dy_right)
    x_idx, x_dist = (x_left, x_right), (dx_left, dx_right)

    # Sum over the four corners in timm's order, (left, left) first; each
    # corner is weighted by the product of the opposite distances.
    numerator = None
    for a in (0, 1):
        for b in (0, 1):
            corner = values[y_idx[a][:, None], x_idx[b][None, :]]
            weight = y_dist[1 - a][:, None] * x_dist[1 - b][None, :]
            term = corner * weight[:, :, None]
            numerator = term if numerator is None else numerator + term
    denominator = (dy_left + dy_right)[:, None] * (dx_left + dx_right)[None, :]
    out = numerator / denominator[:, :, None]
    return out.reshape(dst[0] * dst[1], heads).astype(np.float32)


def square_side(rows: int) -> int | None:
    """Feature side `k` of a table with `(2k-1)^2` rows, `None` for any other count.

    The one home of the square-source rule: a bare table (a state dict, a
    `.weights.h5` file) does not say its window, so its source is taken as
    square, as timm's checkpoint filter does.
    """
    side = (round(max(rows, 0) ** 0.5) + 1) // 2
    return side if side >= 1 and (2 * side - 1) ** 2 == rows else None


def resize_square_table(table, new_size, what: str):
    """`table` from its square source window to `new_size` (timm's rule), or a clear error.

    Args:
        table: A saved `((2k-1)^2, heads)` table.
        new_size: The feature-map size `(height, width)` to resize to.
        what: The table's name for the message (a layer or timm key).

    Raises:
        ValueError: Naming `what` when the table is not 2-D with a square
            source's row count.
    """
    table = np.asarray(table)
    side = square_side(table.shape[0]) if table.ndim == 2 else None
    if side is None:
        raise ValueError(
            f"{what}: the relative table has shape {table.shape}, which is not "
            "((2k-1)^2, heads) for a square feature map; resize it with "
            "keras_coatnet.resize_relative_table(table, old_size, new_size)"
        )
    return resize_relative_table(table, side, new_size)


# ----------------------------------------------------------------------------- in the graph
#
# A size-free model (`input_shape=(None, None, 3)`) needs the table of a grid
# known only when it is called. The resize above is separable: destination
# offset (y, x) takes sum_ab Ay[y, a] Ax[x, b] T[a, b] with one interpolation
# matrix per axis, each row holding timm's two bracketing weights divided by
# their sum. `axis_matrix` builds a row set in NumPy from the exact rule
# above (for sizes known when the graph is traced: always on JAX, and on
# TensorFlow for static shapes); `axis_matrix_ops` repeats the rule in
# keras.ops for sizes that are tensors (a TensorFlow graph with unknown
# height and width): the same 19 halvings of the bisection, in float64.


def axis_matrix(src_side: int, dst_side: int) -> np.ndarray:
    """Interpolation weights of one table axis, `(2*dst_side - 1, 2*src_side - 1)` float32.

    Resamples even when `src_side == dst_side` (timm does whenever the
    other axis changes); `resize_in_graph` skips the resize when neither
    axis changes.
    """
    src, dst = 2 * src_side - 1, 2 * dst_side - 1
    targets = np.arange(-(dst // 2), dst // 2 + 1).astype(np.float32)
    left, right, dist_left, dist_right = _axis_weights(_source_coordinates(src, dst), targets)
    total = dist_left + dist_right
    matrix = np.zeros((dst, src), np.float64)
    rows = np.arange(dst)
    np.add.at(matrix, (rows, left), dist_right / total)
    np.add.at(matrix, (rows, right), dist_left / total)
    return matrix.astype(np.float32)


_HALVINGS = 19  # 0.49 / 2**19 < 1e-6 <= 0.49 / 2**18: the loop count of `_source_coordinates`


def axis_matrix_ops(src_side: int, dst_side):
    """`axis_matrix` with `dst_side` a scalar tensor, in keras.ops.

    The ratio and the coordinates in float64 and rounded to float32 at the
    end, as `_source_coordinates` (in float32 they drift by up to 1e-5 of
    the table's values at detection sizes). Only TensorFlow graphs with
    unknown sizes call this (JAX traces every size as Python ints), so the
    float64 needs no JAX x64 mode.
    """
    from keras import ops

    src = 2 * src_side - 1
    half_src = src // 2
    half_dst = ops.cast(dst_side - 1, "float64")
    left = ops.convert_to_tensor(1.01, "float64")
    right = ops.convert_to_tensor(1.5, "float64")
    q = left
    for _ in range(_HALVINGS):
        q = (left + right) / 2.0
        beyond = (1.0 - ops.power(q, float(half_src))) / (1.0 - q) > half_dst
        right = ops.where(beyond, q, right)
        left = ops.where(beyond, left, q)
    # 1, 1 + q, 1 + q + q^2, ... (timm's `dis`), then mirrored about 0.
    dis = ops.cumsum(ops.power(q, ops.arange(0, half_src, dtype="float64")))
    coords = ops.concatenate([-ops.flip(dis, 0), ops.zeros((1,), "float64"), dis])
    coords = ops.cast(coords, "float32")
    targets = ops.cast(ops.arange(-half_dst, half_dst + 1.0, dtype="float64"), "float32")
    # searchsorted(coords, targets, side="left"), as a count (exporters such
    # as tf2onnx have no LowerBound op): the coordinates below each target.
    below = ops.cast(ops.less(coords[None, :], targets[:, None]), "int32")
    right_index = ops.minimum(ops.sum(below, axis=1), src - 1)
    left_index = ops.clip(right_index - 1, 0, src - 1)
    dist_left = ops.maximum(targets - ops.take(coords, left_index), 0.0)
    dist_right = ops.maximum(ops.take(coords, right_index) - targets, 0.0)
    both_zero = ops.logical_and(ops.equal(dist_left, 0.0), ops.equal(dist_right, 0.0))
    dist_left = ops.where(both_zero, 1.0, dist_left)
    dist_right = ops.where(both_zero, 1.0, dist_right)
    total = dist_left + dist_right
    left_weight = ops.one_hot(left_index, src) * (dist_right / total)[:, None]
    return left_weight + ops.one_hot(right_index, src) * (dist_left / total)[:, None]


def resize_in_graph(table, source, height, width):
    """`table` of the `source` grid resized to `(height, width)` by timm's rule, in keras.ops.

    Args:
        table: A `((2*sh - 1) * (2*sw - 1), heads)` float32 tensor.
        source: The table's grid `(sh, sw)`, Python ints.
        height, width: The grid to resize to: Python ints, or scalar
            tensors where the graph does not know them.

    Returns:
        The `((2*height - 1) * (2*width - 1), heads)` table: `table` itself
        where the grid is `source`, else within float32 rounding of
        `resize_relative_table` (the order of the sums differs).
    """
    from keras import ops

    source_h, source_w = source
    heads = table.shape[-1]

    def resized(ay, ax):
        grid = ops.reshape(table, (2 * source_h - 1, 2 * source_w - 1, heads))
        grid = ops.einsum("ya,abh->ybh", ay, grid)
        grid = ops.einsum("xb,ybh->yxh", ax, grid)
        return ops.reshape(grid, (-1, heads))

    if isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral):
        if (height, width) == (source_h, source_w):
            return table
        return resized(axis_matrix(source_h, height), axis_matrix(source_w, width))
    same = ops.logical_and(ops.equal(height, source_h), ops.equal(width, source_w))
    return ops.cond(
        same,
        lambda: table,
        lambda: resized(axis_matrix_ops(source_h, height), axis_matrix_ops(source_w, width)),
    )
