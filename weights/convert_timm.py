"""Convert a timm CoAtNet to a Keras `.weights.h5` file, check it, print its SHA-256.

    python weights/convert_timm.py coatnet_0_rw_224.sw_in1k --output-dir weights
    python weights/convert_timm.py coatnet_0_rw_224 --checkpoint my_run.pth
    python weights/convert_timm.py coatnet_pico_rw_224      # random init, for testing

A tag (`NAME.TAG`) fetches timm's published weights (through timm and the
Hugging Face hub: needs the network once). `--checkpoint` loads a PyTorch
state dict you trained. The converted model is run against timm on fixed
inputs; beyond `--tolerance` (max abs logit difference) nothing is written
and the exit status is 1. Needs the timm extra: pip install -e '.[timm]'.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="timm architecture or tag, e.g. coatnet_0_rw_224.sw_in1k")
    parser.add_argument("--output-dir", default="weights", help="where the file goes (weights)")
    parser.add_argument("--checkpoint", help="a PyTorch state dict file to convert instead")
    parser.add_argument("--image-size", type=int, help="Keras input size (default: timm's)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit diff (1e-4)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    # torch before TensorFlow (see keras_coatnet/_timm.py).
    from keras_coatnet._timm import import_timm

    try:
        torch, timm = import_timm()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import numpy as np

    import keras_coatnet as kc
    from keras_coatnet.convert import from_timm

    pretrained = "." in args.model and not args.checkpoint
    try:
        reference = timm.create_model(args.model, pretrained=pretrained).eval()
    except Exception as error:  # unknown name, no network, ...
        print(f"error: timm could not create {args.model!r}: {error}", file=sys.stderr)
        return 2
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        reference.load_state_dict(state)
    source = "published" if pretrained else "checkpoint" if args.checkpoint else "random init"
    print(f"converting {args.model} ({source})")

    size = args.image_size
    model = from_timm(
        reference,
        input_shape=None if size is None else (size, size, 3),
        classifier_activation=None,
        include_preprocessing=True,
    )
    # Fixed inputs: seeded pixels, normalized the model's way for timm. At
    # another size, timm's own model at that size (its checkpoint resizing)
    # is the reference.
    height, width = reference.img_size
    if size is not None and size != height:
        from timm.models.maxxvit import checkpoint_filter_fn

        resized = timm.create_model(reference.pretrained_cfg["architecture"], img_size=size)
        resized.load_state_dict(checkpoint_filter_fn(reference.state_dict(), resized))
        reference, height, width = resized.eval(), size, size
    pixels = np.random.RandomState(0).uniform(0, 255, (2, height, width, 3)).astype("float32")
    config = kc.get_config(reference.pretrained_cfg["architecture"])
    normalized = (pixels / 255.0 - np.array(config.mean)) / np.array(config.std)
    with torch.no_grad():
        want = reference(torch.from_numpy(normalized.astype("float32").transpose(0, 3, 1, 2)))
    got = np.asarray(model(pixels, training=False))
    diff = float(np.abs(got - want.numpy()).max())
    print(f"max abs diff vs timm {diff:.3g} on {len(pixels)} images (tolerance {args.tolerance:g})")
    if not diff <= args.tolerance:
        print("error: conversion does not match timm; nothing written", file=sys.stderr)
        return 1

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"{args.model}.weights.h5")
    model.save_weights(path)
    print(f"wrote {path}")
    print(f"sha256 {kc.weights.sha256_of(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
