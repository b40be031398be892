"""timm's published CoAtNet weights: one entry per tag, with its evaluation settings.

timm 1.0.31 publishes ImageNet weights for its own CoAtNet variants (the
`*_rw_*` and `coatnet_rmlp_*` models; Google never released the paper's
CoAtNet-0..7). Each tag lives on the Hugging Face Hub as repo `timm/<tag>`
holding `model.safetensors`; `keras_coatnet.weights.resolve` fetches and
converts it. Neither the files' hashes nor the repos' revisions are pinned
here: no machine this package is developed on reaches the Hub, so they could
not be read; every download is checked against the SHA-256 the Hub itself
serves (the ETag of an LFS file) instead.

Evaluation settings are those of timm's `default_cfgs` in
`timm/models/maxxvit.py` (`_cfg` defaults: 224 px, crop 0.95, centre crop,
bicubic, mean = std = 0.5, 1000 classes; `tests/test_weights_registry.py`
compares every entry with timm's `pretrained_cfg`). Top-1 is timm's
ImageNet-1k validation accuracy at those settings, from
`results/results-imagenet.csv` of huggingface/pytorch-image-models at commit
4e5207c7bb6592474ca56e28b2cf85be8f1a550f (2025-10-30, a re-measurement; the
file at 049b1332531609533befd272f451991551560581, May 2023, gave figures up to
0.034 points apart). The test compares every entry with a copy of those rows
(`tests/fixtures/timm_results_imagenet_coatnet.csv`). `None` for the
ImageNet-12k heads, which have no row there. Licence: Apache-2.0 on every
model card.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from keras_coatnet.naming import model_key, split_tag
from keras_coatnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, EvalSettings

IMAGENET = "imagenet"
IMAGENET_1K_CLASSES = 1000
HUB_ORGANISATION = "timm"
CHECKPOINT_FILE = "model.safetensors"


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained tag: where it lives and how it is evaluated.

    Args:
        tag: timm's name, `"MODEL.PRETRAINED_TAG"`, e.g.
            `"coatnet_0_rw_224.sw_in1k"`.
        image_size: Square image side the weights are evaluated at.
        eval_settings: Crop, interpolation, mean and std of the evaluation.
        num_classes: Classes of the head (1000 for ImageNet-1k, 11821 for
            timm's ImageNet-12k).
        licence: Licence of the weights.
        top1: ImageNet-1k top-1 in percent from timm's results table (the
            commit cited above), or `None`.
    """

    tag: str
    image_size: int = 224
    eval_settings: EvalSettings = EvalSettings()
    num_classes: int = IMAGENET_1K_CLASSES
    licence: str = "Apache-2.0"
    top1: float | None = None

    def __post_init__(self):
        if not isinstance(self.tag, str) or self.tag.count(".") != 1:
            raise ValueError(f"tag must be 'MODEL.PRETRAINED_TAG', received: {self.tag!r}")
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, received: {self.image_size!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, received: {self.num_classes!r}")

    @property
    def model(self) -> str:
        """The architecture, the part of `tag` before the dot."""
        return split_tag(self.tag)[0]

    @property
    def repo_id(self) -> str:
        """The Hub repository holding the checkpoint: `"timm/<tag>"`."""
        return f"{HUB_ORGANISATION}/{self.tag}"

    def replace(self, **changes) -> WeightsEntry:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


_CROP_90 = EvalSettings(crop_pct=0.9)
_SQUASH_384 = {"image_size": 384, "eval_settings": EvalSettings(crop_pct=1.0, crop_mode="squash")}
_IMAGENET_STATS = EvalSettings(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_IN12K = {"num_classes": 11821}

# In the order of timm's `default_cfgs`: a model's first 1000-class tag here
# is timm's default tag for it (`default_tag`).
_ENTRIES = (
    WeightsEntry("coatnet_nano_rw_224.sw_in1k", eval_settings=_CROP_90, top1=81.704),
    WeightsEntry("coatnet_0_rw_224.sw_in1k", top1=82.396),
    WeightsEntry("coatnet_1_rw_224.sw_in1k", top1=83.620),
    WeightsEntry("coatnet_2_rw_224.sw_in12k_ft_in1k", top1=86.582),
    WeightsEntry("coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k", top1=84.940),
    WeightsEntry("coatnet_rmlp_2_rw_224.sw_in12k_ft_in1k", top1=86.538),
    WeightsEntry("coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k", **_SQUASH_384, top1=87.388),
    WeightsEntry("coatnet_bn_0_rw_224.sw_in1k", eval_settings=_IMAGENET_STATS, top1=82.394),
    WeightsEntry("coatnet_rmlp_nano_rw_224.sw_in1k", eval_settings=_CROP_90, top1=82.064),
    WeightsEntry("coatnet_rmlp_1_rw_224.sw_in1k", top1=83.350),
    WeightsEntry("coatnet_rmlp_2_rw_224.sw_in1k", top1=84.608),
    WeightsEntry("coatnet_2_rw_224.sw_in12k", **_IN12K),
    WeightsEntry("coatnet_3_rw_224.sw_in12k", **_IN12K),
    WeightsEntry("coatnet_rmlp_1_rw2_224.sw_in12k", **_IN12K),
    WeightsEntry("coatnet_rmlp_2_rw_224.sw_in12k", **_IN12K),
)
REGISTRY: dict[str, WeightsEntry] = {entry.tag: entry for entry in _ENTRIES}


def list_pretrained(model: str | None = None) -> list[WeightsEntry]:
    """The pretrained tags, all of them or those of `model`, in timm's order.

    Each `WeightsEntry` gives the tag, its Hub repo, classes, image size,
    evaluation settings, top-1 (as timm reports it) and licence.
    """
    key = None if model is None else model_key(model)
    return [entry for entry in REGISTRY.values() if key is None or entry.model == key]


def list_weights(model: str | None = None) -> list[str]:
    """The tags (strings) of `list_pretrained(model)`."""
    return [entry.tag for entry in list_pretrained(model)]


def models_with_weights() -> list[str]:
    """Sorted names of the models that have at least one tag."""
    return sorted({entry.model for entry in REGISTRY.values()})


def default_tag(model: str) -> str | None:
    """The tag `weights="imagenet"` means for `model`: its first 1000-class tag.

    That is timm's default tag (ImageNet-12k fine-tuned on 1k where both
    exist); `None` if the model has no ImageNet-1k head.
    """
    for entry in list_pretrained(model):
        if entry.num_classes == IMAGENET_1K_CLASSES:
            return entry.tag
    return None


def pretrained_entry(model: str) -> WeightsEntry | None:
    """The entry whose settings `model`'s weights use by default: its default tag's,
    else its first tag's; `None` for a model without weights."""
    tag = default_tag(model) or next(iter(list_weights(model)), None)
    return None if tag is None else REGISTRY[tag]


# The one place for the evaluation defaults of architectures without pretrained
# weights (the paper's CoAtNet-0..7, timm variants timm publishes no weights for,
# configs of one's own): timm's `_cfg` defaults, 224 px, crop 0.95, bicubic,
# mean = std = 0.5 (`EvalSettings()`). The digits model is this package's own:
# `coatnet train` trains it on 64 px scans.
DEFAULT_IMAGE_SIZE = 224
OWN_IMAGE_SIZES = {"coatnet_digits": 64}


def eval_defaults(model: str) -> tuple[EvalSettings, int]:
    """`(evaluation settings, image size)` of `model` (a variant name) when nothing else says.

    Those of its pretrained weights (`pretrained_entry`), else the documented
    defaults above. The builder normalises with them when it loads no
    weights, and takes the size as the default `input_shape`; `coatnet`
    commands and the counts table use the size too.
    """
    entry = pretrained_entry(model)
    if entry is not None:
        return entry.eval_settings, entry.image_size
    return EvalSettings(), OWN_IMAGE_SIZES.get(model_key(model), DEFAULT_IMAGE_SIZE)


def get_entry(tag: str) -> WeightsEntry:
    """The entry of `tag`; a `ValueError` with the closest tags if unknown."""
    if tag not in REGISTRY:
        close = difflib.get_close_matches(tag, list(REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
        raise ValueError(f"unknown weights tag {tag!r}; {hint}")
    return REGISTRY[tag]


def closest_tags(model: str) -> list[str]:
    """Tags of the timm variants closest to `model` (for models without weights).

    The paper's CoAtNet-N is closest to timm's `coatnet_N_rw_*` and
    `coatnet_rmlp_N_rw*`; without such a variant, the tags of the largest
    timm variants.
    """
    key = model_key(model)
    digits = [part for part in key.split("_") if part.isdigit()]
    if digits and digits[0] not in ("224", "384"):
        near = [tag for tag in REGISTRY if f"_{digits[0]}_" in split_tag(tag)[0] + "_"]
        if near:
            return near
    return [tag for tag in REGISTRY if tag.startswith(("coatnet_3_", "coatnet_rmlp_2_"))]
