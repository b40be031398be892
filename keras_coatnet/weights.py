"""Pretrained weights: a registry of timm's CoAtNet tags, and `weights=` resolution.

timm 1.0.31 publishes ImageNet weights for its own CoAtNet variants (the
`*_rw_*` models; the paper's CoAtNet-0..7 were never released). Each tag is
converted to a Keras `.weights.h5` file by `weights/convert_timm.py`. A file is
downloaded only once its SHA-256 is recorded here; until then `resolve()` says
how to convert it locally.

The evaluation settings of each entry are those of timm's `default_cfgs` in
`timm/models/maxxvit.py` (`_cfg` defaults: 224 px, crop 0.95, center crop,
bicubic, mean = std = 0.5, 1000 classes, Apache-2.0). Top-1 is timm's
ImageNet-1k validation accuracy from `results/results-imagenet.csv` of
huggingface/pytorch-image-models, measured at those settings; it is `None` for
the ImageNet-12k heads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass

import keras

BASE_URL = "https://github.com/keras-coatnet/keras-coatnet/releases/download/weights-v1/"
URL_ENV = "KERAS_COATNET_WEIGHTS_URL"
CACHE_SUBDIR = "keras_coatnet"
CONVERT_SCRIPT = "weights/convert_timm.py"
CONVERT_OUTPUT_DIR = "weights"
IMAGENET = "imagenet"

CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_1K_CLASSES = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsFetchError(ValueError, OSError):
    """A published weights file could not be downloaded.

    Both a `ValueError` (like every other `weights=` problem) and an `OSError`
    (like other I/O failures), so either `except` clause catches it.
    """


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained tag: where its file lives and how to evaluate it.

    Args:
        tag: timm's name for the weights, `"MODEL.PRETRAINED_TAG"`, e.g.
            `"coatnet_0_rw_224.sw_in1k"`.
        model: The architecture the weights fit, e.g. `"coatnet_0_rw_224"`;
            the part of `tag` before the dot.
        file_name: Name of the converted `.weights.h5` file, also its name
            under `BASE_URL` and in the download cache.
        image_size: Square image side the weights are evaluated at.
        crop_pct: Fraction of the resized image kept by the evaluation crop.
        crop_mode: `"center"` (resize the short side to
            `image_size / crop_pct`, then center-crop), `"squash"` (resize
            both sides, ignoring the aspect ratio, then center-crop) or
            `"border"` (timm's fixed-border crop).
        interpolation: Resize interpolation, e.g. `"bicubic"`.
        mean: Per-channel input mean on the 0..1 scale.
        std: Per-channel input std on the 0..1 scale.
        num_classes: Classes of the classifier head (1000 for ImageNet-1k,
            11821 for timm's ImageNet-12k).
        licence: Licence of the weights.
        top1: ImageNet-1k top-1 accuracy in percent as reported by timm, or
            `None` where unknown or not an ImageNet-1k head.
        sha256: SHA-256 (lowercase hex) of the published file; `None` until
            the file is published.
    """

    tag: str
    model: str
    file_name: str
    image_size: int = 224
    crop_pct: float = 0.95
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    num_classes: int = IMAGENET_1K_CLASSES
    licence: str = "Apache-2.0"
    top1: float | None = None
    sha256: str | None = None

    def __post_init__(self):
        if self.tag.count(".") != 1 or self.tag.split(".")[0] != self.model:
            raise ValueError(
                f"tag must be 'MODEL.PRETRAINED_TAG' with MODEL={self.model!r}, "
                f"received: {self.tag!r}"
            )
        bare = os.path.basename(self.file_name) == self.file_name
        if not bare or not self.file_name.endswith(".weights.h5"):
            raise ValueError(
                f"file_name must be a bare '*.weights.h5' name, received: {self.file_name!r}"
            )
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, received: {self.image_size!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], received: {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, received: {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, received: {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, received: {self.mean!r}, {self.std!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, received: {self.num_classes!r}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(
                f"sha256 must be None or 64 lowercase hex digits, received: {self.sha256!r}"
            )

    @classmethod
    def from_tag(cls, tag: str, **fields) -> WeightsEntry:
        """An entry for `tag` with `model` and `file_name` derived from it."""
        fields.setdefault("model", tag.split(".")[0])
        fields.setdefault("file_name", f"{tag}.weights.h5")
        return cls(tag=tag, **fields)

    @property
    def url(self) -> str:
        """Where the published file lives: `base_url() + file_name`."""
        return base_url() + self.file_name

    @property
    def published(self) -> bool:
        """Whether a file is published (its SHA-256 is recorded)."""
        return self.sha256 is not None

    def replace(self, **changes) -> WeightsEntry:
        """Return a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


_SQUASH_384 = {"image_size": 384, "crop_pct": 1.0, "crop_mode": "squash"}
_IN12K = {"num_classes": 11821}

# In the order of timm's `default_cfgs`: a model's first 1000-class tag here
# is timm's default tag for it, and `default_tag()` returns it.
_ENTRIES = (
    WeightsEntry.from_tag("coatnet_nano_rw_224.sw_in1k", crop_pct=0.9, top1=81.698),
    WeightsEntry.from_tag("coatnet_0_rw_224.sw_in1k", top1=82.390),
    WeightsEntry.from_tag("coatnet_1_rw_224.sw_in1k", top1=83.596),
    WeightsEntry.from_tag("coatnet_2_rw_224.sw_in12k_ft_in1k", top1=86.568),
    WeightsEntry.from_tag("coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k", top1=84.910),
    WeightsEntry.from_tag("coatnet_rmlp_2_rw_224.sw_in12k_ft_in1k", top1=86.504),
    WeightsEntry.from_tag("coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k", **_SQUASH_384, top1=87.382),
    WeightsEntry.from_tag(
        "coatnet_bn_0_rw_224.sw_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD, top1=82.400
    ),
    WeightsEntry.from_tag("coatnet_rmlp_nano_rw_224.sw_in1k", crop_pct=0.9, top1=82.050),
    WeightsEntry.from_tag("coatnet_rmlp_1_rw_224.sw_in1k", top1=83.362),
    WeightsEntry.from_tag("coatnet_rmlp_2_rw_224.sw_in1k", top1=84.606),
    WeightsEntry.from_tag("coatnet_2_rw_224.sw_in12k", **_IN12K),
    WeightsEntry.from_tag("coatnet_3_rw_224.sw_in12k", **_IN12K),
    WeightsEntry.from_tag("coatnet_rmlp_1_rw2_224.sw_in12k", **_IN12K),
    WeightsEntry.from_tag("coatnet_rmlp_2_rw_224.sw_in12k", **_IN12K),
)
REGISTRY: dict[str, WeightsEntry] = {entry.tag: entry for entry in _ENTRIES}


def base_url() -> str:
    """`$KERAS_COATNET_WEIGHTS_URL` if set (read now), else `BASE_URL`; ends with `/`."""
    url = os.environ.get(URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def _model_key(model: str) -> str:
    """`"CoAtNet-0-rw-224"` and `"coatnet_0_rw_224"` name the same model."""
    return model.lower().replace("-", "_")


def list_weights(model: str | None = None) -> list[str]:
    """Tags in the registry, all of them or those of `model`, in registry order."""
    if model is None:
        return list(REGISTRY)
    key = _model_key(model)
    return [tag for tag, entry in REGISTRY.items() if entry.model == key]


def models_with_weights() -> list[str]:
    """Sorted names of the models that have at least one registry entry."""
    return sorted({entry.model for entry in REGISTRY.values()})


def default_tag(model: str) -> str | None:
    """The tag `weights="imagenet"` means for `model`: its first 1000-class tag.

    That is timm's default tag (ImageNet-12k fine-tuned on 1k where both
    exist). `None` if the model has no ImageNet-1k head in the registry.
    """
    for tag in list_weights(model):
        if REGISTRY[tag].num_classes == IMAGENET_1K_CLASSES:
            return tag
    return None


def get_entry(tag: str) -> WeightsEntry:
    """The registry entry of `tag`; a `ValueError` listing the tags if unknown."""
    if tag not in REGISTRY:
        raise ValueError(f"Unknown weights tag {tag!r}; choose one of {list(REGISTRY)}")
    return REGISTRY[tag]


def eval_config(tag: str) -> dict:
    """Evaluation preprocessing of `tag`, as timm's pretrained config gives it.

    Returns:
        A dict with `image_size`, `crop_pct`, `crop_mode`, `interpolation`,
        `mean`, `std` and `num_classes`.
    """
    entry = get_entry(tag)
    keys = ("image_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes")
    return {key: getattr(entry, key) for key in keys}


def register(entry: WeightsEntry, *, replace: bool = False) -> WeightsEntry:
    """Add `entry` to the registry and return it.

    Args:
        entry: The entry to add.
        replace: Allow replacing an existing entry of the same tag.

    Raises:
        ValueError: If the tag is registered already and `replace` is False.
    """
    if not isinstance(entry, WeightsEntry):
        raise ValueError(f"entry must be a WeightsEntry, received: {entry!r}")
    if entry.tag in REGISTRY and not replace:
        raise ValueError(
            f"weights tag {entry.tag!r} is registered already; pass replace=True to replace it"
        )
    REGISTRY[entry.tag] = entry
    return entry


def unregister(tag: str) -> WeightsEntry:
    """Remove `tag` from the registry and return its entry."""
    entry = get_entry(tag)
    del REGISTRY[tag]
    return entry


@contextlib.contextmanager
def registered(entry: WeightsEntry):
    """Register `entry` for the duration of a `with` block (replacing any entry
    of the same tag), then restore the registry as it was. Yields the entry."""
    previous = REGISTRY.get(entry.tag)
    register(entry, replace=True)
    try:
        yield entry
    finally:
        if previous is None:
            REGISTRY.pop(entry.tag, None)
        else:
            REGISTRY[entry.tag] = previous


def convert_command(tag: str, output_dir: str = CONVERT_OUTPUT_DIR) -> str:
    """The command that converts timm's weights of `tag` to a `.weights.h5` file."""
    return f"python {CONVERT_SCRIPT} {tag} --output-dir {output_dir}"


def _convert_hint(entry: WeightsEntry) -> str:
    path = f"{CONVERT_OUTPUT_DIR}/{entry.file_name}"
    return (
        f"convert timm's weights locally (needs the timm extra: pip install "
        f"'keras_coatnet[timm]'), from the repository root: `{convert_command(entry.tag)}`, "
        f"then pass weights={path!r}"
    )


def sha256_of(path) -> str:
    """SHA-256 of a file in lowercase hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tag_of(weights: str, model: str) -> str | None:
    """The registry tag `weights` names for `model`, or None if it names none."""
    key = _model_key(model)
    if weights == IMAGENET:
        tag = default_tag(key)
        if tag is None:
            raise ValueError(
                f"model {model!r} has no ImageNet-1k weights for weights='imagenet'; "
                f"its tags: {list_weights(key)}"
            )
        return tag
    for tag in (weights, f"{key}.{weights}"):
        if tag in REGISTRY:
            if REGISTRY[tag].model != key:
                raise ValueError(
                    f"weights {weights!r} are for model {REGISTRY[tag].model!r}, not for "
                    f"{model!r}; the tags of {model!r}: {list_weights(key)}"
                )
            return tag
    return None


def resolve(weights, model: str, *, cache_dir=None) -> str:
    """Turn a `weights=` argument into the path of a local `.weights.h5` file.

    Args:
        weights: A path to an existing file (returned as is), `"imagenet"`
            (the model's `default_tag()`), or a registry tag, with or without
            the model prefix (`"sw_in1k"` or `"coatnet_0_rw_224.sw_in1k"`).
        model: The model the weights are for, e.g. `"coatnet_0_rw_224"`
            (`-` and `_` are interchangeable, case is ignored).
        cache_dir: Download cache root; the file lands in
            `cache_dir/keras_coatnet/`. Defaults to `$KERAS_HOME` read at call
            time (Keras itself reads it once, at import), else Keras' default
            (`~/.keras`).

    Returns:
        The local file path.

    Raises:
        ValueError: If `weights` is none of the above, names another model's
            tag, the model has no weights, the tag is not published yet (the
            message gives the convert command), or the download's SHA-256 does
            not match the registry (the file is deleted).
        WeightsFetchError: If the download fails (a `ValueError` and an
            `OSError`; the message gives the convert command as the offline
            alternative).
    """
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise ValueError(
            f"weights must be None, a file path, 'imagenet' or a tag, received: {weights!r}"
        )
    if os.path.isfile(weights):
        return weights
    if weights.endswith(".h5") or "/" in weights or os.sep in weights:
        raise ValueError(f"weights file not found: {weights!r}")
    key = _model_key(model)
    if not list_weights(key):
        raise ValueError(
            f"no pretrained weights exist for model {model!r} (weights={weights!r}); timm "
            f"publishes ImageNet weights only for {models_with_weights()}. To convert one "
            f"of their tags: `{convert_command('TAG')}`"
        )
    tag = _tag_of(weights, model)
    if tag is None:
        raise ValueError(
            f"weights={weights!r} is not a file, 'imagenet', or a tag of {model}: "
            f"{list_weights(key)}"
        )
    return _download(REGISTRY[tag], cache_dir)


def _download(entry: WeightsEntry, cache_dir) -> str:
    if entry.sha256 is None:
        raise ValueError(
            f"weights {entry.tag!r} are not published yet (no SHA-256 recorded in "
            f"keras_coatnet/weights.py); {_convert_hint(entry)}"
        )
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_HOME")
    if cache_dir is not None:
        cache_dir = os.path.expanduser(os.fspath(cache_dir))
        # get_file falls back to /tmp/.keras when the directory does not exist.
        os.makedirs(cache_dir, exist_ok=True)
    url = entry.url
    # A cached file from an earlier publication may be stale: on a mismatch,
    # download once more before giving up.
    for force_download in (False, True):
        try:
            path = keras.utils.get_file(
                fname=entry.file_name,
                origin=url,
                cache_subdir=CACHE_SUBDIR,
                cache_dir=cache_dir,
                file_hash=None,
                force_download=force_download,
            )
        except Exception as error:
            raise WeightsFetchError(
                f"could not fetch weights {entry.tag!r} from {url} ({error}); offline, "
                f"{_convert_hint(entry)}"
            ) from error
        actual = sha256_of(path)
        if actual == entry.sha256:
            return path
        os.remove(path)
    raise ValueError(
        f"SHA-256 mismatch for weights {entry.tag!r} downloaded from {url}: expected "
        f"{entry.sha256}, got {actual}; the file was deleted"
    )
