"""Convert timm CoAtNet models and checkpoints to keras_coatnet.

torch and timm are imported lazily, only by the functions that need them.
The name mapping itself, `load_timm_state_dict`, needs neither (it takes
NumPy arrays too) and lives in `keras_coatnet.weights.timm_mapping`, where
the pretrained-weights path uses it; it is re-exported here.
"""

from __future__ import annotations

from keras_coatnet.model import CoAtNet
from keras_coatnet.variants import get_config, timm_names
from keras_coatnet.weights.timm_mapping import load_timm_state_dict

__all__ = ["architecture", "from_timm", "load_timm_state_dict", "timm_names"]


def _timm_model(model_or_name, pretrained):
    torch, timm = _import()
    if isinstance(model_or_name, str):
        model = timm.create_model(model_or_name, pretrained=pretrained)
    else:
        model = model_or_name
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a timm model or name, received: {model_or_name!r}")
    return model.eval()


def _import():
    from keras_coatnet._timm import import_timm

    return import_timm()


def architecture(timm_model) -> str:
    """The timm architecture name of a timm model (e.g. `"coatnet_0_rw_224"`)."""
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ValueError("the timm model carries no pretrained_cfg['architecture']")
    return name


def from_timm(
    model_or_name,
    input_shape=None,
    pretrained: bool = False,
    classifier_activation="softmax",
    **kwargs,
):
    """A keras_coatnet model with the weights of a timm CoAtNet.

    Args:
        model_or_name: A timm CoAtNet (`timm.create_model(...)`, with any
            weights loaded), or a timm model name or tag such as
            `"coatnet_0_rw_224.sw_in1k"`.
        input_shape: `(H, W, 3)` of the Keras model; defaults to the timm
            model's image size. Another size resizes the relative tables
            the way timm does.
        pretrained: With a name, ask timm for its published weights (this
            downloads through timm / the Hugging Face hub).
        classifier_activation: As for the builders. Defaults to `"softmax"`.
        **kwargs: Passed on to `keras_coatnet.CoAtNet` (e.g. `cache_bias`).

    Returns:
        A `keras.Model` with `include_top=True` and the timm model's classes.

    Raises:
        ImportError: If torch or timm is not installed (with the install hint).
        ValueError: For a timm model keras_coatnet has no config for.
    """
    timm_model = _timm_model(model_or_name, pretrained)
    name = architecture(timm_model)
    try:
        config = get_config(name)
    except ValueError:
        raise ValueError(
            f"keras_coatnet has no config for timm architecture {name!r}; "
            f"convertible: {timm_names()}"
        ) from None
    height, width = timm_model.img_size
    if input_shape is None:
        input_shape = (height, width, 3)
    windows = {
        module_name: tuple(module.window_size)
        for module_name, module in timm_model.named_modules()
        if hasattr(module, "relative_position_bias_table")
    }
    windows = {k[: -len(".rel_pos")]: v for k, v in windows.items()}
    model = CoAtNet(
        config,
        input_shape=input_shape,
        classes=timm_model.num_classes,
        classifier_activation=classifier_activation,
        **kwargs,
    )
    load_timm_state_dict(model, timm_model.state_dict(), windows=windows)
    return model
