"""`coatnet models` (every variant, from data: no framework) and `coatnet summary`."""

from __future__ import annotations

import fnmatch
import math

from keras_coatnet._errors import at_least
from keras_coatnet.cli._common import (
    MAC_UNITS,
    PROG,
    CLIError,
    add_command,
    config,
    human,
    image_size,
    table,
)


def register(subparsers, parents) -> None:
    p = add_command(
        subparsers,
        "models",
        "table of every variant: layout, params, MACs, pretrained weights",
        parents,
        framework=False,
    )
    p.add_argument("--filter", default="*", help="shell pattern on the name, e.g. 'coatnet_rmlp*'")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the pretrained tags instead: Hub repo, classes, size, crop, mean/std, "
        "top-1 as timm reports it, licence",
    )
    p.set_defaults(run=run_models)

    p = add_command(
        subparsers,
        "summary",
        "stage-by-stage table of one model: output shape, blocks, params, MACs",
        parents,
    )
    p.add_argument("model", help=f"architecture name (`{PROG} models` lists them)")
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")
    p.add_argument("--classes", type=int, default=1000, help="classifier outputs (1000)")
    p.set_defaults(run=run_summary)


# ----------------------------------------------------------------------------- models


def _matching(pattern: str) -> list[str]:
    from keras_coatnet.naming import model_key
    from keras_coatnet.variants import CONFIGS

    pattern = pattern.lower()
    names = [n for n in sorted(CONFIGS) if fnmatch.fnmatchcase(n.lower(), pattern)]
    if not names:  # as get_config, let '-' and '_' stand for each other
        pattern = model_key(pattern)
        names = [n for n in sorted(CONFIGS) if fnmatch.fnmatch(model_key(n), pattern)]
    if not names:
        raise CLIError(
            f"no model matches --filter {pattern!r}; the models: {', '.join(sorted(CONFIGS))}"
        )
    return names


def _family(config) -> str:
    if config.source.startswith("paper"):
        return "paper"
    if config.source.startswith("timm"):
        return "timm"
    return "demo"


def _layout(config):
    kinds = "-".join("C" if s.block_type == "mbconv" else "T" for s in config.stages)
    depths = "-".join(str(d) for d in (config.stem_depth, *(s.depth for s in config.stages)))
    dims = "-".join(str(d) for d in (config.stem_dim, *(s.dim for s in config.stages)))
    return kinds, depths, dims


def run_models(args):
    from keras_coatnet import counts
    from keras_coatnet.naming import split_tag
    from keras_coatnet.variants import CONFIGS
    from keras_coatnet.weights import registry

    names = _matching(args.filter)
    if args.pretrained:
        return _pretrained_table(names)
    table_counts = counts.load()
    rows, has_tags = [], False
    for name in names:
        config, counted = CONFIGS[name], table_counts[name]
        tags = registry.list_weights(name)
        has_tags |= bool(tags)
        kinds, depths, dims = _layout(config)
        rows.append(
            (
                name,
                _family(config),
                kinds,
                depths,
                dims,
                human(counted.params),
                human(counted.macs, MAC_UNITS),
                registry.eval_defaults(name)[1],
                ", ".join(split_tag(t)[1] for t in tags) or "-",
            )
        )
    header = ("model", "family", "layout", "blocks S0..", "widths S0..")
    header += ("params", "MACs", "size", "weights")
    print(table(header, rows, right=(5, 6, 7)))
    print(
        f"\n{len(rows)} models; params are trainable weights with 1000 classes, MACs one "
        f"image at the default size, as keras_coatnet.profile counts the built model "
        f"(`{PROG} summary NAME` builds one)"
    )
    if has_tags:
        print(
            "weights: timm's tags, fetched from the Hugging Face Hub on first use; "
            f"`{PROG} models --pretrained` lists them with classes, top-1 and licence"
        )


def _pretrained_table(names) -> None:
    from keras_coatnet.weights.registry import list_pretrained

    rows = []
    for entry in list_pretrained():
        if entry.model not in names:
            continue
        settings = entry.eval_settings
        stats = "0.5" if settings.mean == (0.5,) * 3 else "imagenet"
        top1 = f"{entry.top1:.2f}" if entry.top1 is not None else "-"
        rows.append(
            (
                entry.tag,
                entry.num_classes,
                entry.image_size,
                f"{settings.crop_pct:g} {settings.crop_mode}",
                stats,
                top1,
                entry.licence,
            )
        )
    if not rows:
        raise CLIError("no pretrained weights for the models that match --filter")
    header = ("tag (Hub repo timm/<tag>)", "classes", "size", "crop", "mean/std", "top-1")
    print(table(header + ("licence",), rows, right=(1, 2, 5)))
    print(
        f"\n{len(rows)} tags; top-1: ImageNet-1k validation as timm reports it (- for "
        "ImageNet-12k heads). weights='imagenet' takes the first 1000-class tag of a model."
    )


# ----------------------------------------------------------------------------- summary


def _group(layer_name: str) -> str:
    from keras_coatnet.naming import INPUT, PREPROCESSING, STEM, parse_block_name

    if layer_name in (INPUT, PREPROCESSING) or layer_name.startswith("input"):
        return "input"
    if layer_name == STEM:
        return "stem"
    parsed = parse_block_name(layer_name)
    if parsed is not None:
        return f"stage{parsed[0]}"
    return "head"


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape[1:])


def run_summary(args):
    from keras_coatnet.model import CoAtNet
    from keras_coatnet.profiling import profile

    cfg = config(args.model)
    size = image_size(args.image_size, cfg)
    classes = at_least("--classes", args.classes)
    try:
        model = CoAtNet(cfg, input_shape=(size, size, 3), classes=classes)
    except ValueError as error:
        raise CLIError(str(error)) from error
    counted = profile(model)
    groups = {}
    for layer in model.layers:
        name = _group(layer.name)
        group = groups.setdefault(name, {"params": 0, "macs": 0, "blocks": 0, "shape": None})
        group["params"] += sum(math.prod(w.shape) for w in layer.trainable_weights)
        group["shape"] = layer.output.shape
        group["blocks"] += name.startswith("stage")
    for path, macs in counted.per_layer.items():
        groups[_group(path.split("/")[1])]["macs"] += macs
    kinds = {"input": "rescale", "stem": f"{cfg.stem_depth}x conv 3x3", "head": "classifier"}
    for s, stage in enumerate(cfg.stages, start=1):
        kinds[f"stage{s}"] = "MBConv" if stage.block_type == "mbconv" else "Transformer"
    rows = [
        (
            name,
            kinds[name],
            group["blocks"] or "-",
            _shape_text(group["shape"]),
            human(group["params"]),
            human(group["macs"], MAC_UNITS),
            f"{100 * group['macs'] / counted.macs:.1f}%",
        )
        for name, group in groups.items()
    ]
    rows.append(
        (
            "total",
            "",
            sum(s.depth for s in cfg.stages),
            "",
            human(counted.params),
            human(counted.macs, MAC_UNITS),
            "100.0%",
        )
    )
    print(f"{cfg.name} at {size}x{size}, {classes} classes ({cfg.source})")
    print(
        table(
            ("stage", "type", "blocks", "output", "params", "MACs", "of MACs"),
            rows,
            right=(2, 4, 5, 6),
        )
    )
    print(
        f"non-trainable {human(counted.non_trainable)} (BatchNorm statistics, bias caches); "
        "MACs as keras_coatnet.profile counts them"
    )
