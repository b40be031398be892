"""Every private Keras API this package uses, in one place.

Keras 3 has no public way to do what these functions do. Each says which
public API is missing and why the package needs it, so that a Keras release
that moves a private name breaks this module only, and a release that adds
the public API shows what can go. No other module may use `keras.src` or a
private Keras attribute (tests/test_keras_compat.py checks).

Tested against the Keras versions named in pyproject.toml; written to work
on the oldest of them too (see the README's developer section).
"""

from __future__ import annotations

import keras


def child_layers(layer) -> list:
    """The layers `layer` tracks directly (its sublayers), in creation order.

    Missing public API: Keras 3 lists sublayers publicly only for models
    (`Model.layers`, one level). Layers track theirs in the private
    `_layers` list; `Layer._flatten_layers` (also private) walks them
    breadth-first with reversed siblings, not in a stable depth-first order.
    """
    return list(getattr(layer, "_layers", None) or [])


def walk_layers(layer, paths: bool = False):
    """Yield `layer` and every layer nested in it, each once, depth first.

    Order: a layer, then each of its sublayers' walks in creation order.

    Args:
        layer: A `keras.Layer` or `keras.Model`.
        paths: Yield `(path, layer)` pairs instead, `path` joining the names
            of the layer's ancestors and its own with "/"
            (`"coatnet/stage3_block0/attn"`).
    """
    seen = set()

    def walk(layer, prefix):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        yield (path, layer) if paths else layer
        for child in child_layers(layer):
            yield from walk(child, path)

    return walk(layer, "")


def seed_generators(*layers) -> list:
    """Every `keras.random.SeedGenerator` of `layers` and their sublayers, each once.

    In walk order (`walk_layers`), so the same model gives the same list.

    Missing public API: a layer's SeedGenerators are tracked in the private
    `Layer._seed_generators`. Their state variables appear in
    `layer.non_trainable_variables`, but nothing public tells them from the
    layer's other variables. The training code needs them to back up and
    restore drop path masks and to reseed augmentation per batch.
    """
    found = []
    for root in layers:
        for layer in walk_layers(root):
            for generator in getattr(layer, "_seed_generators", None) or []:
                if all(generator is not f for f in found):
                    found.append(generator)
    return found


def saved_variable_shapes(model) -> dict[str, tuple[str, dict[str, tuple]]]:
    """What `model.save_weights` would write, without writing it.

    `{path: (layer name, {variable index: shape})}`, `path` being the HDF5
    group of a layer's variables and the layer name joining its ancestors'
    names with "/" (`"stage3_block0/attn"`). Paths without variables are
    included with an empty map.

    Missing public API: Keras 3 does not expose the structure of a
    `.weights.h5` file (which layer goes to which group), only the saving
    itself. The private `saving_lib._save_state` is the walk that decides it;
    it is run here with a store that records shapes instead of writing. The
    store must subclass the private `saving_lib.H5IOStore` because
    `_save_state` checks its type.
    """
    from keras.src.saving import saving_lib

    class ShapeRecorder(saving_lib.H5IOStore):
        def __init__(self):  # the parent would open a file
            self.mode = "w"
            self.records: dict[str, tuple[str, dict[str, tuple]]] = {}
            self.names: dict[str, str] = {}
            self._path = None

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            # Name a layer by its ancestors' names too: "stage3_block0/attn".
            self.names[path] = (metadata or {}).get("name", "")
            parts = path.strip("/").split("/")
            prefixes = ("/".join(parts[:i]) for i in range(1, len(parts) + 1))
            names = [self.names.get(p) or self.names.get("/" + p) for p in prefixes]
            self._path = path
            self.records[path] = ("/".join(n for n in names if n), {})
            return self

        def __setitem__(self, key, value):
            self.records[self._path][1][key] = tuple(value.shape)

        def close(self):
            pass

    recorder = ShapeRecorder()
    saving_lib._save_state(
        model, weights_store=recorder, assets_store=None, inner_path="", visited_saveables=set()
    )
    return recorder.records


def initialize_jax_rng() -> None:
    """Agree on one global seed across JAX processes, as `keras.distribution.initialize` does.

    Missing public API: `keras.distribution.initialize` joins the processes
    and agrees on a seed in one call, and it does not pass
    `jax.distributed.initialize` a heartbeat timeout. The training code
    joins with its own timeout, then runs Keras's seed agreement
    (`keras.src.backend.jax.distribution_lib.initialize_rng`) on its own. A
    no-op when a seed was set with `keras.utils.set_random_seed`.
    """
    from keras.src.backend.jax import distribution_lib

    distribution_lib.initialize_rng()


def discard_uninitialized(variables) -> None:
    """Forget `variables` created without values in a `keras.StatelessScope`.

    Missing public API: `keras.StatelessScope(initialize_variables=False)`
    creates variables without allocating them (what the sharding code needs
    to read a giant model's variable shapes), but keeps them in a private
    global list and allocates them all when the next outermost stateless
    scope exits (Keras opens one for every symbolic call). Nothing public
    removes them from that list.
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        drop = {id(v) for v in variables}
        pending[:] = [v for v in pending if id(v) not in drop]


def stored_values(variables) -> list:
    """The tensors `variables` hold now (or a `keras.StatelessScope` maps them to), uncast.

    Missing public API: inside a layer's call under a mixed-precision
    policy, `variable.value` is cast to the compute dtype by the layer's
    autocast scope, and nothing public reads the stored value there.
    Rematerialization (`layers._common.rematerialized`) hands a block's
    weights to `keras.remat` as inputs and maps them back with a
    `keras.StatelessScope`; a float32 sublayer (the relative-bias MLP) must
    read them in float32, as it does without remat.
    """
    from keras.src.backend import AutocastScope

    with AutocastScope(None):
        # A tensor read now: TensorFlow's `tf.Variable` itself would be read again
        # when the backward pass recomputes (after drop path's seed moved on).
        return [keras.ops.copy(v.value) for v in variables]


def unwrapped_error(error: Exception) -> Exception:
    """`error`, marked so that Keras re-raises it from a layer's call as it is.

    Missing public API: Keras rewrites an exception raised inside
    `Layer.__call__` into a multi-line message ("Exception encountered when
    calling ...", then the call's arguments), unless it carries the private
    attribute `_keras_call_info_injected` (set by Keras itself so that only
    the innermost call adds the context). A size-free model's size check
    raises a one-line error from inside its first layer, so it sets it.
    """
    error._keras_call_info_injected = True
    return error
