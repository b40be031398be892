"""`preprocess_input` and `decode_predictions`, as in keras.applications.

The ImageNet class index ships with the package (built from timm's
Apache-2.0 synset and lemma lists), so decoding never downloads.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

_INDEX_PATH = os.path.join(os.path.dirname(__file__), "data", "imagenet_class_index.json")


def preprocess_input(x, data_format=None):
    """A placeholder: CoAtNet models normalize inside the model.

    Models built with `include_preprocessing=True` (the default) take pixels
    in `[0, 255]`, so this returns `x` unchanged, as for ConvNeXt and
    EfficientNetV2 in keras.applications. With `include_preprocessing=False`
    feed `(x / 255 - mean) / std` yourself, with the weights' own statistics
    (`keras_coatnet.preprocessing.eval_settings(model)`, or
    `keras_coatnet.weights.eval_defaults(name)[0]` for a model without weights).

    Args:
        x: Images, channels last, values in `[0, 255]`.
        data_format: `None` or `"channels_last"`.

    Returns:
        `x`, unchanged.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format must be None or 'channels_last', received: {data_format!r}")
    return x


@functools.cache
def _class_index():
    with open(_INDEX_PATH) as f:
        return json.load(f)


def decode_predictions(preds, top=5):
    """Decode ImageNet-1k predictions into `(class_id, name, score)` tuples.

    Args:
        preds: Array of shape `(batch, 1000)`.
        top: How many classes to return per sample. Defaults to `5`.

    Returns:
        A list (one per sample) of lists of `(wordnet_id, name, score)`,
        highest score first.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet predictions of shape "
            f"(batch, 1000), received: {preds.shape}"
        )
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"top must be an int in [1, 1000], received: {top!r}")
    index = _class_index()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([(*index[str(i)], float(row[i])) for i in best])
    return results
