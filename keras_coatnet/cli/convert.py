"""`coatnet convert`: a timm CoAtNet to a Keras `.weights.h5`, checked against timm.

    coatnet convert coatnet_0_rw_224.sw_in1k --output-dir weights   # timm's published weights
    coatnet convert coatnet_0_rw_224 --checkpoint my_run.pth        # a state dict you trained
    coatnet convert coatnet_pico_rw_224                             # random init, for testing

A tag (`NAME.TAG`) fetches timm's published weights through timm (the
network once). The converted model is run against timm on fixed inputs;
beyond `--tolerance` (max abs logit difference) nothing is written and the
exit status is 1. Needs the timm extra: pip install 'keras_coatnet[timm]'.
"""

from __future__ import annotations

import os

from keras_coatnet.cli._common import CLIError, add_command

DOC = __doc__


def register(subparsers, parents) -> None:
    # framework=False: torch has to be imported before TensorFlow (keras_coatnet/_timm.py);
    # `run` imports both in that order.
    p = add_command(
        subparsers,
        "convert",
        "convert a timm model or checkpoint to .weights.h5, checked against timm",
        parents,
        framework=False,
    )
    p.add_argument("model", help="timm architecture or tag, e.g. coatnet_0_rw_224.sw_in1k")
    p.add_argument("--output-dir", default="weights", help="where the file goes (weights)")
    p.add_argument(
        "--checkpoint", help="a PyTorch state dict (.pth, .pt, .bin) or .safetensors to convert"
    )
    p.add_argument("--image-size", type=int, help="Keras input size (default: timm's)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit diff (1e-4)")
    p.set_defaults(run=run)


def _state_dict(torch, path: str):
    if not os.path.isfile(path):
        raise CLIError(f"--checkpoint file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refused or not a torch file
        raise CLIError(f"--checkpoint {path!r} is not a PyTorch state dict: {error}") from error
    return state.get("state_dict", state) if isinstance(state, dict) else state


def run(args):
    from keras_coatnet._timm import import_timm
    from keras_coatnet.cli._common import import_framework

    try:
        torch, timm = import_timm()  # torch before TensorFlow
    except ImportError as error:
        raise CLIError(str(error)) from error
    import_framework(args.verbose)
    import numpy as np

    from keras_coatnet.convert import from_timm
    from keras_coatnet.weights.hub import sha256_of

    pretrained = "." in args.model and not args.checkpoint
    try:
        reference = timm.create_model(args.model, pretrained=pretrained).eval()
    except Exception as error:  # unknown name, no network, ...
        raise CLIError(f"timm could not create {args.model!r}: {error}") from error
    if args.checkpoint:
        try:
            reference.load_state_dict(_state_dict(torch, args.checkpoint))
        except RuntimeError as error:
            raise CLIError(f"--checkpoint does not fit {args.model}: {error}") from error
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
    height, _ = reference.img_size
    if size is not None and size != height:
        from timm.models.maxxvit import checkpoint_filter_fn

        resized = timm.create_model(reference.pretrained_cfg["architecture"], img_size=size)
        resized.load_state_dict(checkpoint_filter_fn(reference.state_dict(), resized))
        reference, height = resized.eval(), size
    pixels = np.random.RandomState(0).uniform(0, 255, (2, height, height, 3)).astype("float32")
    cfg = reference.pretrained_cfg  # the normalisation timm evaluates these weights with
    normalized = (pixels / 255.0 - np.array(cfg["mean"])) / np.array(cfg["std"])
    with torch.no_grad():
        want = reference(torch.from_numpy(normalized.astype("float32").transpose(0, 3, 1, 2)))
    got = np.asarray(model(pixels, training=False))
    diff = float(np.abs(got - want.numpy()).max())
    print(f"max abs diff vs timm {diff:.3g} on {len(pixels)} images (tolerance {args.tolerance:g})")
    if not diff <= args.tolerance:
        raise CLIError("conversion does not match timm; nothing written", code=1)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"{args.model}.weights.h5")
    partial = f"{path}.partial.weights.h5"
    model.save_weights(partial)
    os.replace(partial, path)
    print(f"wrote {path}")
    print(f"sha256 {sha256_of(path)}")
