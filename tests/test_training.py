"""Training on CPU: the digits pipeline, the recipe, XLA, mixed precision, resume, errors."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import images, tiny_model

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("sklearn")

import tensorflow as tf  # noqa: E402

import keras_coatnet as kc  # noqa: E402
from keras_coatnet.training import RunConfig, data, recipe, train, trainer  # noqa: E402
from keras_coatnet.training.trainer import build_model  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.data, tf.distribute"
)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return data.write_digits_tree(str(tmp_path_factory.mktemp("digits")), size=32)


def test_digits_tree_holds_every_scan_once(digits_root):
    counts = {}
    for split in ("train", "test"):
        for label in os.listdir(os.path.join(digits_root, split)):
            counts[split] = counts.get(split, 0) + len(
                os.listdir(os.path.join(digits_root, split, label))
            )
    assert counts == {"train": 1437, "test": 360}  # 1,797 scans, 80/20
    png = os.path.join(
        digits_root, "train", "0", sorted(os.listdir(os.path.join(digits_root, "train", "0")))[0]
    )
    image = tf.io.decode_png(tf.io.read_file(png))
    assert image.shape == (32, 32, 3)
    assert int(tf.reduce_max(image)) > 200  # ink, scaled from 16 grey levels


def test_pipeline_has_static_shapes_and_a_seeded_epoch_order(digits_root):
    splits = data.load(digits_root, 32, 64, seed=1, epochs=3, first_epoch=0)
    assert splits.train.element_spec[0].shape == (64, 32, 32, 3)
    assert splits.steps_per_epoch == 1437 // 64
    labels = [y.numpy().argmax(1) for _, y in splits.train]
    assert len(labels) == 3 * splits.steps_per_epoch
    # Resuming at epoch 2 replays exactly epoch 2's batches.
    resumed = data.load(digits_root, 32, 64, seed=1, epochs=3, first_epoch=2)
    replay = [y.numpy().argmax(1) for _, y in resumed.train]
    steps = splits.steps_per_epoch
    np.testing.assert_array_equal(np.concatenate(replay), np.concatenate(labels[2 * steps :]))
    # Epochs differ from each other.
    assert not np.array_equal(labels[0], labels[steps])


def test_augmented_epochs_replay_exactly_when_resumed(digits_root):
    """RandAugment + MixUp draws depend on (seed, epoch, batch), not on what ran before."""
    augment = recipe.augmenter(recipe.PAPER, seed=3)
    assert len(data._seed_generators(augment)) >= 2  # RandAugment's and MixUp's

    def pixels(first_epoch):
        splits = data.load(
            digits_root, 32, 64, augment=augment, seed=1, epochs=2, first_epoch=first_epoch,
            steps_per_epoch=2,
        )  # fmt: skip
        return [x.numpy() for x, _ in splits.train]

    whole, resumed = pixels(0), pixels(1)
    assert len(whole) == 4 and len(resumed) == 2
    for a, b in zip(whole[2:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    # Control: the augmentation is random (epoch 0 and 1 differ from their plain batches).
    plain = data.load(digits_root, 32, 64, seed=1, epochs=2, steps_per_epoch=2)
    assert not np.array_equal(next(iter(plain.train))[0].numpy(), whole[0])


def _config(tmp_path, root, **changes):
    return RunConfig(
        dataset=root,
        model="coatnet-digits",
        image_size=32,
        batch_size=64,
        lr=2e-3,
        warmup_steps=10,
        randaugment_ops=0,
        mixup=0.0,
        drop_path=0.05,
        output_dir=str(tmp_path / "run"),
        quiet=True,
        **changes,
    )


def test_short_training_run_learns_the_digits(tmp_path, digits_root):
    result = train(_config(tmp_path, digits_root, epochs=4))
    losses = result["history"]["loss"]
    assert losses[-1] < 0.6 * losses[0]
    assert result["history"]["accuracy"][-1] > 0.5  # chance is 0.1
    assert result["accuracy"] > 0.3
    assert os.path.exists(tmp_path / "run" / "final.weights.h5")
    assert os.path.exists(tmp_path / "run" / "best.keras")
    assert os.listdir(tmp_path / "run" / "logs")


def test_weight_decay_skips_norms_biases_and_relative_tables():
    model = tiny_model()
    opt = recipe.optimizer(recipe.DIGITS.replace(weight_decay=0.5, warmup_steps=0), 10)
    model.compile(optimizer=opt, loss=lambda y, p: 0.0 * keras.ops.sum(p))
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_weights}
    model.fit(images(), np.zeros((2, 10)), epochs=1, batch_size=2, verbose=0)
    # Zero gradients: only decoupled weight decay moves a variable.
    for v in model.trainable_weights:
        moved = not np.allclose(before[v.path], keras.ops.convert_to_numpy(v))
        exempt = any(key in v.path for key in recipe.NO_DECAY)
        assert moved != exempt, v.path


def test_xla_train_step_matches_the_graph_step():
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_model()
        # SGD: Adam's normalized step turns float noise in a near-zero gradient
        # into a full +-lr step, which would hide what is compared here.
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            jit_compile=jit,
        )
        x, y = images((4, 64, 64, 3)), np.arange(4) % 10
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        results.append((losses, [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_mixed_bfloat16_training_is_finite_with_float32_variables():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    x, y = images((4, 64, 64, 3)), np.arange(4) % 10
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    assert np.all(np.isfinite(losses))
    assert {v.dtype for v in model.trainable_weights} == {"float32"}


def coatnet_train(*argv):
    """`coatnet train ARGV` in this process; returns the exit status."""
    from keras_coatnet.cli import main

    return main(["train", *map(str, argv)])


def _train_parser():
    """The `coatnet train` parser, registered as `keras_coatnet.cli` registers it."""
    from keras_coatnet.cli import train as command

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--verbose", action="store_true")
    top = argparse.ArgumentParser(prog="coatnet")
    subparsers = top.add_subparsers(dest="command")
    command.register(subparsers, [common])
    return top, subparsers.choices["train"], command


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "no_such_dataset_xyz"], "unknown dataset 'no_such_dataset_xyz'"),
        (["--dataset", "mnist"], "needs --data-dir"),
        (["--image-size", "48"], "multiple of 32, received: 48"),
        (["--batch-size", "0"], "--batch-size must be at least 1, received: 0"),
        (["--data-dir", "/tmp"], "need --dataset"),
        (["--ema", "1"], "--ema must be in (0, 1), received: 1.0"),
        (["--model", "coatnet-9"], "unknown model 'coatnet-9'"),
    ],
)
def test_bad_arguments_end_with_one_clear_line(argv, message, capsys, tmp_path):
    assert coatnet_train(*argv, "--output-dir", tmp_path, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coatnet train: error: ") and message in err[0], err


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"epochs": 0}, "--epochs must be at least 1, received: 0"),
        ({"epochs": 2.5}, "--epochs must be an integer, received: 2.5"),
        ({"image_size": 48}, "--image-size must be a positive multiple of 32, received: 48"),
        ({"drop_path": 1.0}, "--drop-path must be in [0, 1), received: 1.0"),
        ({"label_smoothing": float("nan")}, "--label-smoothing must be in [0, 1], received: nan"),
        ({"jit": "fast"}, "--jit must be one of auto, on, off, received: 'fast'"),
        ({"manual_dir": "/tmp"}, "--data-dir and --manual-dir need --dataset"),
        ({"model": "coatnet-9"}, "--model must be one of coatnet-0, coatnet-1, "),
    ],
)
def test_run_config_rejects_a_bad_value_in_one_line(changes, message):
    with pytest.raises(ValueError) as error:
        RunConfig(**changes)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match=re.escape(message)):  # the API, before any work
        train(**changes)


def test_run_config_resolves_the_preset_and_its_overrides():
    assert RunConfig().model_name == "coatnet-digits"
    assert RunConfig().recipe == recipe.DIGITS
    paper = RunConfig(dataset="imagenet2012", lr=5e-4, mixup=0.0, ema=0.9999)
    assert paper.model_name == "coatnet-0"
    assert paper.recipe == recipe.PAPER.replace(
        learning_rate=5e-4, mixup_alpha=0.0, ema_momentum=0.9999
    )


def test_train_flags_and_run_config_fields_correspond():
    top, train_parser, command = _train_parser()
    flags = {a.dest: a for a in train_parser._actions if a.dest not in ("help", "verbose")}
    # Every flag is a field and every field a flag, with the same default.
    assert set(flags) == {f.name for f in dataclasses.fields(RunConfig)}
    assert command.run_config(top.parse_args(["train"])) == RunConfig()
    for dest, action in flags.items():
        assert action.option_strings == [f"--{dest.replace('_', '-')}"]
        for choice in action.choices or ():  # RunConfig takes the flag's choices, only them
            assert getattr(RunConfig(**{dest: choice}), dest) == choice
        if action.choices:
            with pytest.raises(ValueError, match=f"^--{dest.replace('_', '-')} must be one of"):
                RunConfig(**{dest: "bogus"})
    args = top.parse_args(["train", "--dataset", "d", "--lr", "0.5", "--cutmix", "--seed", "3"])
    assert command.run_config(args) == RunConfig(dataset="d", lr=0.5, cutmix=True, seed=3)


def test_the_train_command_and_run_config_import_no_framework():
    # Run without keras_coatnet/__init__.py, which imports the model (and Keras).
    code = textwrap.dedent(
        """
        import os, sys, types
        package = types.ModuleType("keras_coatnet")
        package.__path__ = [os.path.join(sys.argv[1], "keras_coatnet")]
        sys.modules["keras_coatnet"] = package
        import keras_coatnet.cli.train, keras_coatnet.training
        keras_coatnet.training.RunConfig(epochs=1)
        print(sorted(m for m in ("keras", "tensorflow", "jax", "numpy") if m in sys.modules))
        """
    )
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    result = subprocess.run(
        [sys.executable, "-c", code, root], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_batch_must_divide_over_replicas(tmp_path):
    from keras_coatnet.training.distribution import Placement

    run = RunConfig(batch_size=10, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--batch-size 10 is not divisible by the 4 replicas"):
        trainer._train(run, Placement(replicas=4))
    assert not os.listdir(tmp_path)  # stopped before anything was written


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, digits_root):
    """Kill a run after its first epoch checkpoint, rerun the same command."""
    command = [
        sys.executable, os.path.join(os.path.dirname(__file__), os.pardir, "examples", "train.py"),
        "--dataset", digits_root, "--model", "coatnet-digits", "--image-size", "32",
        "--batch-size", "64", "--epochs", "3", "--steps-per-epoch", "6",
        "--drop-path", "0.1", "--warmup-steps", "4", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    whole = tmp_path / "whole"
    subprocess.run([*command, "--output-dir", str(whole)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    metadata = killed / "backup" / "training_metadata.json"
    proc = subprocess.Popen([*command, "--output-dir", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while proc.poll() is None:
            if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1:
                proc.kill()
                break
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (killed / "final.weights.h5").exists()
    resumed = subprocess.run(
        [*command, "--output-dir", str(killed)], check=True, env=env, capture_output=True, text=True
    )
    # It resumed (a restart from scratch would end with the same weights too).
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs and epochs[0] != "1/3" and epochs[-1] == "3/3", resumed.stdout

    import h5py

    with h5py.File(whole / "final.weights.h5") as a, h5py.File(killed / "final.weights.h5") as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names
        for name in names:  # bit-identical, as docs/TRAINING.md says
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_strategy_plumbing_with_one_device_strategy_and_xla(digits_root):
    """What TPUStrategy needs from us, on CPU: variables in scope, static batches, XLA step."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    splits = data.load(digits_root, 32, 32, epochs=1, steps_per_epoch=3)
    with strategy.scope():
        model = tiny_model(input_shape=(32, 32, 3))
        model.compile(
            optimizer=recipe.optimizer(recipe.DIGITS, 3),
            loss="categorical_crossentropy",
            jit_compile=True,
        )
    assert all(
        isinstance(v.value, tf.Variable) and "CPU:0" in v.value.device for v in model.weights
    )
    history = model.fit(splits.train, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_fine_tuning_start_resizes_tables_and_keeps_a_fresh_head(tmp_path):
    from helpers import TINY, randomize

    source = tiny_model(classes=7)
    randomize(source)
    path = str(tmp_path / "at64.weights.h5")
    source.save_weights(path)
    # Same classes: the whole file, at 96 pixels (tables resized).
    same = build_model(TINY, 96, 7, weights=path)
    head = source.get_layer("predictions").get_weights()
    for a, b in zip(same.get_layer("predictions").get_weights(), head, strict=True):
        np.testing.assert_array_equal(a, b)
    attn = source.get_layer("stage3_block0").attn
    np.testing.assert_allclose(
        np.asarray(same.get_layer("stage3_block0").attn.relative_table),
        kc.resize_relative_table(np.asarray(attn.relative_table), (4, 4), (6, 6)),
        atol=1e-7,
    )
    # Other classes: everything but the classifier from the file (timm's
    # reset_classifier keeps the norm and pre-logits), a fresh 3-class classifier.
    other = build_model(TINY, 64, 3, weights=path)
    for name in ("stage2_block1", "head_norm", "head_pre_logits"):
        np.testing.assert_array_equal(
            other.get_layer(name).get_weights()[0], source.get_layer(name).get_weights()[0]
        )
    assert other.get_layer("predictions").get_weights()[0].shape[-1] == 3


def test_mirrored_two_cpus_with_synchronized_batchnorm_matches_one_device():
    # Synchronized BatchNorm makes two replicas of 4 images normalize like one
    # device with 8; without it the per-replica statistics differ (the
    # control shows the check can fail).
    script = os.path.join(os.path.dirname(__file__), "mirrored_parity.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("sync", "unsync", "moved"):
            diffs[key] = value
    # Trainable weights left their initial values (0.0 with a learning rate of 0).
    assert float(diffs["moved"]) > 1e-3
    assert float(diffs["sync"]) <= 1e-5
    assert float(diffs["unsync"]) > 1e-3


@pytest.mark.parametrize(
    "error, status, line",
    [
        (MemoryError(), 1, "coatnet train: error: MemoryError: MemoryError"),
        (KeyboardInterrupt(), 130, "coatnet train: interrupted"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (ValueError("--epochs must be positive"), 2, "--epochs must be positive"),
    ],
)
def test_train_entry_point_failures_end_in_one_line(monkeypatch, capsys, error, status, line):
    def fail(config):
        raise error

    monkeypatch.setattr(trainer, "train", fail)
    assert coatnet_train("--quiet") == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err, err
    assert coatnet_train("--quiet", "--verbose") == status
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_train_into_an_unwritable_place_ends_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    status = coatnet_train("--output-dir", blocker / "run", "--epochs", "1", "--quiet")
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("coatnet train: error: "), err
    assert err.count("\n") == 1, err


def test_a_corrupt_image_in_the_training_folder_is_named(tmp_path, capsys):
    import shutil

    root = tmp_path / "digits"
    shutil.copytree(data.write_digits_tree(str(tmp_path / "source"), size=32), root)
    bad = root / "train" / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n then nothing that decodes")
    status = coatnet_train(
        "--dataset", root, "--model", "coatnet-digits", "--image-size", "32",
        "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "1",
        "--output-dir", tmp_path / "run", "--quiet",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and f"image {str(bad)!r} of the dataset does not decode" in err
