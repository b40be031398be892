"""`coatnet evaluate` and `coatnet predict`: a trained model over image files.

Images are decoded and resized/cropped by `preprocessing.eval_transform`
with the weights' own evaluation settings (or `--crop-pct`), the same
transform the SavedModel's `serving_bytes` signature runs.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from keras_coatnet._errors import at_least, first_line
from keras_coatnet.cli._common import (
    IMAGE_EXTENSIONS,
    PROG,
    CLIError,
    Progress,
    add_command,
    config,
    image_size,
    interactive,
)


def register(subparsers, parents) -> None:
    p = add_command(
        subparsers,
        "evaluate",
        "top-1/top-5 accuracy, loss and images/s over an image-folder tree",
        parents,
    )
    add_model_flags(p)
    p.add_argument(
        "--dataset",
        required=True,
        help="folder with one subfolder per class (class order: sorted names), or with a "
        "validation/ or test/ split of them",
    )
    _add_image_flags(p)
    p.set_defaults(run=run_evaluate)

    p = add_command(
        subparsers,
        "predict",
        "top classes with probabilities for images or folders of images",
        parents,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    add_model_flags(p)
    p.add_argument(
        "--classes-file",
        help="class names, one per line in index order (default: ImageNet names for 1000 "
        "classes, else indices)",
    )
    p.add_argument("--top", type=int, default=5, help="classes shown per image (5)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: one line each")
    _add_image_flags(p)
    p.set_defaults(run=run_predict)


def add_model_flags(p) -> None:
    """`--model`, `--weights`, `--image-size`: a model with trained weights (`trained_model`)."""
    p.add_argument("--model", required=True, help=f"architecture (`{PROG} models`)")
    p.add_argument(
        "--weights",
        required=True,
        help="'imagenet', a tag, hf://owner/repo, a model.safetensors or .weights.h5 file",
    )
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")


def _add_image_flags(p) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    p.add_argument(
        "--crop-pct",
        type=float,
        help="resize the shorter side to size/CROP_PCT and centre-crop (timm's "
        "evaluation, e.g. 0.95); default: the pretrained weights' own settings, else "
        "resize the whole image, as `coatnet train` does",
    )


# ----------------------------------------------------------------------------- the model


def trained_model(args):
    """(config, size, classes, model) of `--model`, `--image-size` and `--weights`.

    The classifier has the weights' classes; weights without a head give a
    backbone (`classes` None).
    """
    from keras_coatnet import weights as registry
    from keras_coatnet.model import CoAtNet

    cfg = config(args.model)
    size = image_size(args.image_size, cfg)
    if os.path.isdir(args.weights):
        raise CLIError(f"--weights {args.weights!r} is a directory; give a .weights.h5 file")
    try:
        resolved = registry.resolve(args.weights, cfg)
    except registry.WeightsFetchError as error:
        raise CLIError(str(error), code=1) from error
    except ValueError as error:
        raise CLIError(str(error)) from error
    classes = resolved.classes
    kwargs = {"classes": classes} if classes is not None else {"include_top": False}
    try:
        model = CoAtNet(cfg, weights=resolved, input_shape=(size, size, 3), **kwargs)
    except ValueError as error:
        raise CLIError(str(error)) from error
    return cfg, size, classes, model


def _eval_settings(model, crop_pct: float | None):
    """`--crop-pct` (a centre crop), else the weights' own settings, else the whole
    image resized, as `coatnet train` feeds its images."""
    from keras_coatnet.preprocessing import SQUASH_WHOLE_IMAGE, EvalSettings, eval_settings

    if crop_pct is not None:
        if not 0.0 < crop_pct <= 1.0:
            raise CLIError(f"--crop-pct must be in (0, 1], received: {crop_pct}")
        return EvalSettings(crop_pct=crop_pct, crop_mode="center")
    return eval_settings(model, EvalSettings(**SQUASH_WHOLE_IMAGE))


# ----------------------------------------------------------------------------- images


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


def _images_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [
            os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_batch(pool, files, size, settings):
    import numpy as np

    return np.stack(list(pool.map(lambda f: _load_image(f, size, settings), files)))


def _pool():
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


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


def run_evaluate(args):
    import numpy as np

    at_least("--batch-size", args.batch_size)
    root, class_names, examples = _eval_tree(args.dataset)
    cfg, size, classes, model = trained_model(args)
    settings = _eval_settings(model, args.crop_pct)
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
        _pool() as pool,
        Progress(len(examples), "evaluating", interactive(args.quiet)) as progress,
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
    print(f"{cfg.name} at {size}x{size} on {root}: {len(labels)} images, {classes} classes")
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


def run_predict(args):
    import numpy as np

    from keras_coatnet.imagenet_utils import decode_predictions

    at_least("--batch-size", args.batch_size)
    at_least("--top", args.top)
    files = _inputs(args.images)
    cfg, size, classes, model = trained_model(args)
    settings = _eval_settings(model, args.crop_pct)
    if classes is None:
        raise CLIError(f"--weights {args.weights!r} has no classifier head to predict with")
    names = _class_names(args.classes_file, classes)
    top = min(args.top, classes)
    with (
        _pool() as pool,
        Progress(len(files), "predicting", interactive(args.quiet)) as progress,
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
