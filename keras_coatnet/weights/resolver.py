"""`weights=`, resolved once to data: a local file and what is known about it.

Every form of the argument goes through `resolve()`, which returns one
`ResolvedWeights`: the file to load (a timm `model.safetensors` or a Keras
`.weights.h5`), its format, the classes of its head, and the evaluation
settings and image size of its checkpoint. Nothing here builds a model:
`keras_coatnet.CoAtNet` builds the one model and `weights.loader` loads the
file into it.

    None                          random initialisation
    "imagenet"                    the model's default timm tag
    "sw_in1k", "MODEL.sw_in1k"    a timm tag: Hub repo timm/MODEL.sw_in1k
    "hf://owner/repo[@revision]"  any timm-format CoAtNet checkpoint on the Hub
    "path/model.safetensors"      a timm checkpoint on disk
    "path/x.weights.h5"           a Keras weights file of this package
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass

from keras_coatnet.config import is_image_size
from keras_coatnet.naming import model_key, split_tag
from keras_coatnet.preprocessing import EvalSettings
from keras_coatnet.variants import CONFIGS, timm_names
from keras_coatnet.weights import checkpoint, hub, keras_file
from keras_coatnet.weights.registry import (
    CHECKPOINT_FILE,
    IMAGENET,
    REGISTRY,
    closest_tags,
    default_tag,
    eval_defaults,
    list_weights,
    pretrained_entry,
)

HF_PREFIX = "hf://"
CONFIG_FILE = "config.json"
PICKLE_FILE = "pytorch_model.bin"


@dataclass(frozen=True)
class ResolvedWeights:
    """A `weights=` argument resolved to a local file.

    Attributes:
        path: The file to load: a `.weights.h5` file (`format="keras"`) or a
            timm `model.safetensors` (`format="timm"`).
        source: What the user asked for, for messages (a tag, `hf://...`, a path).
        structure: `keras_file.file_structure(path)`, read once (Keras files;
            `None` for timm checkpoints).
        classes: Classes of the file's head, `None` without a head.
        eval_settings: The checkpoint's evaluation settings, `None` if unknown
            (a `.weights.h5` file carries none).
        image_size: The image side the checkpoint was trained or fine-tuned
            at, `None` if unknown.
    """

    path: str
    source: str
    structure: dict
    classes: int | None
    eval_settings: EvalSettings | None = None
    image_size: int | None = None
    format: str = "keras"


def resolve(weights, config) -> ResolvedWeights | None:
    """Resolve a `weights=` argument for the architecture `config` (see the module doc).

    Raises:
        ValueError: For anything that cannot be loaded, with one line that
            names the value and what is allowed; `WeightsFetchError` (also an
            `OSError`) when a download fails.
    """
    if weights is None or isinstance(weights, ResolvedWeights):
        return weights
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise ValueError(
            "weights must be None, 'imagenet', a tag, 'hf://owner/repo', or a path to a "
            f".weights.h5 or .safetensors file; received: {weights!r}"
        )
    if weights.startswith(HF_PREFIX):
        return _from_hub_repo(weights, config)
    if os.path.isdir(weights):
        raise ValueError(
            f"weights {weights!r} is a directory; give a .weights.h5 or model.safetensors file"
        )
    if os.path.exists(weights) or _looks_like_path(weights):
        return _from_file(weights, config)
    return _from_tag(weights, config)


def _looks_like_path(value: str) -> bool:
    suffixes = (".h5", ".keras", ".safetensors") + checkpoint.PICKLE_SUFFIXES
    return "/" in value or os.sep in value or value.endswith(suffixes)


# -- a file on disk -----------------------------------------------------------


def _from_file(path: str, config) -> ResolvedWeights:
    if path.endswith(checkpoint.PICKLE_SUFFIXES):
        raise ValueError(checkpoint.pickle_refusal(f"weights file {path!r}"))
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path!r}")
    if path.endswith(".safetensors"):
        return _from_local_checkpoint(path, config)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"weights file {path!r} is neither a Keras '.weights.h5' file nor a timm "
            "'.safetensors' checkpoint"
        )
    return _keras_file(path, source=repr(path))


def _keras_file(path, source) -> ResolvedWeights:
    structure = keras_file.read_structure(path)
    return ResolvedWeights(
        path=path,
        source=source,
        structure=structure,
        classes=keras_file.structure_classes(structure),
    )


def _timm_file(path, source, settings, size) -> ResolvedWeights:
    return ResolvedWeights(
        path=path,
        source=source,
        structure=None,
        classes=checkpoint.head_classes_of_file(path, source),
        eval_settings=settings,
        image_size=size,
        format="timm",
    )


def _from_local_checkpoint(path: str, config) -> ResolvedWeights:
    """A timm `model.safetensors` on disk; a `config.json` beside it gives its settings."""
    name = f"checkpoint {path!r}"
    settings, size = _default_settings(config)
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_FILE)
    if os.path.isfile(config_path):
        settings, size = _timm_config(config_path, config, f"{config_path!r}")
    return _timm_file(path, name, settings, size)


def _default_settings(config):
    """A bare checkpoint's settings: its architecture's weights', `None` if it has none."""
    entry = pretrained_entry(config.name)
    if entry is None:
        return None, eval_defaults(config.name)[1]
    return entry.eval_settings, entry.image_size


# -- a timm tag -----------------------------------------------------------------


def _from_tag(value: str, config) -> ResolvedWeights:
    key = model_key(config.name)
    tags = list_weights(key)
    if not tags:
        raise ValueError(
            f"no pretrained weights exist for {config.name!r} (weights={value!r}): timm "
            f"publishes weights only for its own variants; the closest: "
            f"{', '.join(closest_tags(config.name))} (e.g. "
            f"keras_coatnet.create_model({split_tag(closest_tags(config.name)[0])[0]!r}, "
            "weights='imagenet'))"
        )
    if value == IMAGENET:
        tag = default_tag(key)
        if tag is None:
            raise ValueError(
                f"{config.name!r} has no ImageNet-1k weights for weights='imagenet'; its "
                f"tags: {', '.join(tags)}"
            )
    else:
        tag = value if value in REGISTRY else f"{key}.{value}"
        if tag not in REGISTRY:
            short = [split_tag(t)[1] for t in tags]
            close = difflib.get_close_matches(value, short + list(REGISTRY), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown weights {value!r} for {config.name!r}; {hint}its tags: "
                f"{', '.join(tags)} (or 'imagenet', 'hf://owner/repo', a file path)"
            )
        if REGISTRY[tag].model != key:
            raise ValueError(
                f"weights {value!r} are for {REGISTRY[tag].model!r}, not for "
                f"{config.name!r}; the tags of {config.name!r}: {', '.join(tags)}"
            )
    entry = REGISTRY[tag]
    return _from_hub(entry.repo_id, None, config, entry.eval_settings, entry.image_size, tag)


# -- the Hub ----------------------------------------------------------------------


def _from_hub_repo(value: str, config) -> ResolvedWeights:
    spec = value[len(HF_PREFIX) :]
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (_ and not revision):
        raise ValueError(f"weights {value!r} must be 'hf://owner/repo' or 'hf://owner/repo@rev'")
    config_file = hub.verify(hub.download(repo_id, CONFIG_FILE, revision or None))
    settings, size = _timm_config(config_file.path, config, value)
    return _from_hub(repo_id, revision or None, config, settings, size, value)


def _from_hub(repo_id, revision, config, settings, size, source) -> ResolvedWeights:
    try:
        file = hub.download(repo_id, CHECKPOINT_FILE, revision)
    except hub.WeightsFetchError as error:
        if f"has no file {CHECKPOINT_FILE!r}" in str(error) and hub.exists(
            repo_id, PICKLE_FILE, revision
        ):
            raise ValueError(
                checkpoint.pickle_refusal(f"{source} ({repo_id}/{PICKLE_FILE}, no safetensors)")
            ) from None
        raise
    hub.verify(file)  # every load: 0.28 s for a 296 MB file here, against its ETag
    return _timm_file(file.path, f"{source} ({file.url})", settings, size)


def _timm_config(path: str, config, source: str):
    """Evaluation settings and image size from a timm `config.json`, checked against `config`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{source}: config.json is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: config.json is not a timm model config")
    architecture = data.get("architecture")
    if architecture not in CONFIGS:
        raise ValueError(
            f"{source} holds architecture {architecture!r}, not a CoAtNet keras_coatnet "
            f"knows; known: {', '.join(timm_names())}"
        )
    if model_key(architecture) != model_key(config.name):
        raise ValueError(
            f"{source} holds a {architecture}, not a {config.name}; build that "
            f"architecture: keras_coatnet.create_model({architecture!r}, weights=...)"
        )
    cfg = data.get("pretrained_cfg") or {}
    settings = EvalSettings.from_pretrained_cfg(cfg, source)
    default = eval_defaults(config.name)[1]
    input_size = cfg.get("input_size") or [3, default, default]
    size = int(input_size[-1])
    if not is_image_size(size) or int(input_size[-2]) != size:
        raise ValueError(f"{source}: input_size {input_size} is not square multiples of 32")
    return settings, size
