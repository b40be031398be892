"""Callbacks of the train command: an atomically replaced backup, the best model, an epoch line.

A backup is a folder `BACKUP/epoch-<N>` (`N` completed epochs) holding
everything a resumed run needs: the model's and the optimizer's variables
(`state.weights.h5`), the layers' random-generator states (`seeds.npy`,
which Keras's `BackupAndRestore` does not keep: without them a resumed run
draws other drop path masks) and `metadata.json` (the epoch, the best
held-out accuracy so far). The pointer file `BACKUP/current` names the one
complete backup. A new backup is written into a staging folder beside it,
flushed to disk, renamed to `epoch-<N>`, and only then named by the pointer,
itself replaced with an atomic rename; the previous backup is deleted last.
A process killed at any instant therefore leaves the pointer naming either
the previous complete backup or the new one, and the next run resumes from
the one it names and deletes everything else in the folder.

Test hooks (for the tests of this module, not for users):

* `KERAS_COATNET_TEST_KILL_AT=POINT[@N]`: the process sends itself SIGKILL
  when the backup write reaches `POINT` (one of `KILL_POINTS`, in the
  order the write passes them), in the write of the backup after `N`
  completed epochs, else in the first write that reaches it.
* `KERAS_COATNET_TEST_BACKUP_LOG=FILE`: each backup write appends a line
  `begin N T` before it touches a file and `end N T` after its last step
  (`T` from `time.time()`), so a test that kills the process at a random
  instant can tell whether the kill landed inside a write.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
import zipfile

import keras
import numpy as np

from keras_coatnet._keras_compat import seed_generators
from keras_coatnet.training import files

POINTER = "current"
WEIGHTS = "state.weights.h5"
SEEDS = "seeds.npy"
METADATA = "metadata.json"
_BACKUP = re.compile(r"epoch-\d+\Z")

KILL_AT = "KERAS_COATNET_TEST_KILL_AT"
BACKUP_LOG = "KERAS_COATNET_TEST_BACKUP_LOG"
# The points of a backup write, in order: the staging folder made, each of
# its files written, the folder renamed into place, the pointer switched
# (the previous backup not deleted yet).
KILL_POINTS = (
    "staging",
    "after-weights",
    "after-seeds",
    "after-metadata",
    "after-rename",
    "after-pointer",
)


def _log(event: str, epoch: int) -> None:
    path = os.environ.get(BACKUP_LOG)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {epoch} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)


def _reached(point: str, epoch: int) -> None:
    """The test hook: SIGKILL this process if `KILL_AT` names `point` (of this epoch)."""
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name not in KILL_POINTS or not (at == "" or at.isdigit()):
        raise ValueError(f"{KILL_AT}={spec!r} must be POINT[@EPOCH], POINT one of {KILL_POINTS}")
    if name == point and (at == "" or int(at) == epoch):
        _log(f"killed-{point}", epoch)
        os.kill(os.getpid(), signal.SIGKILL)


def read_backup(backup_dir: str) -> tuple[str, dict] | None:
    """The complete backup in `backup_dir`, as `(folder, metadata)`; `None` if there is none.

    Reads only; safe while a run writes (call again on `OSError`: the
    backup it named was replaced in between).

    Raises:
        ValueError: The pointer names something that is not a backup (the
            folder was changed by hand).
    """
    pointer = os.path.join(backup_dir, POINTER)
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    folder = os.path.join(backup_dir, name)
    if not _BACKUP.match(name) or not os.path.isdir(folder):
        raise ValueError(
            f"the backup {backup_dir} is damaged ({POINTER} names {name!r}, which is not "
            "one); remove the folder to start over"
        )
    with open(os.path.join(folder, METADATA)) as f:
        return folder, json.load(f)


class ResumableBackup(keras.callbacks.Callback):
    """Back up the training state after every epoch but the last; restore it when a run starts.

    Each backup replaces the previous one atomically (see the module
    docstring). The run resumes with `model.fit(..., initial_epoch=
    backup.resume())`: `resume` deletes what a killed write left and
    returns the completed epochs of the backup; `on_train_begin` restores
    its weights, optimizer state, random-generator states and the best
    value of `best_model`.

    Args:
        backup_dir: A folder of its own (everything else in it is deleted).
        best_model: A `BestModel` whose best value is backed up with the
            weights, or `None`.
    """

    def __init__(self, backup_dir: str, best_model: BestModel | None = None):
        super().__init__()
        self.backup_dir = backup_dir
        self.best_model = best_model
        self._restore = None

    def resume(self) -> int:
        """Epochs completed in the backup (0 for none); deletes all but the backup."""
        found = read_backup(self.backup_dir)
        keep = {POINTER, os.path.basename(found[0])} if found else set()
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name not in keep:
                    files.remove(os.path.join(self.backup_dir, name))
        self._restore = found
        return int(found[1]["epoch"]) if found else 0

    def on_train_begin(self, logs=None):
        if self._restore is None:
            return
        folder, metadata = self._restore
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # slots to load into
        self.model.load_weights(os.path.join(folder, WEIGHTS))
        states = np.load(os.path.join(folder, SEEDS))
        for generator, state in zip(seed_generators(self.model), states, strict=True):
            generator.state.assign(state.reshape(generator.state.shape))
        if self.best_model is not None:
            self.best_model.best = float(metadata["best"])

    def on_epoch_end(self, epoch, logs=None):
        # After the last epoch the run writes its final weights instead.
        if epoch + 1 < self.params["epochs"]:
            self.write(epoch + 1)

    def write(self, epoch: int) -> None:
        """Write the backup after `epoch` completed epochs and make it the current one."""
        _log("begin", epoch)
        os.makedirs(self.backup_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=files.PARTIAL, dir=self.backup_dir)
        _reached("staging", epoch)
        self.model.save_weights(os.path.join(staging, WEIGHTS))
        _reached("after-weights", epoch)
        states = [keras.ops.convert_to_numpy(g.state.value) for g in seed_generators(self.model)]
        states = np.stack([s.ravel() for s in states]) if states else np.zeros((0, 0), "int64")
        np.save(os.path.join(staging, SEEDS), states)
        _reached("after-seeds", epoch)
        best = self.best_model.best if self.best_model is not None else -math.inf
        with open(os.path.join(staging, METADATA), "w") as f:
            json.dump({"epoch": epoch, "best": best}, f)
        _reached("after-metadata", epoch)
        files.fsync_tree(staging)
        name = f"epoch-{epoch:06d}"
        files.remove(os.path.join(self.backup_dir, name))  # a killed write's, never the current
        os.rename(staging, os.path.join(self.backup_dir, name))
        files.fsync(self.backup_dir)
        _reached("after-rename", epoch)
        with files.replacing(os.path.join(self.backup_dir, POINTER)) as pointer:
            with open(pointer, "w") as f:
                f.write(name + "\n")
        _reached("after-pointer", epoch)
        for other in os.listdir(self.backup_dir):
            if other not in (POINTER, name):
                files.remove(os.path.join(self.backup_dir, other))
        _log("end", epoch)

    def remove(self) -> None:
        """Delete the backup (the run is over), the pointer first: no half-deleted backup counts."""
        pointer = os.path.join(self.backup_dir, POINTER)
        if os.path.exists(pointer):
            os.remove(pointer)
            files.fsync(self.backup_dir)
        files.remove(self.backup_dir)


def _cache_on(config):
    """`config` (a saved model's JSON) with every `cache_bias` set to true."""
    if isinstance(config, dict):
        return {k: True if k == "cache_bias" else _cache_on(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_cache_on(v) for v in config]
    return config


def save_for_serving(model: keras.Model, path: str) -> None:
    """`model.save(path)`, atomically, with the attention layers' bias cache turned on.

    Training models are built without the cache (training never reads it);
    the saved file is for inference, where the cache saves a gather per
    call. The cache is derived state, absent from the weights, so only the
    `.keras` file's `config.json` changes; the rest is copied as it is.
    """
    with files.replacing(path) as staging:
        plain = staging[: -len(".keras")] + "-plain.keras"
        try:
            model.save(plain)
            with zipfile.ZipFile(plain) as source, zipfile.ZipFile(staging, "w") as target:
                for item in source.infolist():
                    with source.open(item) as src:
                        if item.filename == "config.json":
                            target.writestr(item, json.dumps(_cache_on(json.load(src))))
                            continue
                        with target.open(item, "w") as dst:
                            shutil.copyfileobj(src, dst, 1 << 24)
        finally:
            files.remove(plain)


class BestModel(keras.callbacks.Callback):
    """Save the model for serving whenever `monitor` reaches a new maximum.

    `keras.callbacks.ModelCheckpoint(save_best_only=True)` in mode "max",
    except that the file is replaced atomically, is saved with the bias
    cache on (`save_for_serving`), and its best value is part of the
    backup (`ResumableBackup(best_model=...)`), so a resumed run does not
    overwrite the file with a worse model.

    Args:
        path: The `.keras` file.
        monitor: The logged value to maximize. Defaults to `"val_accuracy"`.
    """

    def __init__(self, path: str, monitor: str = "val_accuracy"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.save(epoch + 1)

    def save(self, epoch: int) -> None:
        """Save the model after `epoch` completed epochs (`self.best` is its value)."""
        save_for_serving(self.model, self.path)


class EpochSummary(keras.callbacks.Callback):
    """One line per epoch: losses, accuracies, learning rate, seconds."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = self.model.optimizer.learning_rate
        parts = [f"epoch {epoch + 1}/{self.params.get('epochs')}"]
        parts += [f"{k} {v:.4f}" for k, v in sorted(logs.items()) if k != "learning_rate"]
        parts.append(f"lr {float(keras.ops.convert_to_numpy(lr)):.2e}")
        parts.append(f"{time.perf_counter() - self._start:.1f}s")
        print(" | ".join(parts), flush=True)
