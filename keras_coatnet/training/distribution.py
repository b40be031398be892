"""Where the train step runs: tf.distribute on TensorFlow, keras.distribution on JAX.

TensorFlow: `pick_strategy` (TPUStrategy for `--tpu`, MirroredStrategy over
local GPUs). JAX: one device, `keras.distribution.DataParallel` over every
device of every process (`--distribution data-parallel`), or
`keras.distribution.ModelParallel` on a (batch, model) mesh of them
(`--distribution model-parallel --model-axis N`, the layouts from
`sharding.layout_map`), the processes joined by `keras.distribution.initialize`.
tf.distribute.MultiWorkerMirroredStrategy is not offered: Keras 3's fit does
not support it (keras-team/keras#20585).

In a multi-process run each process reads the same seeded pipeline and keeps
its own rows of every global batch (the rows its devices hold on the batch
axis), so N processes train like one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import keras

# The environment variables the process flags fall back to (defined with the flags).
from keras_coatnet.training.config import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

# A process that stops sending heartbeats (killed, host down) is declared dead
# after this many seconds; JAX's default is 100.
HEARTBEAT_TIMEOUT_S = 30


class LostContactError(RuntimeError):
    """A collective failed because another process of the run went away."""


@dataclasses.dataclass
class Placement:
    """The devices a run trains on and the part of each global batch this process feeds.

    Attributes:
        strategy: The tf.distribute strategy (TensorFlow backend), else `None`.
        distribution: The keras.distribution (JAX backend), else `None`.
        replicas: Devices the global batch is split over (the batch axis).
        layouts: The model-parallel LayoutMap, filled by `lay_out`, else `None`.
        num_processes: Processes of the run.
        process_id: This process, 0 .. num_processes - 1; 0 is the chief.
    """

    strategy: object = None
    distribution: keras.distribution.Distribution | None = None
    replicas: int = 1
    num_processes: int = 1
    process_id: int = 0
    layouts: keras.distribution.LayoutMap | None = None

    @property
    def chief(self) -> bool:
        return self.process_id == 0

    @property
    def writes_in_pieces(self) -> bool:
        """Whether the run's files are Orbax checkpoints every process writes its part of.

        Model-parallel runs of several processes (`training.checkpoints`);
        one process, or data parallelism, writes ordinary Keras files.
        """
        return self.layouts is not None and self.num_processes > 1

    def build_scope(self):
        """The scope the model is built and compiled in (the strategy's, on TensorFlow)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def run_scope(self):
        """The scope the whole run (build, fit, save) happens in (the distribution's, on JAX)."""
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    def lay_out(self, config, **build_kwargs) -> None:
        """Lay out the variables of `CoAtNet(config, **build_kwargs)` before it is built.

        Model-parallel only (else nothing to do): the variables are created
        split as `sharding.layout_map` says, and their shapes depend on the
        builder's `input_shape` and `classes`, known once the data is.
        """
        if self.layouts is None:
            return
        from keras_coatnet.training.sharding import layout_map

        self.layouts.clear()
        self.layouts.update(layout_map(self.layouts.device_mesh, config, **build_kwargs))

    def report(self, model) -> str | None:
        """One line on how `model`'s weights landed on this process's devices (model-parallel).

        Printed by the train command once the model is built; `None` (and
        nothing printed) for other placements.
        """
        if self.layouts is None:
            return None
        total = split = 0
        per_device = {}
        for variable in model.weights:
            value = variable.value
            total += value.nbytes
            if "model" in tuple(getattr(value.sharding, "spec", ())):
                split += value.nbytes
            for shard in value.addressable_shards:
                device = shard.device.id
                per_device[device] = per_device.get(device, 0) + shard.data.nbytes
        batch, size = self.layouts.device_mesh.shape
        most = max(per_device.values()) / total
        line = (
            f"model-parallel: mesh {batch} x {size} (batch x model), {split / total:.1%} of "
            f"the weight bytes split on the model axis, at most {most:.1%} on one device"
        )
        print(line, flush=True)
        return line

    def rows(self, global_batch: int) -> slice:
        """The rows of a global batch of `global_batch` that this process feeds.

        Those its devices hold on the batch axis: with a model axis spanning
        processes, several processes feed the same rows.
        """
        if self.distribution is None or self.num_processes == 1:
            return slice(0, global_batch)
        layout = self.distribution.get_data_layout((global_batch,)).backend_layout
        indices = layout.addressable_devices_indices_map((global_batch,)).values()
        spans = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                        for s in indices})  # fmt: skip
        for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
            if stop != start:
                raise ValueError(f"process {self.process_id} owns scattered rows: {spans}")
        return slice(spans[0][0], spans[-1][1])

    def shard(self, dataset, global_batch: int):
        """`dataset` of global `(images, labels)` batches, cut to this process's rows.

        Keras's JAX trainer assembles the global batch from the processes'
        local batches (`jax.make_array_from_process_local_data`), process i
        contributing the rows its devices hold.
        """
        rows = self.rows(global_batch)
        if rows == slice(0, global_batch):
            return dataset
        return dataset.map(lambda x, y: (x[rows], y[rows]))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def _processes(args) -> tuple[str | None, int, int]:
    coordinator = args.coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num = args.num_processes if args.num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    pid = args.process_id if args.process_id is not None else _env_int(ENV_PROCESS_ID)
    num = 1 if num is None else num
    if num < 1:
        raise ValueError(f"--num-processes must be at least 1, received: {num}")
    if num == 1:
        if pid not in (None, 0):
            raise ValueError(f"--process-id {pid} needs --num-processes above {pid}")
        return coordinator, 1, 0
    if coordinator is None:
        raise ValueError(
            f"--num-processes {num} needs --coordinator-address HOST:PORT "
            f"(or {ENV_COORDINATOR}), the address of process 0"
        )
    if pid is None or not 0 <= pid < num:
        raise ValueError(f"--process-id must be in 0 .. {num - 1}, received: {pid}")
    return coordinator, num, pid


def _initialize_jax(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join the other processes, before any JAX computation.

    CPU devices need gloo for collectives across processes (GPUs and TPUs
    bring their own). `keras.distribution.initialize` does not pass a
    heartbeat timeout, so `jax.distributed.initialize` is called here with
    ours, then Keras's seed agreement runs as `keras.distribution.initialize`
    would (a no-op here: the train command always sets a seed).
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator.split(",")[0],
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )
    from keras_coatnet._keras_compat import initialize_jax_rng

    initialize_jax_rng()


def place(args) -> Placement:
    """The placement `args` ask for; on JAX, joins the other processes of a multi-process run.

    Call before anything runs on the JAX backend. Raises ValueError (one
    line) for a combination the backend does not support.
    """
    distribution = getattr(args, "distribution", "none") or "none"
    multi = any(
        getattr(args, name, None) is not None
        for name in ("coordinator_address", "num_processes", "process_id")
    )
    if multi and distribution == "none":
        raise ValueError(
            "--coordinator-address, --num-processes and --process-id need "
            "--distribution data-parallel or model-parallel"
        )
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if distribution != "none":
            raise ValueError(
                f"--distribution {distribution} needs the JAX backend (KERAS_BACKEND=jax); "
                "on TensorFlow use --tpu for a TPU pod, and local GPUs are used "
                "(MirroredStrategy) without a flag"
            )
        from keras_coatnet.training.strategy import pick_strategy

        strategy = pick_strategy(args.tpu)
        return Placement(strategy=strategy, replicas=strategy.num_replicas_in_sync)
    if backend != "jax":
        raise ValueError(f"the train command runs on TensorFlow or JAX, not {backend!r}")
    if args.tpu:
        raise ValueError(
            "--tpu needs the TensorFlow backend (KERAS_BACKEND=tensorflow); on JAX, TPU "
            "devices are found without it: use --distribution data-parallel"
        )
    if distribution == "none":
        return Placement()
    coordinator, num_processes, process_id = _processes(args)
    if num_processes > 1:
        _initialize_jax(coordinator, num_processes, process_id)
    devices = keras.distribution.list_devices()
    placement = Placement(num_processes=num_processes, process_id=process_id)
    # The train command shards its own pipeline (Placement.shard): Keras's
    # auto-sharding would also split the evaluation batches, whose last one
    # may not divide over the processes.
    if distribution == "data-parallel":
        placement.distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
        placement.replicas = len(devices)
        return placement
    mesh = _mesh(devices, getattr(args, "model_axis", None))
    # Empty until `Placement.lay_out`: the layouts need the class count.
    placement.layouts = keras.distribution.LayoutMap(mesh)
    placement.distribution = keras.distribution.ModelParallel(
        layout_map=placement.layouts, batch_dim_name="batch", auto_shard_dataset=False
    )
    placement.replicas = mesh.shape[0]
    return placement


def _mesh(devices: list, model_axis: int | None) -> keras.distribution.DeviceMesh:
    """The (batch, model) mesh of `devices`, `model_axis` of them on the model axis.

    Devices are listed process by process, so each row of the mesh (one
    model-axis group) is `model_axis` consecutive devices: inside one
    process when `model_axis` divides a process's devices, else whole
    processes side by side, which needs `model_axis` to be a multiple of
    them. Either way every process's devices hold whole rows or whole
    groups of rows.
    """
    import jax

    local, total = jax.local_device_count(), len(devices)
    size = local if model_axis is None else model_axis
    if total % size or (local % size and size % local):
        raise ValueError(
            f"--model-axis {size} must divide the {local} devices of each process or be a "
            f"multiple of them that divides all {total}"
        )
    return keras.distribution.DeviceMesh(
        shape=(total // size, size), axis_names=("batch", "model"), devices=devices
    )


_LOST_CONTACT = (
    "gloo",
    "connection closed",
    "connection reset",
    "heartbeat timeout",
    "unavailable:",
    "deadline_exceeded",
    "coordination service",
)


def lost_contact(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is JAX's report of a peer process gone away."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if any(marker in text for marker in _LOST_CONTACT):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def reporting_lost_contact(placement: Placement):
    """Turn a multi-process run's failed collectives into `LostContactError`."""
    try:
        yield
    except Exception as error:
        if placement.num_processes > 1 and lost_contact(error):
            first = next((line for line in str(error).splitlines() if line.strip()), "")
            raise LostContactError(f"process {placement.process_id}: {first[:300]}") from error
        raise


def exit_lost_contact(prog: str, error: LostContactError) -> None:
    """Print one line and end the process with status 1, now.

    A normal exit would run JAX's distributed shutdown, which waits at a
    barrier for the dead process and then aborts with a fatal log; ending
    here skips it (the run's backup is already on disk).
    """
    print(f"{prog}: error: lost contact with the other processes ({error})", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
