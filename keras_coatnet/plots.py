"""Figures of the `coatnet` command: relative-bias heat maps and training curves.

matplotlib is the `plot` extra (`pip install 'keras_coatnet[plot]'`); it is
imported when a figure is drawn, never by `import keras_coatnet`. Figures are
drawn without pyplot (no global state, no display needed) at a fixed size,
so the PNG of a block with `heads` heads is always `bias_figure_pixels(heads)`.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np

INSTALL_HINT = "plots need matplotlib: pip install 'keras_coatnet[plot]'"
DPI = 100
BIAS_PANEL_INCHES = 2.2  # one head
BIAS_MAX_COLUMNS = 6
BIAS_COLORBAR_INCHES = 0.9
BIAS_TITLE_INCHES = 0.6
HISTORY_PANEL_INCHES = (4.5, 3.5)
SPLITS = ("train", "validation")


def _figure(width_inches, height_inches):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")


def bias_grid(heads: int) -> tuple[int, int]:
    """Rows and columns of the per-head panels of one block."""
    columns = min(heads, BIAS_MAX_COLUMNS)
    return math.ceil(heads / columns), columns


def _bias_inches(heads):
    rows, columns = bias_grid(heads)
    return (
        columns * BIAS_PANEL_INCHES + BIAS_COLORBAR_INCHES,
        rows * BIAS_PANEL_INCHES + BIAS_TITLE_INCHES,
    )


def bias_figure_pixels(heads: int) -> tuple[int, int]:
    """`(width, height)` in pixels of the PNG `plot_relative_bias` writes."""
    width, height = _bias_inches(heads)
    return round(width * DPI), round(height * DPI)


def plot_relative_bias(table, height: int, width: int, title: str, path: str) -> str:
    """Draw one attention block's learned bias w[i-j] as a heat map per head.

    Args:
        table: The block's `((2H-1)(2W-1), heads)` table
            (`RelativeAttention.table()`), rows in the layout of
            `relative_position_index`: row `(dy + H-1) * (2W-1) + dx + W-1`
            holds the offset `(dy, dx)` = query position - key position.
        height: `H`, the feature map height the block attends over.
        width: `W`.
        title: Figure title (the block name).
        path: Where the PNG goes.

    Returns:
        `path`. One panel per head, a colour scale centred on zero and shared
        by the heads of the block, axes in offsets.
    """
    table = np.asarray(table, dtype="float32")
    rows_expected = (2 * height - 1) * (2 * width - 1)
    if table.ndim != 2 or table.shape[0] != rows_expected:
        raise ValueError(
            f"a table for a {height}x{width} map has shape ({rows_expected}, heads), "
            f"received: {table.shape}"
        )
    heads = table.shape[1]
    grid = table.reshape(2 * height - 1, 2 * width - 1, heads)
    limit = float(np.abs(grid).max()) or 1e-6
    figure = _figure(*_bias_inches(heads))
    rows, columns = bias_grid(heads)
    axes = figure.subplots(rows, columns, squeeze=False)
    # Pixel centres on the integer offsets; dy grows downwards.
    extent = (-width + 0.5, width - 0.5, height - 0.5, -height + 0.5)
    image = None
    for k, ax in enumerate(axes.ravel()):
        if k >= heads:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            grid[..., k],
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            extent=extent,
            interpolation="nearest",
        )
        ax.set_title(f"head {k}", fontsize=9)
        ax.set_xticks(_offset_ticks(width))
        ax.set_yticks(_offset_ticks(height))
        ax.tick_params(labelsize=7)
        if k % columns == 0:
            ax.set_ylabel("dy", fontsize=8)
        if k >= heads - columns:
            ax.set_xlabel("dx", fontsize=8)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, label="bias")
    figure.suptitle(
        f"{title}: w[i-j], {2 * height - 1}x{2 * width - 1} offsets (query - key)", fontsize=10
    )
    figure.savefig(path)
    return path


def _offset_ticks(side):
    """Ticks at multiples of a round step, at most 7, over offsets -(side-1)..side-1."""
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 10**9) if (side - 1) / s <= 3)
    positive = set(range(0, side, step))
    return sorted(positive | {-t for t in positive})


def _written(path):
    """Sort key: `events.out.tfevents.<seconds>.<host>.<pid>.<n>.v2`, then mtime."""
    stamp = os.path.basename(path).split(".")[3]
    return int(stamp) if stamp.isdigit() else 0, os.path.getmtime(path)


def event_files(logdir: str) -> dict[str, list[str]]:
    """TensorBoard event files of `logdir/train` and `logdir/validation`, oldest first."""
    found = {}
    for split in SPLITS:
        pattern = os.path.join(logdir, split, "events.out.tfevents.*")
        files = sorted(glob.glob(pattern), key=_written)
        if files:
            found[split] = files
    return found


def read_scalars(logdir: str) -> dict[str, dict[str, dict[int, float]]]:
    """Epoch scalars from `keras.callbacks.TensorBoard` logs.

    Returns:
        `{split: {metric: {epoch: value}}}`, metrics without the `epoch_`
        prefix (`loss`, `accuracy`, `learning_rate`, ...). A resumed run
        writes new event files that repeat epochs; the latest value wins.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars = {}
    for split, files in event_files(logdir).items():
        metrics = scalars.setdefault(split, {})
        for path in files:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if not value.tag.startswith("epoch_"):
                        continue
                    if value.HasField("tensor"):
                        number = float(tf.make_ndarray(value.tensor))
                    else:
                        number = float(value.simple_value)
                    metrics.setdefault(value.tag[len("epoch_") :], {})[int(event.step)] = number
    return scalars


def _metric_order(names):
    first = [name for name in ("loss", "accuracy") if name in names]
    return first + sorted(set(names) - set(first))


def history_figure_pixels(panels: int) -> tuple[int, int]:
    """`(width, height)` in pixels of the PNG `plot_history` writes."""
    width, height = HISTORY_PANEL_INCHES
    return round(panels * width * DPI), round(height * DPI)


def plot_history(scalars, title: str, path: str) -> list[str]:
    """Draw each metric against the epoch, training and validation together.

    Args:
        scalars: `read_scalars()`'s dict.
        title: Figure title.
        path: Where the PNG goes.

    Returns:
        The metrics drawn, one panel each (loss and accuracy first).
    """
    names = _metric_order({name for metrics in scalars.values() for name in metrics})
    if not names:
        raise ValueError("no epoch scalars to draw")
    width, height = HISTORY_PANEL_INCHES
    figure = _figure(len(names) * width, height)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for split, style in zip(SPLITS, ("-o", "--s"), strict=True):
            series = scalars.get(split, {}).get(name)
            if not series:
                continue
            epochs = sorted(series)
            ax.plot([e + 1 for e in epochs], [series[e] for e in epochs], style, ms=3, label=split)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if name == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    figure.suptitle(title, fontsize=10)
    figure.savefig(path)
    return names
