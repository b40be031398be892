"""The `coatnet` command: one entry point for the package's tools.

    coatnet models                          # every variant: layout, params, MACs, weights
    coatnet summary coatnet-0               # stage by stage: shapes, params, MACs
    coatnet train --epochs 3                # the training command (digits by default)
    coatnet evaluate --model M --weights W --dataset DIR
    coatnet predict IMAGE... --model M --weights W
    coatnet export / convert / bench ...    # keras_coatnet.export, weights/convert_timm.py,
                                            # benchmarks/bench.py
    coatnet plot-bias --model M --weights W --out DIR
    coatnet plot-history RUN_DIR/logs

Also `python -m keras_coatnet`. Every subcommand has `--help`. Progress bars go
to stderr, only when stdout is a terminal and `--quiet` is not given. Errors
are one line on stderr; the exit status is 2 for a bad invocation (unknown
model, missing file, bad flag or flag combination, weights that do not fit
the model) and 1 for a failure while working (an image that does not
decode, a conversion beyond tolerance, anything unexpected). `--verbose`
prints the traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fnmatch
import importlib
import importlib.util
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keras_coatnet._errors import first_line, report

PROG = "coatnet"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
REPO_ROOT = Path(__file__).resolve().parents[1]
CONVERT_SCRIPT = REPO_ROOT / "weights" / "convert_timm.py"
BENCH_SCRIPT = REPO_ROOT / "benchmarks" / "bench.py"
BENCH_ENV = "KERAS_COATNET_BENCH"  # another bench.py to run (tests)
GLOBAL_FLAGS = ("--verbose", "--quiet")
DELEGATED = ("train", "export", "convert", "bench")

# CoAtNet-6/7 hold 1.3B and 2.4B weights: building them takes 6 GiB (in
# bfloat16) and about as long as building the 27 other models. `coatnet models`
# shows these (params, MACs), measured by building them (`coatnet models --all
# --filter 'coatnet-[67]'`), unless --all builds them again; tests/test_cli.py
# checks them under `pytest -m slow`.
PINNED = {
    "coatnet-6": (1_348_435_040, 262_256_451_584),
    "coatnet-7": (2_441_972_728, 462_188_531_712),
}


class CLIError(Exception):
    """A failure reported as one line on stderr with exit status `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = self.exit_status = code


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@contextlib.contextmanager
def _delegated(prog, script, argv):
    """Run a command that parses `sys.argv` itself as if started as `script ARGV`.

    `sys.argv` is what running the script directly gives (scripts print it
    to say how to rerun them), while its argparse parsers are named `prog`
    and report errors on one line.
    """
    saved = argparse.ArgumentParser.__init__, argparse.ArgumentParser.error, list(sys.argv)
    init = saved[0]

    def named_init(self, *args, **kwargs):
        if not args and kwargs.get("prog") is None:
            kwargs["prog"] = prog
        init(self, *args, **kwargs)

    argparse.ArgumentParser.__init__ = named_init
    argparse.ArgumentParser.error = _Parser.error
    script = os.fspath(script)
    relative = os.path.relpath(script)
    sys.argv[:] = [script if relative.startswith(os.pardir) else relative, *argv]
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__, argparse.ArgumentParser.error = saved[:2]
        sys.argv[:] = saved[2]


# ----------------------------------------------------------------------------- progress


def _interactive(quiet: bool) -> bool:
    """Progress only for a person watching: not with --quiet, not in a pipeline."""
    return not quiet and sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """A one-line progress bar on stderr; does nothing when not `enabled`."""

    def __init__(self, total: int, label: str, enabled: bool, stream=None):
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def advance(self, n: int = 1, note: str = ""):
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            filled = int(30 * min(self.done / self.total, 1.0))
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {self.done}/{self.total} "
                f"{now - self.start:.0f}s {note}\033[K"
            )
            self.stream.flush()
            self.drawn = True

    def close(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


class _Ticker:
    """Elapsed time on stderr while a delegated command runs (no known total).

    The command's own stdout lines pass through: the ticker is erased before
    each write and drawn again only at the start of a line.
    """

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.at_line_start, self.drawn = True, False

    def __enter__(self):
        if not self.enabled:
            return self
        self.stdout, self.start = sys.stdout, time.perf_counter()
        sys.stdout = self
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return
        self.stop.set()
        self.thread.join()
        sys.stdout = self.stdout
        self._erase()

    def _erase(self):
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.drawn = False

    def _run(self):
        while not self.stop.wait(0.5):
            with self.lock:
                if self.at_line_start:
                    elapsed = time.perf_counter() - self.start
                    sys.stderr.write(f"\r{self.label} {elapsed:.0f}s\033[K")
                    sys.stderr.flush()
                    self.drawn = True

    def write(self, text):
        with self.lock:
            self._erase()
            self.stdout.write(text)
            self.stdout.flush()
            if text:
                self.at_line_start = text.endswith("\n")
        return len(text)

    def flush(self):
        self.stdout.flush()

    def isatty(self):
        return self.stdout.isatty()

    def __getattr__(self, name):  # encoding, fileno, ...
        return getattr(self.stdout, name)


# ----------------------------------------------------------------------------- helpers


def _config(name: str):
    """The config of `name`, or a CLIError naming close matches or every model."""
    from keras_coatnet.configs import CONFIGS, get_config

    try:
        return get_config(name)
    except ValueError as error:
        close = difflib.get_close_matches(name, sorted(CONFIGS), n=3, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"choose one of {', '.join(sorted(CONFIGS))}"
        )
        raise CLIError(f"unknown model {name!r}; {hint} (`{PROG} models` lists them)") from error


def _image_size(size, config) -> int:
    if size is None:
        return config.default_size
    if size < 32 or size % 32:
        raise CLIError(f"--image-size must be a positive multiple of 32, received: {size}")
    return size


def _resolve_weights(weights: str, config):
    """`--weights` (a file, 'imagenet', a tag, hf://...) resolved once."""
    from keras_coatnet import weights as registry

    if os.path.isdir(weights):
        raise CLIError(f"--weights {weights!r} is a directory; give a .weights.h5 file")
    try:
        return registry.resolve(weights, config)
    except registry.WeightsFetchError as error:
        raise CLIError(str(error), code=1) from error
    except ValueError as error:
        raise CLIError(str(error)) from error


def _build(config, size, weights=None, classes=1000, include_top=True):
    from keras_coatnet.model import CoAtNet

    kwargs = dict(input_shape=(size, size, 3), include_top=include_top)
    if include_top:
        kwargs["classes"] = classes
    try:
        return CoAtNet(config, weights=weights, **kwargs)
    except ValueError as error:
        raise CLIError(str(error)) from error


def _trained_model(args):
    """The model of `--model`, `--image-size` and `--weights` (classes from the file)."""
    config = _config(args.model)
    size = _image_size(args.image_size, config)
    resolved = _resolve_weights(args.weights, config)
    classes = resolved.classes
    model = _build(config, size, resolved, classes or 1000, include_top=classes is not None)
    return config, size, classes, model


def _load_image(path: str, size: int, settings):
    """Pixels in 0..255, `(size, size, 3)` float32, by `preprocessing.eval_transform`."""
    import tensorflow as tf

    from keras_coatnet.preprocessing import eval_transform

    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        raise CLIError(f"cannot read image {path!r}: {first_line(error)}", code=1) from error
    return eval_transform(image, (size, size), settings).numpy()


def _eval_settings(model, crop_pct: float | None):
    """`--crop-pct` (a centre crop), else the weights' own settings, else the whole
    image resized, as `coatnet train` feeds its images."""
    from keras_coatnet.preprocessing import SQUASH_WHOLE_IMAGE, EvalSettings, eval_settings

    if crop_pct is not None:
        return EvalSettings(crop_pct=crop_pct, crop_mode="center")
    return eval_settings(model, EvalSettings(**SQUASH_WHOLE_IMAGE))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    return found


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_batch(pool, files, size, settings):
    import numpy as np

    return np.stack(list(pool.map(lambda f: _load_image(f, size, settings), files)))


def _crop_pct(value):
    if value is not None and not 0.0 < value <= 1.0:
        raise CLIError(f"--crop-pct must be in (0, 1], received: {value}")
    return value


MAC_UNITS = ("", "K", "M", "G", "T")


def _human(count: float, units=("", "K", "M", "B")) -> str:
    for unit in units[:-1]:
        if abs(count) < 1000:
            return f"{count:.2f}{unit}" if unit else f"{count:.0f}"
        count /= 1000
    return f"{count:.3f}{units[-1]}"


def _table(header, rows, right=()):
    """Left-aligned text columns; the column indices in `right` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


# ----------------------------------------------------------------------------- models


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


def _count(config):
    """(params, MACs) of `config` at its default size with 1000 classes, by building it."""
    import keras

    from keras_coatnet.model import CoAtNet
    from keras_coatnet.profile import profile

    policy = keras.config.dtype_policy()
    if config.name in PINNED:
        keras.config.set_dtype_policy("bfloat16")  # half the memory; same counts
    try:
        model = CoAtNet(config)
        counted = profile(model)
        del model
    finally:
        keras.config.set_dtype_policy(policy)
        keras.backend.clear_session()
    return counted.params, counted.macs


def _pretrained_table(names) -> None:
    from keras_coatnet.weights import list_pretrained

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
    print(_table(header + ("licence",), rows, right=(1, 2, 5)))
    print(
        f"\n{len(rows)} tags; top-1: ImageNet-1k validation as timm reports it (- for "
        "ImageNet-12k heads). weights='imagenet' takes the first 1000-class tag of a model."
    )


def cmd_models(args):
    from keras_coatnet import weights as registry
    from keras_coatnet.configs import CONFIGS

    pattern = args.filter.lower()
    names = [n for n in sorted(CONFIGS) if fnmatch.fnmatchcase(n.lower(), pattern)]
    if not names:  # as get_config, let '-' and '_' stand for each other
        pattern = pattern.replace("-", "_")
        names = [n for n in sorted(CONFIGS) if fnmatch.fnmatch(n.replace("-", "_"), pattern)]
    if not names:
        raise CLIError(
            f"no model matches --filter {args.filter!r}; the models: {', '.join(sorted(CONFIGS))}"
        )
    if args.pretrained:
        _pretrained_table(names)
        return
    rows, pinned_shown, has_tags = [], False, False
    start = time.perf_counter()
    with Progress(len(names), "counting", _interactive(args.quiet)) as progress:
        for name in names:
            config = CONFIGS[name]
            if name in PINNED and not args.all:
                params, macs = PINNED[name]
                mark, pinned_shown = "*", True
            else:
                progress.advance(0, name)
                params, macs = _count(config)
                mark = ""
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
                    _human(params) + mark,
                    _human(macs, MAC_UNITS) + mark,
                    config.default_size,
                    ", ".join(t.split(".", 1)[1] for t in tags) or "-",
                )
            )
            progress.advance(1, name)
    header = ("model", "family", "layout", "blocks S0..", "widths S0..")
    header += ("params", "MACs", "size", "weights")
    print(_table(header, rows, right=(5, 6, 7)))
    print(
        f"\n{len(rows)} models; params are trainable weights with 1000 classes, MACs one "
        "image at the default size (keras_coatnet.profile); "
        f"built and counted in {time.perf_counter() - start:.0f}s"
    )
    if pinned_shown:
        print(
            "* measured once by building the model (1.3B / 2.4B weights, 6 GiB); "
            "--all builds them again"
        )
    if has_tags:
        print(
            "weights: timm's tags, fetched from the Hugging Face Hub on first use; "
            f"`{PROG} models --pretrained` lists them with classes, top-1 and licence"
        )


# ----------------------------------------------------------------------------- summary


def _group(layer_name: str) -> str:
    if layer_name in ("images", "preprocessing") or layer_name.startswith("input"):
        return "input"
    if layer_name == "stem":
        return "stem"
    if layer_name.startswith("stage") and "_block" in layer_name:
        return layer_name.split("_block")[0]
    return "head"


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape[1:])


def cmd_summary(args):
    from keras_coatnet.profile import profile

    config = _config(args.model)
    size = _image_size(args.image_size, config)
    if args.classes < 1:
        raise CLIError(f"--classes must be at least 1, received: {args.classes}")
    model = _build(config, size, classes=args.classes)
    counted = profile(model)
    groups = {}
    for layer in model.layers:
        group = groups.setdefault(
            _group(layer.name), {"params": 0, "macs": 0, "blocks": 0, "shape": None}
        )
        group["params"] += sum(math.prod(w.shape) for w in layer.trainable_weights)
        group["shape"] = layer.output.shape
        group["blocks"] += "_block" in layer.name
    for path, macs in counted.per_layer.items():
        groups[_group(path.split("/")[1])]["macs"] += macs
    kinds = {"input": "rescale", "stem": f"{config.stem_depth}x conv 3x3", "head": "classifier"}
    for s, stage in enumerate(config.stages, start=1):
        kinds[f"stage{s}"] = "MBConv" if stage.block_type == "mbconv" else "Transformer"
    rows = []
    for name, group in groups.items():
        blocks = group["blocks"] or "-"
        rows.append(
            (
                name,
                kinds[name],
                blocks,
                _shape_text(group["shape"]),
                _human(group["params"]),
                _human(group["macs"], MAC_UNITS),
                f"{100 * group['macs'] / counted.macs:.1f}%",
            )
        )
    rows.append(
        (
            "total",
            "",
            sum(s.depth for s in config.stages),
            "",
            _human(counted.params),
            _human(counted.macs, MAC_UNITS),
            "100.0%",
        )
    )
    print(f"{config.name} at {size}x{size}, {args.classes} classes ({config.source})")
    print(
        _table(
            ("stage", "type", "blocks", "output", "params", "MACs", "of MACs"),
            rows,
            right=(2, 4, 5, 6),
        )
    )
    print(
        f"non-trainable {_human(counted.non_trainable)} (BatchNorm statistics, bias caches); "
        "MACs as keras_coatnet.profile counts them"
    )


# ----------------------------------------------------------------------------- evaluate


def _eval_tree(dataset: str):
    """(root, class names, [(file, label)]) of an image-folder tree.

    `dataset` holds one folder per class, or a split folder (`validation`,
    `test` or `val`, in that order, as `coatnet train` picks) that does.
    """
    if not os.path.isdir(dataset):
        raise CLIError(f"dataset directory not found: {dataset!r}")
    root = dataset
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for split in ("validation", "test", "val"):
        if split in classes:
            root = os.path.join(dataset, split)
            classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            break
    examples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in _images_under(os.path.join(root, name))
    ]
    if not examples:
        raise CLIError(
            f"no images under {dataset!r}: expected one folder per class (or a validation/ "
            f"or test/ split of them) holding {'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return root, classes, examples


def cmd_evaluate(args):
    import numpy as np

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, received: {args.batch_size}")
    crop_pct = _crop_pct(args.crop_pct)
    root, class_names, examples = _eval_tree(args.dataset)
    config, size, classes, model = _trained_model(args)
    settings = _eval_settings(model, crop_pct)
    if classes is None:
        raise CLIError(f"--weights {args.weights!r} has no classifier head to evaluate")
    if len(class_names) != classes:
        raise CLIError(
            f"{root!r} has {len(class_names)} class folders, the weights' head has {classes} "
            "classes; evaluate on a tree with one folder per class of the model"
        )
    labels = np.array([label for _, label in examples])
    probabilities, model_seconds, timed = [], 0.0, 0
    start = time.perf_counter()
    with (
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
        Progress(len(examples), "evaluating", _interactive(args.quiet)) as progress,
    ):
        for i, batch in enumerate(_batches([f for f, _ in examples], args.batch_size)):
            images = _load_batch(pool, batch, size, settings)
            tick = time.perf_counter()
            probabilities.append(np.asarray(model.predict_on_batch(images), dtype="float64"))
            if i > 0:  # the first batch traces the function
                model_seconds += time.perf_counter() - tick
                timed += len(batch)
            progress.advance(len(batch))
    total_seconds = time.perf_counter() - start
    probabilities = np.concatenate(probabilities)
    ranked = np.argsort(-probabilities, axis=1)
    top1 = float(np.mean(ranked[:, 0] == labels))
    top5 = float(np.mean(np.any(ranked[:, : min(5, classes)] == labels[:, None], axis=1)))
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(np.mean(-np.log(np.clip(picked, 1e-12, 1.0))))
    print(f"{config.name} at {size}x{size} on {root}: {len(labels)} images, {classes} classes")
    print(f"top-1 {top1:.4f}  top-5 {top5:.4f}  loss {loss:.4f} (cross-entropy)")
    alone = f"{timed / model_seconds:.1f}" if timed else "n/a (one batch)"
    print(
        f"images/s {len(labels) / total_seconds:.1f} end to end (decoding and tracing "
        f"included), {alone} for the model after its first batch; batch {args.batch_size}"
    )


# ----------------------------------------------------------------------------- predict


def _inputs(paths) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = _images_under(path)
            if not found:
                raise CLIError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in folder {path!r}")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CLIError(f"no such image or folder: {path!r}")
    return files


def _class_names(classes_file, classes):
    if classes_file is None:
        return None
    if not os.path.isfile(classes_file):
        raise CLIError(f"classes file not found: {classes_file!r}")
    with open(classes_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != classes:
        raise CLIError(
            f"--classes-file {classes_file!r} names {len(names)} classes, the model has "
            f"{classes}; give one name per line, in class-index order"
        )
    return names


def cmd_predict(args):
    import numpy as np

    from keras_coatnet.imagenet_utils import decode_predictions

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, received: {args.batch_size}")
    if args.top < 1:
        raise CLIError(f"--top must be at least 1, received: {args.top}")
    crop_pct = _crop_pct(args.crop_pct)
    files = _inputs(args.images)
    config, size, classes, model = _trained_model(args)
    settings = _eval_settings(model, crop_pct)
    if classes is None:
        raise CLIError(f"--weights {args.weights!r} has no classifier head to predict with")
    names = _class_names(args.classes_file, classes)
    top = min(args.top, classes)
    with (
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
        Progress(len(files), "predicting", _interactive(args.quiet)) as progress,
    ):
        for batch in _batches(files, args.batch_size):
            probabilities = np.asarray(
                model.predict_on_batch(_load_batch(pool, batch, size, settings)), "float64"
            )
            imagenet = (
                decode_predictions(probabilities, top=top)
                if names is None and classes == 1000
                else None
            )
            progress.close()
            for n, (path, row) in enumerate(zip(batch, probabilities, strict=True)):
                best = np.argsort(row)[::-1][:top]
                if imagenet is not None:
                    labels = [f"{wnid} {name}" for wnid, name, _ in imagenet[n]]
                else:
                    labels = [names[i] if names else str(i) for i in best]
                _print_prediction(args.format, path, best, labels, row)
            progress.advance(len(batch))


def _print_prediction(form, path, best, labels, row):
    if form == "json":
        entries = [
            {"index": int(i), "class": label, "probability": float(row[i])}
            for i, label in zip(best, labels, strict=True)
        ]
        print(json.dumps({"image": path, "top": entries}), flush=True)
        return
    print(path)
    for i, label in zip(best, labels, strict=True):
        print(f"  {row[i]:.4f}  {label}")


# ----------------------------------------------------------------------------- plots


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
    from keras_coatnet.layers import RelativeAttention

    def walk(layer):
        yield layer
        for sub in getattr(layer, "_layers", []) or []:
            yield from walk(sub)

    for block in model.layers:
        for layer in walk(block):
            if isinstance(layer, RelativeAttention):
                yield block.name, layer


def cmd_plot_bias(args):
    import keras

    plots = _plots()
    config, size, _, model = _trained_model(args)
    blocks = list(_attention_layers(model))
    if not blocks:
        raise CLIError(f"{config.name} has no attention blocks to plot")
    os.makedirs(args.out, exist_ok=True)
    with Progress(len(blocks), "plotting", _interactive(args.quiet)) as progress:
        written = []
        for name, attention in blocks:
            table = keras.ops.convert_to_numpy(attention.table())
            path = os.path.join(args.out, f"{name}_bias.png")
            plots.plot_relative_bias(
                table,
                attention.height,
                attention.width,
                f"{config.name} {name}",
                path,
            )
            written.append((path, attention))
            progress.advance(1, name)
    for path, attention in written:
        print(
            f"{path}: {attention.num_heads} heads, "
            f"{2 * attention.height - 1}x{2 * attention.width - 1} offsets"
        )


def cmd_plot_history(args):
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
    print(_table(("metric", "split", "epochs", "last", "best epoch"), rows, right=(2, 3, 4)))


# ----------------------------------------------------------------------------- delegates


def _load_script(path: Path, name: str, what: str):
    if not path.is_file():
        raise CLIError(
            f"{what} not found: {path} (it is part of the source repository, not of an "
            "installed package; run from a checkout)"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered, as for an import: tf.function's autograph looks functions'
    # modules up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise CLIError(f"{path} has no main(argv) function")
    return module


def _strip(argv, flags):
    return [a for a in argv if a not in flags]


def run_train(argv, quiet):
    train = importlib.import_module("keras_coatnet.training.train")
    parser = train.parser()
    parser.error = _Parser.error.__get__(parser)
    args = parser.parse_args(argv)
    args.quiet = args.quiet or quiet
    distribution = importlib.import_module("keras_coatnet.training.distribution")
    try:
        train.train(args)
    except distribution.LostContactError as error:
        distribution.exit_lost_contact(f"{PROG} train", error)  # status 1, no JAX shutdown
    except ValueError as error:
        raise CLIError(str(error)) from error
    return 0


def run_export(argv, quiet):
    export = importlib.import_module("keras_coatnet.export")  # the module, not the function
    argv = _strip(argv, ("--quiet",))
    with _delegated(f"{PROG} export", export.__file__, argv):
        return export.main(argv)


def run_convert(argv, quiet):
    module = _load_script(CONVERT_SCRIPT, "keras_coatnet_convert_timm", "weights/convert_timm.py")
    argv = _strip(argv, GLOBAL_FLAGS)
    enabled = _interactive(quiet) and not {"-h", "--help"} & set(argv)
    with _delegated(f"{PROG} convert", CONVERT_SCRIPT, argv), _Ticker("converting", enabled):
        return module.main(argv)


def run_bench(argv, quiet):
    path = Path(os.environ.get(BENCH_ENV) or BENCH_SCRIPT)
    module = _load_script(path, "keras_coatnet_bench", "benchmarks/bench.py")
    argv = _strip(argv, ("--verbose",))
    enabled = _interactive(quiet or "--quiet" in argv) and not {"-h", "--help"} & set(argv)
    with _delegated(f"{PROG} bench", path, argv), _Ticker("benchmarking", enabled):
        return module.main(argv)


RUNNERS = {"train": run_train, "export": run_export, "convert": run_convert, "bench": run_bench}


# ----------------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    """The `coatnet` parser (the delegated subcommands parse their own flags)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet", action="store_true", help="no progress bar (also off when stdout is no terminal)"
    )
    common.add_argument("--verbose", action="store_true", help="show the traceback on errors")
    top = _Parser(
        prog=PROG,
        description="CoAtNet for Keras: models, training, evaluation, prediction, export, plots.",
        epilog="Each subcommand has --help. Exit status: 0 ok, 1 failed while working, "
        "2 bad invocation.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help, **kwargs):
        return sub.add_parser(name, help=help, description=help, parents=[common], **kwargs)

    p = add("models", "table of every variant: layout, params, MACs, pretrained weights")
    p.add_argument("--filter", default="*", help="shell pattern on the name, e.g. 'coatnet_rmlp*'")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the pretrained tags instead: Hub repo, classes, size, crop, mean/std, "
        "top-1 as timm reports it, licence (builds nothing)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="also build CoAtNet-6/7 (6 GiB, about 30 s on 2 cores) instead of showing "
        "their measured counts",
    )
    p.set_defaults(func=cmd_models)

    p = add("summary", "stage-by-stage table of one model: output shape, blocks, params, MACs")
    p.add_argument("model", help=f"architecture name (`{PROG} models` lists them)")
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")
    p.add_argument("--classes", type=int, default=1000, help="classifier outputs (1000)")
    p.set_defaults(func=cmd_summary)

    sub.add_parser(
        "train",
        help="train a model (the digits demo by default); see coatnet train --help",
        add_help=False,
    )

    def add_trained(p):
        p.add_argument("--model", required=True, help=f"architecture (`{PROG} models`)")
        p.add_argument(
            "--weights",
            required=True,
            help="'imagenet', a tag, hf://owner/repo, a model.safetensors or .weights.h5 file",
        )
        p.add_argument("--image-size", type=int, help="input side (default: the model's)")

    def add_images(p):
        p.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
        p.add_argument(
            "--crop-pct",
            type=float,
            help="resize the shorter side to size/CROP_PCT and centre-crop (timm's "
            "evaluation, e.g. 0.95); default: the pretrained weights' own settings, else "
            "resize the whole image, as `coatnet train` does",
        )

    p = add("evaluate", "top-1/top-5 accuracy, loss and images/s over an image-folder tree")
    add_trained(p)
    p.add_argument(
        "--dataset",
        required=True,
        help="folder with one subfolder per class (class order: sorted names), or with a "
        "validation/ or test/ split of them",
    )
    add_images(p)
    p.set_defaults(func=cmd_evaluate)

    p = add("predict", "top classes with probabilities for images or folders of images")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    add_trained(p)
    p.add_argument(
        "--classes-file",
        help="class names, one per line in index order (default: ImageNet names for 1000 "
        "classes, else indices)",
    )
    p.add_argument("--top", type=int, default=5, help="classes shown per image (5)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: one line each")
    add_images(p)
    p.set_defaults(func=cmd_predict)

    sub.add_parser("export", help="TF Serving SavedModel (keras_coatnet.export)", add_help=False)
    sub.add_parser(
        "convert",
        help="convert timm weights to .weights.h5 (weights/convert_timm.py)",
        add_help=False,
    )
    sub.add_parser("bench", help="benchmarks (benchmarks/bench.py)", add_help=False)

    p = add("plot-bias", "heat maps of each attention block's learned relative bias, per head")
    add_trained(p)
    p.add_argument("--out", required=True, help="folder for one PNG per attention block")
    p.set_defaults(func=cmd_plot_bias)

    p = add("plot-history", "loss/accuracy curves of a training run's TensorBoard logs")
    p.add_argument("logdir", help="the logs folder (train/, validation/) or the run's output dir")
    p.add_argument("--out", help="PNG to write (default: LOGDIR/history.png)")
    p.add_argument("--title", help="figure title (default: the log folder)")
    p.set_defaults(func=cmd_plot_history)
    return top


def _version() -> str:
    import keras_coatnet

    return keras_coatnet.__version__


# ----------------------------------------------------------------------------- main


def _leading_flags(argv):
    """Global flags given before the subcommand, and the rest."""
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        i += 1
    return argv[:i], argv[i:]


def main(argv=None) -> int:
    """Run `coatnet ARGV`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lead, rest = _leading_flags(argv)
    verbose = "--verbose" in argv
    command = rest[0] if rest else None
    prog = f"{PROG} {command}" if command in (*DELEGATED, *_commands()) else PROG
    try:
        if command in DELEGATED:
            return int(RUNNERS[command](rest[1:] + lead, "--quiet" in argv) or 0)
        args = parser().parse_args(rest + lead if lead else rest)
        args.func(args)
        return 0
    except (Exception, KeyboardInterrupt) as error:
        return report(prog, error, verbose)


def _commands():
    return ("models", "summary", "evaluate", "predict", "plot-bias", "plot-history")


if __name__ == "__main__":
    sys.exit(main())
