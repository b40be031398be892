"""Evaluation preprocessing: the settings that travel with weights, and the one transform.

timm evaluates each checkpoint with its own `pretrained_cfg`: resize (keeping
the aspect ratio, or squashing), centre-crop a fraction `crop_pct` of the
resized image, normalise with the checkpoint's mean and std. A port that
normalised with the ImageNet statistics where the weights expected 0.5 lost
about 4 points of top-1, so these settings belong to the weights, not to the
architecture. `EvalSettings` holds them; `eval_transform` is the one
implementation of the resize and crop, used by `coatnet predict`,
`coatnet evaluate` and the exported `serving_bytes` signature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from keras_coatnet.naming import PREPROCESSING, parse_block_name

CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EvalSettings:
    """How a checkpoint's images are prepared for evaluation (timm's `pretrained_cfg`).

    Args:
        crop_pct: Fraction of the resized image kept by the centre crop: the
            image is resized to `floor(size / crop_pct)`, then cropped to
            `size`. Defaults to `0.95`.
        crop_mode: `"center"` (resize the shorter side, keep the aspect
            ratio) or `"squash"` (resize both sides). Defaults to `"center"`.
        interpolation: `"bicubic"` or `"bilinear"`. Defaults to `"bicubic"`.
        mean: Per-channel mean on the 0..1 scale. Defaults to 0.5 each.
        std: Per-channel standard deviation on the 0..1 scale. Defaults to
            0.5 each.
    """

    crop_pct: float = 0.95
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF

    def __post_init__(self):
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)):
            raise ValueError(f"crop_pct must be a number in (0, 1], received: {self.crop_pct!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], received: {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, received: {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, received: {self.interpolation!r}"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(tuple(value)) != 3:
                raise ValueError(f"{key} needs 3 values (RGB), received: {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, received: {self.std!r}")
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    def replace(self, **changes) -> EvalSettings:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-safe fields (lists for mean and std)."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EvalSettings:
        """The inverse of `to_dict`; unknown keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict, source: str = "pretrained_cfg") -> EvalSettings:
        """Settings from a timm `pretrained_cfg` dict (as in a Hub repo's `config.json`).

        Raises:
            ValueError: For settings this package cannot reproduce (e.g.
                timm's `"border"` crop), naming `source`.
        """
        defaults = cls()
        try:
            return cls(
                crop_pct=cfg.get("crop_pct", defaults.crop_pct),
                crop_mode=cfg.get("crop_mode", defaults.crop_mode),
                interpolation=cfg.get("interpolation", defaults.interpolation),
                mean=tuple(cfg.get("mean", defaults.mean)),
                std=tuple(cfg.get("std", defaults.std)),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: unsupported evaluation settings: {error}") from None


#: What `coatnet train` feeds its images: the whole image resized to the input.
SQUASH_WHOLE_IMAGE = dict(crop_pct=1.0, crop_mode="squash", interpolation="bicubic")


def resized_size(height, width, target_hw, settings: EvalSettings):
    """The (height, width) an image is resized to before the centre crop (TF tensors).

    `target_hw` is the crop size `(H, W)`. As timm: the scale size is
    `floor(side / crop_pct)`; `"squash"` resizes to it, `"center"` scales the
    image so both sides cover it (the shorter side lands on it exactly).
    """
    import tensorflow as tf

    scale = [int(s / settings.crop_pct) for s in target_hw]
    if settings.crop_mode == "squash":
        return tf.constant(scale, tf.int32)
    shape = tf.cast(tf.stack([height, width]), tf.float32)
    ratio = tf.reduce_max(tf.constant(scale, tf.float32) / shape)
    size = tf.cast(tf.math.floor(shape * ratio + 1e-3), tf.int32)
    return tf.maximum(size, tf.constant(scale, tf.int32))


def eval_transform(image, target_hw, settings: EvalSettings):
    """Resize and centre-crop one decoded image as timm evaluates it.

    Args:
        image: `(h, w, 3)` pixels in 0..255, any real or integer dtype (a TF
            tensor or array).
        target_hw: `(H, W)` of the model's input.
        settings: The checkpoint's `EvalSettings` (normalisation is the
            model's own preprocessing layer's job, not done here).

    Returns:
        `(H, W, 3)` float32 pixels in 0..255. TensorFlow's antialiased
        kernels stand in for PIL's; the crop offset is
        `round((size - H) / 2)`, as torchvision's `CenterCrop`.
    """
    import tensorflow as tf

    height, width = target_hw
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    size = resized_size(shape[0], shape[1], target_hw, settings)
    image = tf.image.resize(image, size, method=settings.interpolation, antialias=True)
    top = tf.cast(tf.math.round(tf.cast(size[0] - height, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.math.round(tf.cast(size[1] - width, tf.float32) / 2), tf.int32)
    image = image[top : top + height, left : left + width]
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (height, width, 3))


def eval_settings(model, default: EvalSettings | None = None) -> EvalSettings | None:
    """The evaluation settings a model carries in its `preprocessing` layer.

    A model built with pretrained weights (`weights="imagenet"`, a tag,
    `hf://...`) keeps its checkpoint's settings there, also through `.keras`
    files. Returns `default` for a model without them (no preprocessing
    layer, or weights of unknown origin).
    """
    try:
        layer = model.get_layer(PREPROCESSING)
    except ValueError:
        return default
    settings = getattr(layer, "eval_settings", None)
    return settings if settings is not None else default


def native_size(model) -> int | None:
    """The image side a size-free model's attention tables are stored for; `None` otherwise.

    Read from the model itself (each transformer block's `grid` times its
    stride from the input, the stem's 2 included), so it holds for models
    loaded from `.keras` files too: the checkpoint's size, else the
    variant's default.
    """
    if model.input.shape[1] is not None:
        return None
    reduction, seen = 2, set()
    for layer in model.layers:
        parsed = parse_block_name(layer.name)
        if parsed is None:
            continue
        if parsed[0] not in seen:  # a stage's first block carries its stride
            seen.add(parsed[0])
            reduction *= layer.strides
        if getattr(layer, "grid", None) is not None:
            return layer.grid[0] * reduction
    return None


def prepare_image(image, model, settings: EvalSettings | None = None, size=None):
    """One decoded image, resized and cropped for `model` as its weights were evaluated.

    Args:
        image: `(h, w, 3)` RGB pixels in 0..255 (a NumPy array, a PIL image
            or a tensor), any size.
        model: A CoAtNet; its preprocessing layer supplies the evaluation
            settings of its weights.
        settings: Overrides the model's settings. Defaults to the model's,
            else `EvalSettings()` (crop 0.95, centre, bicubic).
        size: The output `(height, width)` (or one side) for a size-free
            model (`input_shape=(None, None, 3)`); defaults to the size its
            tables are stored for (the checkpoint's evaluation size). A
            fixed-size model's own size wins.

    Returns:
        A `(H, W, 3)` float32 NumPy array of pixels in 0..255, ready for a
        model built with `include_preprocessing=True` (add the batch axis).
    """
    import numpy as np

    from keras_coatnet.config import check_image_size

    _, height, width, _ = model.input.shape
    if height is None:
        size = size or native_size(model)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        for side in (height, width):
            check_image_size(side, "size")
    settings = settings or eval_settings(model, EvalSettings())
    return np.asarray(eval_transform(np.asarray(image), (height, width), settings))
