"""`coatnet export`: a model for TF Serving, ONNX Runtime, LiteRT or OpenVINO (`kc.export`)."""

from __future__ import annotations

from keras_coatnet.cli._common import PROG, add_command
from keras_coatnet.preprocessing import CROP_MODES, INTERPOLATIONS
from keras_coatnet.serving import FORMATS, OUTPUTS, PRECISIONS


def register(subparsers, parents) -> None:
    p = add_command(
        subparsers,
        "export",
        "write a TF Serving SavedModel version (images and image-bytes signatures), "
        "or an ONNX, LiteRT or OpenVINO model file",
        parents,
    )
    p.add_argument("model", help=f"architecture name (`{PROG} models` lists them)")
    p.add_argument(
        "--weights",
        help="'imagenet', a tag, hf://owner/repo, a model.safetensors or .weights.h5 file "
        "(default: random initialisation)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=FORMATS[0],
        help=f"({FORMATS[0]}) the others take the same images tensor as serving_default",
    )
    p.add_argument(
        "--output",
        required=True,
        help="tf_saved_model: the base directory (gets OUTPUT/VERSION/); others: the model "
        "file (.onnx, .tflite, .xml; added when missing)",
    )
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")
    p.add_argument(
        "--size-free",
        action="store_true",
        help="one model for any multiple of 32 (input_shape (None, None, 3); not for litert); "
        "--image-size is then the side serving_bytes prepares images at",
    )
    p.add_argument("--classes", type=int, help="default: the weights' head, else 1000")
    p.add_argument(
        "--version", type=int, help="tf_saved_model: default one more than the highest present"
    )
    p.add_argument("--outputs", choices=OUTPUTS, default="probabilities", help="(probabilities)")
    p.add_argument("--top-k", type=int, help="tf_saved_model: top classes returned (5)")
    p.add_argument("--crop-pct", type=float, help="serving_bytes crop (default: the weights')")
    p.add_argument("--crop-mode", choices=CROP_MODES, help="default: the weights' own")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, help="default: the weights' own")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="tf_saved_model: bf16 stores and computes matmuls and convolutions in bfloat16 "
        "(norms, attention softmax and biases in float32); default f32",
    )
    p.set_defaults(run=run)


def run(args):
    from keras_coatnet.cli._common import config, image_size
    from keras_coatnet.model import CoAtNet
    from keras_coatnet.serving import export

    cfg = config(args.model)
    size = image_size(args.image_size, cfg)
    model = CoAtNet(
        cfg,
        weights=args.weights,
        input_shape=(None, None, 3) if args.size_free else (size, size, 3),
        classes=args.classes,
        classifier_activation=None if args.outputs == "logits" else "softmax",
    )
    target = export(
        model,
        args.output,
        format=args.format,
        version=args.version,
        outputs=args.outputs,
        top_k=args.top_k,
        crop_pct=args.crop_pct,
        crop_mode=args.crop_mode,
        interpolation=args.interpolation,
        precision=args.precision,
        image_size=args.image_size if args.size_free and args.format == "tf_saved_model" else None,
    )
    print(f"wrote {target}")
