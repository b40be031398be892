"""`CoAtNetConfig` and its sub-configs: flat names, the one check per choice, fingerprints."""

import copy
import dataclasses
import inspect
import re

import pytest
from helpers import TINY

import keras_coatnet as kc
from keras_coatnet import counts
from keras_coatnet.config import (
    FLAT_FIELDS,
    CoAtNetConfig,
    HeadConfig,
    MBConvConfig,
    TransformerConfig,
)
from keras_coatnet.layers import MBConvBlock, RelativeAttention, Stem, TransformerBlock

SUB_CONFIGS = {"mbconv": MBConvConfig, "transformer": TransformerConfig, "head": HeadConfig}
BLOCKS = {MBConvConfig: MBConvBlock, TransformerConfig: TransformerBlock}
# A valid value unlike every default, for each flat name.
OTHER = {
    "head_size": 64,
    "expand_ratio": 3.0,
    "se_ratio": 0.5,
    "head_hidden_size": 48,
    "bn_epsilon": 1e-3,
    "bn_momentum": 0.99,
    "ln_epsilon": 1e-5,
    "approximate_gelu": True,
    "padding": "same",
    "pool_type": "max3",
    "conv_activation": "silu",
    "pre_norm_activation": True,
    "expand_from": "input",
    "se_from": "hidden",
    "se_activation": "relu",
    "se_before_norm": True,
    "conv_output_bias": False,
    "mbconv_stride": "pool",
    "attention_width": "input",
    "transformer_shortcut_bias": False,
    "transformer_norm": "batchnorm",
    "layer_scale": 1e-5,
    "relative_bias": "mlp",
    "relative_mlp_dim": 64,
}
CHOICES = [
    (cls, name, allowed) for cls in SUB_CONFIGS.values() for name, allowed in cls.CHOICES.items()
]


def test_every_sub_config_field_has_one_flat_name():
    paths = [path for targets in FLAT_FIELDS.values() for path in targets]
    fields = [
        f"{sub}.{f.name}" for sub, cls in SUB_CONFIGS.items() for f in dataclasses.fields(cls)
    ]
    assert sorted(paths) == sorted(fields)
    assert set(OTHER) == set(FLAT_FIELDS)


@pytest.mark.parametrize("flat", sorted(FLAT_FIELDS))
def test_flat_replace_sets_the_sub_config_fields_and_reads_back(flat):
    config = TINY.replace(**{flat: OTHER[flat]})
    for path in FLAT_FIELDS[flat]:
        sub, name = path.split(".")
        assert getattr(getattr(TINY, sub), name) != OTHER[flat]
        assert getattr(getattr(config, sub), name) == OTHER[flat]
    assert getattr(config, flat) == OTHER[flat]
    # Nothing else changed.
    untouched = {p for t in FLAT_FIELDS.values() for p in t} - set(FLAT_FIELDS[flat])
    for path in untouched:
        sub, name = path.split(".")
        assert getattr(getattr(config, sub), name) == getattr(getattr(TINY, sub), name)


def test_flat_names_apply_after_a_sub_config_of_the_same_call():
    config = TINY.replace(mbconv=MBConvConfig(se_ratio=0.5), conv_activation="silu")
    assert config.mbconv == MBConvConfig(se_ratio=0.5, activation="silu")


def test_the_readme_derivation_is_a_sub_config_change():
    assert TINY == kc.CONFIGS["coatnet-0"].replace(
        name="tiny",
        stem_dim=16,
        stages=TINY.stages,
        head=HeadConfig(hidden_size=32),
        transformer=TransformerConfig(head_size=16),
    )


def test_unknown_names_fail():
    with pytest.raises(AttributeError, match="head_width"):
        TINY.head_width  # noqa: B018
    with pytest.raises(TypeError, match="head_width"):
        TINY.replace(head_width=3)


def test_configs_copy_and_compare_as_values():
    assert copy.deepcopy(TINY) == TINY
    assert hash(TINY.mbconv) == hash(MBConvConfig())


@pytest.mark.parametrize("cls,name,allowed", CHOICES, ids=lambda v: getattr(v, "__name__", v))
def test_each_choice_is_checked_in_its_dataclass(cls, name, allowed):
    message = f"{name} must be one of {allowed}, received: 'x'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(**{name: "x"})
    flat = next(f for f, paths in FLAT_FIELDS.items() if paths[0].endswith(f".{name}"))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TINY.replace(**{flat: "x"})
    if cls in BLOCKS:
        # A block built directly checks through the same dataclass.
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            BLOCKS[cls](16, 32, **{name: "x"})


def test_layers_built_directly_fail_on_bad_choices():
    with pytest.raises(ValueError, match=r"^activation must be one of \('gelu', 'silu'\)"):
        Stem(16, activation="tanh")
    with pytest.raises(ValueError, match=r"^padding must be one of \('symmetric', 'same'\)"):
        Stem(16, padding="valid")
    with pytest.raises(ValueError, match=r"^bias_type must be one of \('table', 'mlp'\)"):
        RelativeAttention(32, bias_type="conv")


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: TransformerConfig(head_size=0), "head_size must be a positive int, received: 0"),
        (lambda: TransformerConfig(layer_scale=0.0), "layer_scale must be None or a positive"),
        (lambda: TransformerConfig(relative_mlp_dim=1.5), "relative_mlp_dim must be a positive"),
        (lambda: MBConvConfig(se_ratio=0), "se_ratio must be a positive number, received: 0"),
        (lambda: HeadConfig(hidden_size=0), "hidden_size must be None or a positive int"),
        (lambda: TINY.replace(stem_hidden_dim=0), "stem_hidden_dim must be None or a positive"),
        (lambda: TINY.replace(mbconv=HeadConfig()), "mbconv must be a MBConvConfig"),
        (lambda: TINY.replace(head_size=48), "transformer width 64 is not a multiple of"),
    ],
)
def test_numbers_and_types_are_checked(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("cls", [MBConvConfig, TransformerConfig])
def test_sub_config_fields_are_the_block_arguments_with_the_same_defaults(cls):
    parameters = inspect.signature(BLOCKS[cls].__init__).parameters
    keys = BLOCKS[cls](16, 32).get_config()
    for field in dataclasses.fields(cls):
        assert parameters[field.name].default == field.default, field.name
        assert field.name in keys


def test_sub_configs_round_trip_through_a_built_block():
    settings = TransformerConfig(head_size=16, norm="batchnorm", relative_bias="mlp")
    block = TransformerBlock(16, 32, **dataclasses.asdict(settings))
    assert TransformerConfig.of(block) == settings
    assert TransformerConfig.of(TransformerBlock.from_config(block.get_config())) == settings


def test_fingerprint_covers_the_architecture_only():
    digits = kc.CONFIGS["coatnet-digits"]
    assert counts.fingerprint(digits.replace(source="elsewhere")) == counts.fingerprint(digits)
    assert counts.fingerprint(kc.CONFIGS["coatnet_0_224"]) == counts.fingerprint(
        kc.CONFIGS["coatnet-0"]
    )
    for change in (
        dict(se_ratio=0.5),
        dict(transformer_norm="batchnorm"),
        dict(head=HeadConfig(hidden_size=64)),
        dict(stem_hidden_dim=16),
        dict(name="coatnet-0"),  # another evaluation size: 224 against the digits' 64
    ):
        assert counts.fingerprint(digits.replace(**change)) != counts.fingerprint(digits), change


def test_architecture_is_plain_data_without_name_or_eval_settings():
    architecture = TINY.architecture()
    assert set(architecture) == {f.name for f in dataclasses.fields(CoAtNetConfig)} - {
        "name",
        "source",
    }
    assert architecture["transformer"]["head_size"] == 16


# -- evaluation settings belong to the weights -------------------------------------------


@pytest.mark.parametrize(
    "name,size,mean",
    [
        ("coatnet-0", 224, (0.5, 0.5, 0.5)),  # no weights: timm's _cfg defaults
        ("coatnet-digits", 64, (0.5, 0.5, 0.5)),  # trained here on 64 px scans
        ("coatnet_rmlp_2_rw_384", 384, (0.5, 0.5, 0.5)),  # its tag's size
        ("coatnet_bn_0_rw_224", 224, (0.485, 0.456, 0.406)),  # its tag's ImageNet statistics
    ],
)
def test_models_without_weights_take_their_evaluation_defaults(name, size, mean):
    from keras_coatnet.naming import PREPROCESSING
    from keras_coatnet.weights import eval_defaults

    settings, default_size = eval_defaults(name)
    assert (default_size, settings.mean) == (size, mean)
    if name != "coatnet_rmlp_2_rw_384":  # the same rule, without building a big model
        model = kc.create_model(name)
        assert model.input_shape[1:] == (size, size, 3)
        assert model.get_layer(PREPROCESSING).mean == mean


def test_evaluation_fields_are_not_architecture():
    with pytest.raises(ValueError, match=r"mean, default_size belong to the weights' evaluation"):
        kc.CONFIGS["coatnet-0"].replace(mean=(0.1, 0.1, 0.1), default_size=96)
    assert not hasattr(kc.CONFIGS["coatnet-0"], "default_size")
