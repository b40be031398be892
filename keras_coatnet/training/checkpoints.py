"""Checkpoints written in pieces: the files of a run whose model axis spans processes (JAX).

In a multi-process model-parallel run no process holds a whole copy of a
split weight, so Keras's own files (`save_weights`, `model.save`), which
fetch every value into one process, cannot be written. Here every process
writes the shards its devices hold into one checkpoint directory, through
Orbax (`orbax-checkpoint`, the `jax` extra):

    OUTPUT_DIR/checkpoints/backup/<epoch>/   weights, optimizer, generator states, metadata
    OUTPUT_DIR/checkpoints/best/<epoch>/     the weights of the best epoch so far

`OUTPUT_DIR` must be the same directory for every process: on real hosts a
filesystem they all mount (POSIX: the final files are replaced by rename,
as in `training.files`). Orbax writes a checkpoint into a temporary folder
and renames it into place only once every process has written its part;
the previous one is deleted after that. A process
killed at any instant therefore leaves the previous complete checkpoint or
the new one, and an unfinished write is ignored, then deleted, by the next
run.

At the end of the run every process gathers the final weights, then the best
ones, and the chief writes `final.weights.h5` and `best.keras` from an
unsharded copy of the model: ordinary Keras files that load on one device.
The gather holds the whole weights in every process's host memory, and the
chief's twice (the gathered arrays and the unsharded model, built on the
CPU): for CoAtNet-7 about 9.8 GB, and 19.5 GB on the chief, in float32.

orbax-checkpoint is used directly (its `CheckpointManager`) rather than
`keras.callbacks.OrbaxCheckpoint`: that callback needs Keras 3.14, the
package supports 3.11, and it saves on its own schedule without the
generator states and the best value a resumed run needs.
"""

from __future__ import annotations

import contextlib
import math
import os

import keras
import numpy as np

from keras_coatnet._keras_compat import seed_generators
from keras_coatnet.training import files
from keras_coatnet.training.callbacks import BestModel, save_for_serving

BACKUP = "backup"
BEST = "best"


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(
            "a model axis spanning processes writes its checkpoints through Orbax: "
            "pip install 'keras_coatnet[jax]' (orbax-checkpoint)"
        ) from error
    return ocp


def _manager(directory: str):
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        cleanup_tmp_directories=True,  # what a killed write left
        enable_async_checkpointing=False,  # the epoch ends when its checkpoint is on disk
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "metadata"))


def _abstract(arrays):
    """Shapes, dtypes and shardings of `arrays`: restored values land split as they are."""
    import jax

    return [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for a in arrays]


def latest_epoch(directory: str) -> int | None:
    """The epoch of the newest complete checkpoint in `directory`, without Orbax; `None` if none.

    Complete checkpoints are the folders named by their number alone
    (unfinished ones carry a temporary suffix). Reads only; for tests and
    tools watching a run.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    steps = [int(name) for name in names if name.isdigit()]
    return max(steps) if steps else None


class _Checkpoints:
    """One Orbax checkpoint folder of the run, opened on first use (every process together)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            self._manager = _manager(self.directory)
        return self._manager

    def save(self, epoch: int, state: dict, metadata: dict) -> None:
        ocp = _orbax()
        if epoch in self.manager.all_steps():  # a resumed run repeating an epoch
            self.manager.delete(epoch)
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, epoch: int, like: dict) -> tuple[dict, dict]:
        ocp = _orbax()
        abstract = {key: _abstract(values) for key, values in like.items()}
        restored = self.manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["metadata"]

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _values(variables) -> list:
    return [v.value for v in variables]


def _assign(variables, values) -> None:
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


class ShardedBest(BestModel):
    """`BestModel` for split weights: the best epoch's weights as an Orbax checkpoint.

    `write_files` turns the checkpoint into `best.keras` at the end of the run.

    Args:
        directory: The checkpoint folder, the same for every process.
        monitor: The logged value to maximize. Defaults to `"val_accuracy"`.
    """

    def __init__(self, directory: str, monitor: str = "val_accuracy"):
        super().__init__(directory, monitor)
        self.checkpoints = _Checkpoints(directory)

    def save(self, epoch: int) -> None:
        weights = {"weights": _values(self.model.weights)}
        self.checkpoints.save(epoch, weights, {"epoch": epoch, "best": self.best})

    def best_weights(self, model) -> list | None:
        """The best epoch's weights, laid out as `model`'s (every process); `None` if none."""
        epoch = self.checkpoints.latest()
        if epoch is None:
            return None
        state, _ = self.checkpoints.restore(epoch, {"weights": _values(model.weights)})
        return state["weights"]


class ShardedBackup(keras.callbacks.Callback):
    """`ResumableBackup` for split weights: every process writes its shards into one checkpoint.

    The same protocol: `resume()` before `fit` gives the completed epochs,
    `on_train_begin` restores weights, optimizer slots, generator states
    and the best value, a checkpoint follows every epoch but the last, and
    `remove()` deletes it when the run is over.

    Args:
        directory: The checkpoint folder, the same for every process.
        best_model: A `ShardedBest` whose best value is backed up, or `None`.
    """

    def __init__(self, directory: str, best_model: ShardedBest | None = None):
        super().__init__()
        self.checkpoints = _Checkpoints(directory)
        self.best_model = best_model
        self._epoch = None

    def resume(self) -> int:
        """Epochs completed in the newest complete checkpoint (0 for none)."""
        self._epoch = self.checkpoints.latest()
        return 0 if self._epoch is None else int(self._epoch)

    def _state(self) -> dict:
        optimizer = self.model.optimizer
        return {
            "weights": _values(self.model.weights),
            "optimizer": _values(optimizer.variables) if optimizer is not None else [],
            "seeds": [g.state.value for g in seed_generators(self.model)],
        }

    def on_train_begin(self, logs=None):
        if self._epoch is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # slots to restore into
        state, metadata = self.checkpoints.restore(self._epoch, self._state())
        _assign(self.model.weights, state["weights"])
        if optimizer is not None:
            _assign(optimizer.variables, state["optimizer"])
        _assign([g.state for g in seed_generators(self.model)], state["seeds"])
        if self.best_model is not None:
            self.best_model.best = float(metadata["best"])

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self.params["epochs"]:
            best = self.best_model.best if self.best_model is not None else -math.inf
            self.checkpoints.save(epoch + 1, self._state(), {"epoch": epoch + 1, "best": best})

    def remove(self) -> None:
        """Delete the checkpoint (the run is over); Orbax deletes from the chief alone."""
        manager = self.checkpoints.manager
        for step in manager.all_steps():
            manager.delete(step)
        self.checkpoints.close()


# ----------------------------------------------------------------------------- gathering


def gather(values) -> list[np.ndarray]:
    """Whole NumPy copies of split arrays, in every process (a collective: all must call)."""
    from jax.experimental import multihost_utils

    return [np.asarray(multihost_utils.process_allgather(v, tiled=True)) for v in values]


@contextlib.contextmanager
def on_host():
    """Build in host memory, outside the run's `keras.distribution`.

    On this process's CPU device, not an accelerator: a TPU or GPU still
    holds its share of the training state, and the whole model would not
    fit beside it (CoAtNet-7: 9.8 GB of weights, 4.6 GiB of state per
    16 GB device at `--model-axis 8`).
    """
    import jax

    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            yield
    finally:
        keras.distribution.set_distribution(current)


def write_files(model, best: ShardedBest, out: str, chief: bool, build_unsharded) -> None:
    """Gather the final and the best weights; the chief writes `final.weights.h5` and `best.keras`.

    `build_unsharded()` builds the model as the run did, without layouts.
    Every process gathers (collectives); only the chief builds and writes.
    """
    from jax.experimental import multihost_utils

    final = gather(_values(model.weights))
    best_weights = best.best_weights(model)
    best_weights = gather(best_weights) if best_weights is not None else None
    if chief:
        with on_host():
            plain = build_unsharded()
            plain.set_weights(final)
            with files.replacing(os.path.join(out, "final.weights.h5")) as staging:
                plain.save_weights(staging)
            if best_weights is not None:
                plain.set_weights(best_weights)
                save_for_serving(plain, os.path.join(out, "best.keras"))
    best.checkpoints.close()
    # Nobody leaves (and deletes the backup) before the chief's files are on disk.
    multihost_utils.sync_global_devices("keras_coatnet: final files written")
