"""Callbacks of the train command: resumable backups and an epoch summary line."""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from keras_coatnet._keras_compat import BackupAndRestore, seed_generators


class ResumableBackup(BackupAndRestore):
    """BackupAndRestore that also keeps the random-generator states.

    Keras backs up weights, optimizer state and the epoch, but not the state
    of the layers' SeedGenerators, so a resumed run would draw other drop
    path masks than an uninterrupted one. Their states are written next to
    the backup, one file per completed epoch, and the one matching the
    restored epoch is loaded.
    """

    def _seed_path(self, epoch):
        return os.path.join(self.backup_dir, f"seed_state_epoch{epoch}.npy")

    def save_extra_state(self, epoch):
        os.makedirs(self.backup_dir, exist_ok=True)
        states = [keras.ops.convert_to_numpy(g.state.value) for g in seed_generators(self.model)]
        np.save(self._seed_path(epoch), np.array(states).reshape(len(states), -1))
        stale = self._seed_path(epoch - 2)
        if os.path.exists(stale):
            os.remove(stale)

    def load_extra_state(self, epoch):
        if not os.path.exists(self._seed_path(epoch)):
            return
        states = np.load(self._seed_path(epoch))
        for generator, state in zip(seed_generators(self.model), states, strict=True):
            generator.state.assign(state.reshape(generator.state.shape))


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
