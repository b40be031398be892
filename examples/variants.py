"""Build every CoAtNet variant and print its size: params, MACs, default size.

    python examples/variants.py            # CoAtNet-0..7 (6/7 in bfloat16: ~1 min, 6 GiB)
    python examples/variants.py --max 5    # CoAtNet-0..5 only

Parameters are trainable weights; MACs count convolutions and matrix products
(attention's two batched products included), as `keras_coatnet.profile` says.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import keras_coatnet  # noqa: E402

# Paper Table 3 / Table 5 (params, FLOPs at 224 where given).
PAPER = {0: "25M", 1: "42M", 2: "75M", 3: "168M", 4: "275M", 5: "688M", 6: "1.47B", 7: "2.44B"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=7, choices=range(8), help="last variant")
    args = parser.parse_args()
    print(
        f"{'model':<10} {'layout (L / D, S0..)':<44} {'params':>9} {'paper':>6} "
        f"{'MACs@224':>9} {'size':>5} {'build s':>7}"
    )
    for n in range(args.max + 1):
        config = keras_coatnet.get_config(f"coatnet-{n}")
        # 6 and 7 hold billions of weights: bfloat16 halves memory, counts are the same.
        keras.config.set_dtype_policy("bfloat16" if n >= 6 else "float32")
        start = time.perf_counter()
        model = getattr(keras_coatnet, f"CoAtNet{n}")()
        elapsed = time.perf_counter() - start
        result = keras_coatnet.profile(model)
        depths = "-".join(str(d) for d in (config.stem_depth, *(s.depth for s in config.stages)))
        dims = "-".join(str(d) for d in (config.stem_dim, *(s.dim for s in config.stages)))
        params = result.params / 1e6
        params_text = f"{params:.2f}M" if params < 1000 else f"{params / 1e3:.3f}B"
        print(
            f"CoAtNet-{n:<2} {depths + ' / ' + dims:<44} {params_text:>9} {PAPER[n]:>6} "
            f"{result.macs / 1e9:>8.2f}G {model.input_shape[1]:>5} {elapsed:>7.1f}",
            flush=True,
        )
        del model
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
