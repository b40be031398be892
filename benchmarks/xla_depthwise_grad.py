"""XLA repro (issue 15): a depthwise convolution's kernel gradient on a 2-D mesh.

    .venv/bin/python benchmarks/xla_depthwise_grad.py

On 8 virtual CPU devices in a 2 x 4 mesh ("batch", "model"), with the input
split on the batch axis only and the kernel replicated, the depthwise
kernel's gradient comes out multiplied by the model axis size (jax 0.10.2:
relative error 3.0, i.e. 4x). A full convolution and an input also split on
channels are right. `keras_coatnet.training.layout_map` works around it.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

CHANNELS = 64


def loss(kernel, x, groups):
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    return jnp.sum(y * y)


def relative_error(kernel_shape, groups, x_spec, kernel_spec):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(8, 32, 32, CHANNELS)).astype("float32")
    kernel = rng.normal(size=kernel_shape).astype("float32")
    grad = jax.jit(jax.grad(loss), static_argnums=2)
    reference = grad(kernel, x, groups)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("batch", "model"))
    sharded = grad(
        jax.device_put(kernel, NamedSharding(mesh, kernel_spec)),
        jax.device_put(x, NamedSharding(mesh, x_spec)),
        groups,
    )
    return float(jnp.max(jnp.abs(sharded - reference)) / jnp.max(jnp.abs(reference)))


def main():
    print("jax", jax.__version__, "devices", len(jax.devices()))
    depthwise = (3, 3, 1, CHANNELS)
    full = (3, 3, CHANNELS, CHANNELS)
    cases = [
        ("depthwise, x on batch, kernel replicated", depthwise, CHANNELS, P("batch"), P()),
        (
            "depthwise, x on batch and channels, kernel on channels",
            depthwise,
            CHANNELS,
            P("batch", None, None, "model"),
            P(None, None, None, "model"),
        ),
        ("full conv, x on batch, kernel replicated", full, 1, P("batch"), P()),
    ]
    for name, shape, groups, x_spec, kernel_spec in cases:
        print(f"{name}: relative error {relative_error(shape, groups, x_spec, kernel_spec):.3g}")


if __name__ == "__main__":
    main()
