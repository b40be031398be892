"""`coatnet plot-bias` and `coatnet plot-history` (matplotlib, the plot extra)."""

from __future__ import annotations

import os

from keras_coatnet.cli._common import CLIError, Progress, add_command, interactive, table
from keras_coatnet.cli.images import add_model_flags, trained_model


def register(subparsers, parents) -> None:
    p = add_command(
        subparsers,
        "plot-bias",
        "heat maps of each attention block's learned relative bias, per head",
        parents,
    )
    add_model_flags(p)
    p.add_argument("--out", required=True, help="folder for one PNG per attention block")
    p.set_defaults(run=run_plot_bias)

    p = add_command(
        subparsers,
        "plot-history",
        "loss/accuracy curves of a training run's TensorBoard logs",
        parents,
    )
    p.add_argument("logdir", help="the logs folder (train/, validation/) or the run's output dir")
    p.add_argument("--out", help="PNG to write (default: LOGDIR/history.png)")
    p.add_argument("--title", help="figure title (default: the log folder)")
    p.set_defaults(run=run_plot_history)


def _plots():
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise CLIError(
            "plots need matplotlib, the plot extra: pip install 'keras_coatnet[plot]'"
        ) from error
    from keras_coatnet import plots

    return plots


def _attention_layers(model):
    from keras_coatnet._keras_compat import walk_layers
    from keras_coatnet.layers import RelativeAttention

    for block in model.layers:
        for layer in walk_layers(block):
            if isinstance(layer, RelativeAttention):
                yield block.name, layer


def run_plot_bias(args):
    import keras

    plots = _plots()
    cfg, _, _, model = trained_model(args)
    blocks = list(_attention_layers(model))
    if not blocks:
        raise CLIError(f"{cfg.name} has no attention blocks to plot")
    os.makedirs(args.out, exist_ok=True)
    written = []
    with Progress(len(blocks), "plotting", interactive(args.quiet)) as progress:
        for name, attention in blocks:
            bias = keras.ops.convert_to_numpy(attention.table())
            path = os.path.join(args.out, f"{name}_bias.png")
            plots.plot_relative_bias(
                bias, attention.height, attention.width, f"{cfg.name} {name}", path
            )
            written.append((path, attention))
            progress.advance(1, name)
    for path, attention in written:
        print(
            f"{path}: {attention.num_heads} heads, "
            f"{2 * attention.height - 1}x{2 * attention.width - 1} offsets"
        )


def run_plot_history(args):
    plots = _plots()
    logdir = args.logdir
    if not os.path.isdir(logdir):
        raise CLIError(f"log directory not found: {logdir!r}")
    if not plots.event_files(logdir) and os.path.isdir(os.path.join(logdir, "logs")):
        logdir = os.path.join(logdir, "logs")  # a run directory of `coatnet train`
    if not plots.event_files(logdir):
        raise CLIError(
            f"no TensorBoard event files in {logdir!r}/train or /validation (the layout "
            "keras.callbacks.TensorBoard writes; `coatnet train` writes OUTPUT_DIR/logs)"
        )
    scalars = plots.read_scalars(logdir)
    if not any(scalars.values()):
        raise CLIError(f"the event files in {logdir!r} hold no epoch_* scalars")
    out = args.out or os.path.join(logdir, "history.png")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    drawn = plots.plot_history(scalars, args.title or os.path.normpath(logdir), out)
    print(f"wrote {out}: {', '.join(drawn)}")
    rows = []
    for name in drawn:
        for split in plots.SPLITS:
            series = scalars.get(split, {}).get(name)
            if series:
                last = max(series)
                best = "-"
                if name != "learning_rate":
                    best = (max if "acc" in name else min)(series, key=series.get) + 1
                value = series[last]
                text = f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
                rows.append((name, split, len(series), text, best))
    print(table(("metric", "split", "epochs", "last", "best epoch"), rows, right=(2, 3, 4)))
