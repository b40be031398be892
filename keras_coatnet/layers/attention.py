"""Multi-head self-attention with a learned relative position bias."""

import math

import keras
import numpy as np
from keras import ops

from keras_coatnet.config import RELATIVE_BIASES, check_choice
from keras_coatnet.layers.relative_position import (
    is_static,
    relative_log_coords,
    relative_log_coords_ops,
    relative_position_index,
    relative_position_index_ops,
)
from keras_coatnet.resize import resize_in_graph, resize_square_table


@keras.saving.register_keras_serializable(package="keras_coatnet")
class RelativeAttention(keras.layers.Layer):
    """Self-attention over an NHWC map with a pre-softmax relative bias.

    `y_i = sum_j softmax_j(q_i . k_j / sqrt(d) + w[i - j]) v_j`, paper eq. (3).
    The table `w` holds one learned scalar per head and relative offset,
    `(2H-1)(2W-1)` rows by `heads` columns; gathering it with a fixed index
    gives the `(heads, HW, HW)` bias.

    The bias depends only on the table, so at inference it is computed once
    and cached in a non-saved variable together with a copy of the table it
    was computed from. Each inference call compares the live table with that
    copy (O(table) work, against O(heads * (HW)^2) for the gather) and
    gathers again only when they differ, so loading weights, assigning the
    table, or training can never leave a stale cache. Training always reads
    the live table, so gradients flow to it.

    With `bias_type="mlp"` the table is not a variable but the output of a
    2-layer ReLU MLP over log-spaced offsets (timm's `RelPosMlp`, "cr"
    mode); the cache works the same way, comparing the MLP's current output
    with the copy.

    The cache is state, not a weight: it is in `variables` (compiled steps
    carry it) but not in `weights`, so `count_params()`, `summary()`,
    `get_weights()` and saved weights hold only the table.

    Exports read the bias as data: `serving_bias()` returns a variable that
    holds it, and while `frozen_bias` is set (by `keras_coatnet.export`)
    inference reads that variable, with no gather and no refresh in the graph.

    The logits, bias and softmax are computed in float32 under mixed
    precision.

    Args:
        filters: Width of q, k and v (heads = `filters / head_size`).
        head_size: Channels per head. Defaults to `32`.
        output_filters: Output channels of the projection; `None` for
            `filters`.
        bias_type: `"table"` (paper) or `"mlp"`. Defaults to `"table"`.
        mlp_dim: Hidden width of the bias MLP. Defaults to `512`.
        cache_bias: Cache the gathered bias for inference. `False` gathers on
            every call and saves `heads * (HW)^2` floats of memory.
            Defaults to `True`.
        grid: The feature grid `(H, W)` the table is stored at. Needed
            only when the layer is built for unknown sides (a size-free
            model); otherwise the built sides are the grid. A size-free
            layer accepts any sides: at `grid` it uses the cache, at
            others it computes the bias per call, from the table resized
            by timm's rule (`resize.resize_in_graph`) or from the MLP over
            that grid's offsets.

    Call arguments:
        inputs: NHWC map `(B, H, W, C)`; `H` and `W` static unless the
            layer was built size-free.
        training: Python bool; `True` bypasses the cache.
    """

    def __init__(
        self,
        filters,
        head_size=32,
        output_filters=None,
        bias_type="table",
        mlp_dim=512,
        cache_bias=True,
        grid=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if filters % head_size:
            raise ValueError(f"filters={filters} must be a multiple of head_size={head_size}")
        # TransformerConfig checks its `relative_bias` the same way.
        check_choice("bias_type", bias_type, RELATIVE_BIASES)
        self.filters = filters
        self.head_size = head_size
        self.output_filters = output_filters or filters
        self.bias_type = bias_type
        self.mlp_dim = mlp_dim
        self.cache_bias = cache_bias
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.num_heads = filters // head_size
        # Set only while an export traces the model: a function returning the
        # bias read from a variable (a function, so Keras does not track it).
        self.frozen_bias = None
        dt = self.dtype_policy
        # q, k, v in one projection, head-major: channel = head*3*d + {q,k,v}*d + i
        self.qkv = keras.layers.Dense(3 * filters, name="qkv", dtype=dt)
        self.proj = keras.layers.Dense(self.output_filters, name="proj", dtype=dt)
        if bias_type == "mlp":
            # float32 like the table, whatever the policy.
            self.relative_mlp1 = keras.layers.Dense(
                mlp_dim, activation="relu", name="relative_mlp1", dtype="float32"
            )
            self.relative_mlp2 = keras.layers.Dense(
                self.num_heads, name="relative_mlp2", dtype="float32"
            )

    def build(self, input_shape):
        _, height, width, _ = input_shape
        # Size-free: sides unknown until called, the table stored at `grid`.
        self.size_free = height is None or width is None
        if self.size_free:
            if self.grid is None:
                raise ValueError(
                    "RelativeAttention built for unknown sides (input shape "
                    f"{input_shape}) needs grid=(height, width), the table's grid"
                )
            height, width = self.grid
            input_shape = (input_shape[0], height, width, input_shape[-1])
        self.height, self.width = int(height), int(width)
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.filters,))
        table_rows = (2 * self.height - 1) * (2 * self.width - 1)
        if self.bias_type == "table":
            self.relative_table = self.add_weight(
                shape=(table_rows, self.num_heads),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                name="relative_table",
                autocast=False,
            )
        else:
            self.log_coords = relative_log_coords(self.height, self.width)
            self.relative_mlp1.build((None, 2))
            self.relative_mlp2.build((None, self.mlp_dim))
        self.index = relative_position_index(self.height, self.width)
        if self.cache_bias:
            tokens = self.height * self.width
            # Not part of the weight format: see save_own_variables.
            self.bias_cache = self.add_weight(
                shape=(self.num_heads, tokens, tokens),
                initializer="zeros",
                trainable=False,
                autocast=False,
                name="bias_cache",
                aggregation="only_first_replica",
            )
            self.cached_table = self.add_weight(
                shape=(table_rows, self.num_heads),
                # "Never filled": no table equals it. Infinity rather than NaN,
                # because JAX's multi-process runs check that every process
                # starts a variable with the same value, and NaN != NaN.
                initializer=keras.initializers.Constant(float("inf")),
                trainable=False,
                autocast=False,
                name="cached_table",
                aggregation="only_first_replica",
            )

    @property
    def weights(self):
        # The cache and its table copy are derived from the weights (see the
        # class docstring); `Layer.variables` still lists them.
        derived = {id(getattr(self, name, None)) for name in ("bias_cache", "cached_table")}
        return [w for w in super().weights if id(w) not in derived]

    def serving_bias(self):
        """A variable holding the current `(heads, HW, HW)` float32 bias, for export.

        The cache, refreshed now, when the layer has one (no second copy in
        memory); else a new variable that no layer tracks.
        """
        table = self.table()
        bias = self.relative_bias(table)
        if not self.cache_bias:
            return keras.Variable(bias, trainable=False, name=f"{self.name}_bias")
        self._store(bias, table)
        return self.bias_cache

    def _store(self, bias, table):
        """Fill the cache with `bias`, gathered from `table`."""
        self.bias_cache.assign(bias)
        # A copy: JAX donates variable buffers, and two variables must not share one.
        self.cached_table.assign(ops.copy(table))

    def table(self):
        """The live `((2H-1)(2W-1), heads)` float32 table of w[i-j]."""
        if self.bias_type == "table":
            return ops.convert_to_tensor(self.relative_table)
        return self.relative_mlp2(self.relative_mlp1(ops.convert_to_tensor(self.log_coords)))

    def relative_bias(self, table=None):
        """Gather the `(heads, HW, HW)` float32 bias from the table."""
        table = self.table() if table is None else table
        tokens = self.height * self.width
        bias = ops.take(table, self.index.reshape(-1), axis=0)  # (N*N, heads)
        bias = ops.reshape(bias, (tokens, tokens, self.num_heads))
        return ops.transpose(bias, (2, 0, 1))

    def _inference_bias(self):
        table = self.table()
        fresh = ops.all(ops.equal(table, self.cached_table))
        if keras.backend.backend() == "tensorflow":
            # tf.cond runs one branch: no gather while the cache is fresh.
            def refresh():
                bias = self.relative_bias(table)
                self._store(bias, table)
                return bias

            return ops.cond(fresh, lambda: ops.convert_to_tensor(self.bias_cache), refresh)
        # Backends whose traced branches cannot update state (JAX) select in
        # the branch and store outside it.
        bias = ops.cond(
            fresh,
            lambda: ops.convert_to_tensor(self.bias_cache),
            lambda: self.relative_bias(table),
        )
        self._store(bias, table)
        return bias

    def grid_bias(self, height, width):
        """The `(heads, HW, HW)` float32 bias of another grid, computed now (size-free layers).

        `height` and `width` are Python ints, or scalar tensors in a graph
        that does not know them. The table resized from its grid by timm's
        rule, or the MLP over the new grid's offsets (what timm computes
        for a model created at that size), then gathered.
        """
        if self.bias_type == "table":
            table = resize_in_graph(self.table(), (self.height, self.width), height, width)
        elif is_static(height, width):
            table = self.relative_mlp2(self.relative_mlp1(relative_log_coords(height, width)))
        else:
            table = self.relative_mlp2(self.relative_mlp1(relative_log_coords_ops(height, width)))
        if is_static(height, width):
            index = relative_position_index(height, width).reshape(-1)
        else:
            index = relative_position_index_ops(height, width)
        tokens = height * width
        bias = ops.reshape(ops.take(table, index, axis=0), (tokens, tokens, self.num_heads))
        return ops.transpose(bias, (2, 0, 1))

    def call(self, inputs, training=None):
        batch = ops.shape(inputs)[0]
        height, width = inputs.shape[1], inputs.shape[2]
        if not self.size_free:
            known = height is not None and width is not None
            if known and (height, width) != (self.height, self.width):
                raise ValueError(
                    f"Layer {self.name!r} was built for a {self.height}x{self.width} map, "
                    f"received {height}x{width}"
                )
            height, width = self.height, self.width
        elif height is None or width is None:  # a graph that does not know them
            height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        else:
            height, width = int(height), int(width)
        heads, dim = self.num_heads, self.head_size
        # Dense layers on (B*N, C) matrices: a MatMul with a fused BiasAdd (on a
        # 4-D map Keras runs Tensordot and a separate bias add).
        qkv = self.qkv(ops.reshape(inputs, (-1, inputs.shape[-1])))
        qkv = ops.reshape(qkv, (batch, height * width, heads, 3, dim))
        qkv = ops.transpose(qkv, (3, 0, 2, 1, 4))  # (3, B, heads, N, d)
        # unstack, not qkv[i]: the gradient of three strided slices is three
        # zero-filled full-size tensors and their sum; unstack's is one stack.
        q, k, v = ops.unstack(qkv, 3, axis=0)
        out = self._attend(q, k, v, training, height, width)
        out = self.proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, self.filters)))
        return ops.reshape(out, (batch, height, width, self.output_filters))

    def _bias(self, training):
        """The bias at the layer's own grid: frozen (export), cached, or gathered."""
        if self.frozen_bias is not None and not training:
            # Export: the bias is read from a variable, stored once.
            return self.frozen_bias()
        if self.cache_bias and not training:
            return self._inference_bias()
        return self.relative_bias()

    def _attend(self, q, k, v, training, height, width):
        dim = self.head_size
        q = q * ops.cast(1.0 / math.sqrt(dim), q.dtype)
        # (B, heads, N, N), in float32 for the softmax
        logits = ops.cast(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), "float32")
        if is_static(height, width):
            if (height, width) == (self.height, self.width):
                bias = self._bias(training)
            else:
                bias = self.grid_bias(height, width)
        else:
            own = ops.logical_and(ops.equal(height, self.height), ops.equal(width, self.width))
            bias = ops.cond(
                own, lambda: self._bias(training), lambda: self.grid_bias(height, width)
            )
        logits = logits + bias
        if is_static(height, width) and height * width == 1:
            # A 1x1 map (S4 of a 32x32 input): ops.softmax warns on a one-key
            # axis; the explicit form is the same 1.0 and keeps the table's
            # (zero) gradient defined.
            exp = ops.exp(logits - ops.stop_gradient(logits))
            attn = exp / ops.sum(exp, axis=-1, keepdims=True)
        else:
            attn = ops.softmax(logits, axis=-1)
        return ops.matmul(ops.cast(attn, v.dtype), v)  # (B, heads, N, d)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.output_filters,)

    def compute_output_spec(self, inputs, training=None):
        # Building a functional model must not trace the cache update.
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=self.compute_dtype)

    def save_own_variables(self, store):
        # Only the table is saved; the cache is derived state. The bias MLP's
        # variables are saved by its own Dense layers.
        if self.bias_type == "table":
            store["0"] = self.relative_table

    def load_own_variables(self, store):
        expected = ["0"] if self.bias_type == "table" else []
        if list(store.keys()) != expected:
            raise ValueError(
                f"Layer {self.name!r} expects {len(expected)} saved variable(s) of its own "
                f"(bias_type={self.bias_type!r}), found {len(store.keys())}"
            )
        if self.bias_type == "table":
            table = np.asarray(store["0"])
            if table.shape != tuple(self.relative_table.shape):
                # Saved at another feature size: resize as timm does (square source).
                where = f"Layer {self.name!r}"
                table = resize_square_table(table, (self.height, self.width), where)
            self.relative_table.assign(table)
        if self.cache_bias:
            self.cached_table.assign(ops.full(self.cached_table.shape, float("inf")))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "head_size": self.head_size,
                "output_filters": self.output_filters,
                "bias_type": self.bias_type,
                "mlp_dim": self.mlp_dim,
                "cache_bias": self.cache_bias,
            }
        )
        if self.grid is not None:
            config["grid"] = list(self.grid)
        return config
