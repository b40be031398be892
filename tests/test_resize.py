"""Resizing relative position tables: float64 checks and parity with timm."""

import warnings

import numpy as np
import pytest
from helpers import import_timm_or_skip, requires_timm

from keras_coatnet.resize import resize_relative_table


def _table(old_size, heads=4, seed=0, dtype="float32"):
    rows = (2 * old_size[0] - 1) * (2 * old_size[1] - 1)
    return np.random.RandomState(seed).normal(0, 0.02, (rows, heads)).astype(dtype)


def _offset_grid(size):
    """Offsets `(dy, dx)`, each `(2H-1, 2W-1)`, in the table's row-major order."""
    dy = np.arange(-(size[0] - 1), size[0])
    dx = np.arange(-(size[1] - 1), size[1])
    return np.meshgrid(dy, dx, indexing="ij")


def _geometric_coordinates(old, new):
    """Float64 source coordinates of one growing axis, solved independently.

    Source offset `k` sits at `1 + q + ... + q^(k-1)`, with `q` such that the
    outermost one, `k = old - 1`, lands on the outermost destination offset
    `new - 1` (BEiT's scheme, which timm approximates by bisection).
    """
    n = old - 1
    # 1 + q + ... + q^(n-1) - (new - 1) = 0; its one real root above 1.
    roots = np.roots(np.r_[np.ones(n - 1), 1.0 - (new - 1)])
    q = max(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 1)
    half = np.r_[0.0, np.cumsum(q ** np.arange(n))]
    return np.r_[-half[:0:-1], half]


@pytest.mark.parametrize("old,new", [((7, 7), (12, 12)), ((7, 5), (12, 9)), ((14, 14), (24, 24))])
def test_linear_in_coordinates_is_reproduced_float64(old, new):
    # Bilinear interpolation is exact on data linear in the source
    # coordinates, so a table a*y + b*x over timm's geometric coordinates
    # must come out as a*dy + b*dx at the new integer offsets.
    a, b = 0.7, -1.3
    cy = _geometric_coordinates(old[0], new[0])
    cx = _geometric_coordinates(old[1], new[1])
    table = (a * cy[:, None] + b * cx[None, :]).reshape(-1, 1)
    out = resize_relative_table(np.repeat(table, 3, axis=1), old, new)
    dy, dx = _offset_grid(new)
    expected = (a * dy + b * dx).reshape(-1, 1)
    assert out.shape == ((2 * new[0] - 1) * (2 * new[1] - 1), 3)
    # timm stops its bisection for q at a 1e-6 interval: about 1e-4 here.
    np.testing.assert_allclose(out, np.repeat(expected, 3, axis=1), atol=1e-3)


def test_offsets_up_to_one_are_kept_exactly():
    # Offsets 0 and +-1 sit at coordinates 0 and +-1 for any ratio, growing
    # or shrinking: those table entries carry over, up to the rounding of
    # timm's (v * d) / d.
    for old, new in [((7, 7), (12, 12)), ((12, 12), (7, 7)), ((7, 5), (5, 9))]:
        table = _table(old, seed=1)
        out = resize_relative_table(table, old, new).reshape(2 * new[0] - 1, 2 * new[1] - 1, -1)
        src = table.reshape(2 * old[0] - 1, 2 * old[1] - 1, -1)
        np.testing.assert_allclose(
            out[new[0] - 2 : new[0] + 1, new[1] - 2 : new[1] + 1],
            src[old[0] - 2 : old[0] + 1, old[1] - 2 : old[1] + 1],
            rtol=1e-6,
            atol=0,
        )


def test_shrinking_is_close_to_a_center_crop():
    # timm's ratio bottoms out at 1.01 when shrinking: a center crop with a
    # small inner blend, not a rescale of the whole table.
    dy, dx = _offset_grid((12, 12))
    table = (dy + 100.0 * dx).astype("float32").reshape(-1, 1)
    out = resize_relative_table(table, 12, 7).reshape(13, 13)
    crop = table.reshape(23, 23)[5:18, 5:18]
    assert np.abs(out - crop).max() < 0.2 * 100  # at most ~15% of one step
    assert np.abs(out - crop).max() > 0  # not an exact crop
    # A rescale would reach the old corner value (11, 11) at the new corner.
    assert out[-1, -1] < 7 + 100 * 7


def test_same_size_returns_float32_copy():
    table = _table((7, 5), dtype="float64")
    out = resize_relative_table(table, (7, 5), (7, 5))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, table.astype("float32"))
    out[0, 0] = 1.0
    assert table[0, 0] != 1.0  # a copy, not a view


def test_int_and_pair_sizes_agree():
    table = _table((7, 7))
    np.testing.assert_array_equal(
        resize_relative_table(table, 7, 12), resize_relative_table(table, (7, 7), (12, 12))
    )


@pytest.mark.parametrize(
    "table_shape,old,new,match",
    [
        ((169,), 7, 12, "expected 2-D"),
        ((169, 4, 1), 7, 12, "expected 2-D"),
        ((168, 4), 7, 12, "168 rows.*needs.*169"),
        ((169, 4), (7, 5), 12, r"old_size=\(7, 5\) needs"),
        ((169, 4), 0, 12, "old_size=0"),
        ((169, 4), 7, -1, "new_size=-1"),
        ((169, 4), 7, (12,), r"new_size=\(12,\)"),
        ((169, 4), 7, (12, 12, 12), r"new_size=\(12, 12, 12\)"),
        ((169, 4), 7.0, 12, "old_size=7.0"),
        ((169, 4), 7, True, "new_size=True"),
        ((169, 4), "7", 12, "old_size='7'"),
    ],
)
def test_invalid_arguments_raise(table_shape, old, new, match):
    with pytest.raises(ValueError, match=match):
        resize_relative_table(np.zeros(table_shape, "float32"), old, new)


@pytest.fixture
def torch_timm():
    """`(torch, timm)`, imported the safe way (after TensorFlow)."""
    return import_timm_or_skip()


@pytest.fixture
def timm_resize(torch_timm):
    """timm's `resize_rel_pos_bias_table` on NumPy arrays, float32 in and out."""
    torch, _ = torch_timm
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    def resize(table, old, new, pass_old=True):
        rows = (2 * new[0] - 1) * (2 * new[1] - 1)
        with warnings.catch_warnings():  # torch deprecation notes inside timm
            warnings.simplefilter("ignore", UserWarning)
            out = resize_rel_pos_bias_table(
                torch.from_numpy(table),
                new_window_size=new,
                new_bias_shape=(rows, table.shape[1]),
                old_window_size=old if pass_old else None,
            )
        return out.numpy()

    return resize


@requires_timm
@pytest.mark.parametrize(
    "old,new",
    [
        ((7, 7), (12, 12)),  # CoAtNet S4, 224 -> 384
        ((14, 14), (24, 24)),  # CoAtNet S3, 224 -> 384
        ((7, 5), (12, 9)),  # non-square
        ((12, 12), (7, 7)),  # shrink
        ((7, 5), (4, 9)),  # shrink one axis, grow the other
        ((7, 7), (7, 12)),  # one axis unchanged
        ((2, 2), (12, 12)),  # beyond the ratio's reach: clamped edges
        ((1, 1), (3, 3)),
        ((3, 3), (1, 1)),
        ((7, 5), (7, 5)),  # identity
    ],
)
def test_matches_timm(timm_resize, old, new):
    table = _table(old, heads=8, seed=sum(old + new))
    expected = timm_resize(table, old, new)
    out = resize_relative_table(table, old, new)
    assert out.dtype == np.float32
    # Bit for bit, as the docstring and docs/ARCHITECTURE.md claim (the same float32
    # steps in timm's order); measured 0.0 in every case here.
    np.testing.assert_array_equal(out, expected)


@requires_timm
@pytest.mark.parametrize("old,new", [(7, 12), (14, 24), (12, 7)])
def test_matches_timm_checkpoint_filter(timm_resize, old, new):
    # maxxvit.checkpoint_filter_fn passes no old_window_size: timm infers a
    # square source from the table length.
    table = _table((old, old), heads=8)
    expected = timm_resize(table, None, (new, new), pass_old=False)
    np.testing.assert_array_equal(resize_relative_table(table, old, new), expected)


@requires_timm
def test_matches_timm_rel_pos_bias_set_window_size(torch_timm):
    # The module-level caller, which passes old_window_size.
    torch, _ = torch_timm
    from timm.layers.pos_embed_rel import RelPosBias

    module = RelPosBias(window_size=(7, 5), num_heads=4)
    table = module.relative_position_bias_table.detach().numpy().copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module.set_window_size((12, 9))
    expected = module.relative_position_bias_table.detach().numpy()
    assert isinstance(module.relative_position_bias_table, torch.nn.Parameter)
    np.testing.assert_array_equal(resize_relative_table(table, (7, 5), (12, 9)), expected)


# ----------------------------------------------------------------------------- in the graph

# Source and destination grids of size-free models: CoAtNet-0's S3/S4 grids
# at 224 (14, 7) to detection-like sizes, non-square, shrinking, and the
# same grid (which returns the table itself).
GRAPH_CASES = [
    ((14, 14), (8, 10)),
    ((7, 7), (12, 12)),
    ((14, 14), (14, 20)),
    ((7, 7), (2, 3)),
    ((12, 12), (50, 84)),
    ((7, 7), (7, 7)),
]


@pytest.mark.parametrize("source, target", GRAPH_CASES)
def test_resize_in_graph_matches_the_numpy_rule(source, target):
    """Static sizes (NumPy axis matrices) and tensor sizes (keras.ops, float64 coordinates).

    The in-graph resize sums the four corners in another order than timm
    (two matrix products), so it is not bit-exact: within 4 float32 ulps of
    the table's largest value (measured 1.1e-7..2.4e-7 of it). The
    interpolation matrices of the two paths are equal.
    """
    import keras
    import tensorflow as tf

    from keras_coatnet.resize import axis_matrix, axis_matrix_ops, resize_in_graph

    rng = np.random.RandomState(0)
    rows = (2 * source[0] - 1) * (2 * source[1] - 1)
    table = rng.randn(rows, 4).astype("float32")
    want = resize_relative_table(table, source, target)
    scale = np.abs(want).max()
    static = np.asarray(resize_in_graph(keras.ops.convert_to_tensor(table), source, *target))
    traced = tf.function(lambda t, h, w: resize_in_graph(t, source, h, w))
    dynamic = traced(table, tf.constant(target[0]), tf.constant(target[1])).numpy()
    for got in (static, dynamic):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 4 * np.finfo("float32").eps * scale
    if source == target:
        np.testing.assert_array_equal(static, table)
        np.testing.assert_array_equal(dynamic, table)
    for s, t in zip(source, target, strict=True):
        np.testing.assert_array_equal(
            axis_matrix(s, t), np.asarray(axis_matrix_ops(s, tf.constant(t)))
        )
