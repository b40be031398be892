"""The train command on JAX: data and model parallelism over two processes, failure, resume.

Every run is a subprocess with KERAS_BACKEND set, so these tests run under
either backend's pytest. Two real processes join through JAX's distributed
service on 127.0.0.1 (gloo collectives on CPU); nothing is simulated.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("tensorflow_datasets")
pytest.importorskip("sklearn")
h5py = pytest.importorskip("h5py")

from keras_coatnet.training import data  # noqa: E402
from keras_coatnet.training.callbacks import METADATA, POINTER, read_backup  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
TRAIN = os.path.join(ROOT, "examples", "train.py")
TIMEOUT = 600


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return data.write_digits_tree(str(tmp_path_factory.mktemp("digits")), size=32)


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
    """One starting point for every run (the backends initialize differently)."""
    path = str(tmp_path_factory.mktemp("init") / "init.weights.h5")
    code = textwrap.dedent(
        f"""
        import keras
        from keras_coatnet.variants import get_config
        from keras_coatnet.training.trainer import build_model
        keras.utils.set_random_seed(0)
        build_model(get_config("coatnet-digits"), 32, 10).save_weights({path!r})
        """
    )
    _python(code, "tensorflow")
    return path


def _env(backend):
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python(code, backend):
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(backend),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _command(root, weights, out, epochs=3, *extra):
    return [
        sys.executable, TRAIN,
        "--dataset", root, "--model", "coatnet-digits", "--image-size", "32",
        "--batch-size", "16", "--steps-per-epoch", "2", "--epochs", str(epochs),
        "--lr", "2e-3", "--warmup-steps", "2", "--randaugment-ops", "0", "--mixup", "0",
        # Drop path draws differ between backends (the JAX-vs-TF test).
        "--drop-path", "0", "--weights", weights, "--output-dir", str(out), "--quiet",
        *extra,
    ]  # fmt: skip


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(command, port, distribution=("--distribution", "data-parallel"), env=None):
    """Two processes of one run (data-parallel unless `distribution` says otherwise)."""
    flags = [*distribution, "--coordinator-address", f"127.0.0.1:{port}"]
    return [
        subprocess.Popen(
            [*command, *flags, "--num-processes", "2", "--process-id", str(i)],
            env=env or _env("jax"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(procs):
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _run(command, backend):
    result = subprocess.run(
        command, env=_env(backend), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _weights(path):
    found = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
    assert found
    return found


def _max_diff(a, b, layers_only=False):
    a, b = _weights(a), _weights(b)
    if layers_only:  # against the initial file, which has no optimizer state
        a = {k: v for k, v in a.items() if k.startswith("layers/")}
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for k in a)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, digits_root, initial_weights):
    """The reference: one JAX process, one device, the same global batch."""
    out = tmp_path_factory.mktemp("jax1")
    log = _run(_command(digits_root, initial_weights, out), "jax")
    (out / "stdout.txt").write_text(log)
    return out


def test_two_processes_train_like_one(tmp_path, digits_root, initial_weights, one_process_run):
    out = tmp_path / "pair"
    logs = _finish(_start_pair(_command(digits_root, initial_weights, out), _free_port()))
    chief, other = out / "final.weights.h5", out / "process_1" / "final.weights.h5"
    # Both processes hold one replicated copy of the weights...
    assert _max_diff(chief, other) == 0.0
    # ...equal to one process's on the same global batches: each process fed
    # its half of every batch, BatchNorm normalized over the whole batch.
    diff = _max_diff(chief, one_process_run / "final.weights.h5")
    assert diff <= 1e-5, diff
    assert _max_diff(chief, initial_weights, layers_only=True) > 1e-3  # it trained
    # Every process evaluated the whole held-out split: the one-process metrics.
    reference = (one_process_run / "stdout.txt").read_text().splitlines()
    reference = [line for line in reference if line.startswith("held-out")]
    for log in logs:
        held_out = [line for line in log.splitlines() if line.startswith("held-out")]
        assert held_out[0].split(",")[0] == reference[0].split(",")[0]
    # Each process writes to a folder of its own.
    assert (out / "best.keras").exists() and (out / "process_1" / "best.keras").exists()


def _backup_epoch(backup_dir) -> int | None:
    """The epoch of the complete backup (the one its pointer names), else `None`."""
    try:
        found = read_backup(str(backup_dir))
    except OSError:  # the backup it named was just replaced
        return None
    return None if found is None else found[1]["epoch"]


def _kill_the_second(procs, out, backup_epoch=None):
    """SIGKILL process 1 once it has a complete backup; the first's stderr.

    `backup_epoch()` gives the epoch of that backup or `None` (default:
    process 1's own backup folder).
    """
    if backup_epoch is None:
        backup_epoch = lambda: _backup_epoch(out / "process_1" / "backup")  # noqa: E731
    try:
        deadline = time.monotonic() + TIMEOUT
        while procs[1].poll() is None and time.monotonic() < deadline:
            if backup_epoch() is not None:
                break
            time.sleep(0.1)
        assert procs[1].poll() is None, procs[1].communicate()[1][-3000:]
        procs[1].send_signal(signal.SIGKILL)
        # A deadline, not a timing: the heartbeat outcome takes HEARTBEAT_TIMEOUT_S.
        _, err = procs[0].communicate(timeout=TIMEOUT)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()  # closes the pipes
    return err


def _survivor_outcome(proc, err) -> str:
    """Which documented outcome ended the survivor (docs/DISTRIBUTED.md, "Failure")."""
    if proc.returncode == 1:
        # In a collective when its peer died: one line, status 1.
        assert "coatnet train: error: lost contact with the other processes" in err, err[-3000:]
        return "lost contact, status 1"
    # Outside a collective: JAX's distributed service aborts it after the
    # heartbeat timeout with a fatal log (SIGABRT: status 134 in a shell).
    assert proc.returncode in (134, -signal.SIGABRT), (proc.returncode, err[-3000:])
    return f"heartbeat timeout, status {proc.returncode}"


# Slow set (3.5 min on 2 busy cores): the model-parallel pair below kills
# and resumes two processes in the default suite.
@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_both_resume(
    tmp_path, digits_root, initial_weights, one_process_run
):
    out = tmp_path / "run"
    command = _command(digits_root, initial_weights, out)
    procs = _start_pair(command, _free_port())
    err = _kill_the_second(procs, out)
    print("the survivor ended with:", _survivor_outcome(procs[0], err))
    assert not (out / "final.weights.h5").exists()
    epochs = [_backup_epoch(out / d) for d in ("backup", "process_1/backup")]
    assert epochs[0] == epochs[1] >= 1

    logs = _finish(_start_pair(command, _free_port()))
    for log in logs:
        lines = [line for line in log.splitlines() if line.startswith("epoch ")]
        # Resumed after the backed-up epoch, not from the start.
        assert lines and lines[0].startswith(f"epoch {epochs[0] + 1}/3"), log
        assert lines[-1].startswith("epoch 3/3"), log
    assert _max_diff(out / "final.weights.h5", out / "process_1" / "final.weights.h5") == 0.0
    # The resumed pair ends where an uninterrupted run ends (one process, same
    # global batches; the tolerance of the two-process test).
    diff = _max_diff(out / "final.weights.h5", one_process_run / "final.weights.h5")
    assert diff <= 1e-5, diff


def test_backups_at_different_epochs_end_both_processes_in_one_line(
    tmp_path, digits_root, initial_weights
):
    out = tmp_path / "run"
    # Process 0 has a backup after epoch 1 (its pointer and metadata are all
    # the check before training reads), process 1 none.
    folder = out / "backup" / "epoch-000001"
    folder.mkdir(parents=True)
    (folder / METADATA).write_text(json.dumps({"epoch": 1, "best": 0.5}))
    (out / "backup" / POINTER).write_text("epoch-000001\n")
    procs = _start_pair(_command(digits_root, initial_weights, out), _free_port())
    try:
        outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        lines = [line for line in err.splitlines() if line.startswith("coatnet train")]
        assert proc.returncode == 2, err[-3000:]
        assert len(lines) == 1 and lines[0].startswith(
            "coatnet train: error: the processes' backups are at different epochs [1, 0] "
        ), err[-3000:]
    assert not (out / "final.weights.h5").exists()


# Model parallelism with a model axis spanning both processes (mesh 1 x 8,
# 4 virtual devices each): no process holds a whole weight, so the run
# writes its backup and best model in pieces, through Orbax, into one
# folder, and gathers final.weights.h5 and best.keras at the end.
MODEL_PARALLEL = ("--distribution", "model-parallel", "--model-axis", "8")


def _env_devices(count):
    """`count` virtual CPU devices, compiled with XLA's cheapest settings (measured: the
    pair's CPU time 118 -> 94 s, its weights within 2.6e-6 of the default settings')."""
    return {
        **_env("jax"),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={count} "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        "JAX_PLATFORMS": "cpu",
    }


@pytest.fixture(scope="module")
def model_parallel_pair(tmp_path_factory, digits_root, initial_weights):
    """A two-process model-parallel run, process 1 killed after the first backup, both resumed."""
    from keras_coatnet.training.checkpoints import latest_epoch

    out = tmp_path_factory.mktemp("model_parallel")
    backup = out / "checkpoints" / "backup"
    command = _command(digits_root, initial_weights, out)
    env = _env_devices(4)
    procs = _start_pair(command, _free_port(), MODEL_PARALLEL, env)
    err = _kill_the_second(procs, out, lambda: latest_epoch(backup))
    print("the survivor ended with:", _survivor_outcome(procs[0], err))
    assert not (out / "final.weights.h5").exists()
    epoch = latest_epoch(backup)
    return out, epoch, _finish(_start_pair(command, _free_port(), MODEL_PARALLEL, env))


def test_model_parallel_across_processes_resumes_and_trains_like_one(
    model_parallel_pair, one_process_run
):
    out, epoch, logs = model_parallel_pair
    assert epoch is not None and 1 <= epoch < 3
    for log in logs:
        # The run's own account of its weights: most of them split 8 ways.
        placed = [line for line in log.splitlines() if line.startswith("model-parallel: ")]
        assert placed and placed[0].startswith("model-parallel: mesh 1 x 8 (batch x model)"), log
        split, most = (float(x) for x in re.findall(r"([\d.]+)%", placed[0]))
        assert split >= 90 and most <= 15, placed
        lines = [line for line in log.splitlines() if line.startswith("epoch ")]
        assert lines and lines[0].startswith(f"epoch {epoch + 1}/3"), log
        assert lines[-1].startswith("epoch 3/3"), log
    # One set of files, the chief's, gathered from both processes' shards.
    assert not (out / "process_1" / "final.weights.h5").exists()
    assert not os.listdir(out / "checkpoints" / "backup")  # removed once the run is over
    # Split weights, started from the unsharded initial file, resumed from
    # Orbax pieces: where one process on one device ends. (The gathered file
    # holds the model's weights; the one-process run's also its optimizer.)
    diff = _max_diff(one_process_run / "final.weights.h5", out / "final.weights.h5", True)
    assert diff <= 1e-5, diff


def test_best_model_of_a_split_run_serves_with_the_bias_cache(model_parallel_pair):
    out, _, _ = model_parallel_pair
    code = textwrap.dedent(
        f"""
        import json, keras
        from keras_coatnet._keras_compat import walk_layers
        from keras_coatnet.layers import RelativeAttention
        from keras_coatnet.training.checkpoints import latest_epoch
        best = keras.saving.load_model({str(out / "best.keras")!r})
        caches = [a.cache_bias for a in walk_layers(best) if isinstance(a, RelativeAttention)]
        print("RESULT " + json.dumps({{"caches": caches,
              "epoch": latest_epoch({str(out / "checkpoints" / "best")!r})}}))
        """
    )
    line = [x for x in _python(code, "tensorflow").splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["caches"] and all(result["caches"]), result
    assert result["epoch"] is not None  # the sharded best checkpoint is kept


SHARDED_CHECKPOINT = """
import json, sys
import numpy as np
from keras_coatnet.variants import get_config
from keras_coatnet.model import CoAtNet
from keras_coatnet.training import RunConfig, distribution

trained, plain_file, sharded_file = sys.argv[1:]
config, kwargs = get_config("coatnet-digits"), dict(input_shape=(32, 32, 3), classes=10)
placement = distribution.place(RunConfig(distribution="model-parallel", model_axis=4))
# The model-parallel run's checkpoint into an unsharded model, saved from it...
plain = CoAtNet(config, weights=trained, **kwargs)
plain.save_weights(plain_file)
# ...and that file into a model split as the run's was, saved from it.
placement.lay_out(config, **kwargs)
with placement.run_scope():
    sharded = CoAtNet(config, weights=plain_file, **kwargs)
    sharded.save_weights(sharded_file)
split = {v.path: str(v.value.sharding.spec) for v in sharded.weights
         if "model" in tuple(v.value.sharding.spec)}
largest = max(sharded.weights, key=lambda v: np.prod(v.shape))
print("RESULT " + json.dumps({
    "split": len(split),
    "largest": [largest.path, split.get(largest.path)],
    "devices": len({d for v in sharded.weights for d in v.value.sharding.device_set}),
    "diff": max(float(np.max(np.abs(np.asarray(a.value) - np.asarray(b.value)), initial=0))
                for a, b in zip(plain.weights, sharded.weights, strict=True)),
}))
"""


def test_a_sharded_checkpoint_loads_unsharded_and_back(
    tmp_path, initial_weights, model_parallel_pair
):
    out, _, _ = model_parallel_pair
    trained = out / "final.weights.h5"
    plain, sharded = tmp_path / "plain.weights.h5", tmp_path / "sharded.weights.h5"
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_CHECKPOINT, str(trained), str(plain), str(sharded)],
        env=_env_devices(8),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    measured = json.loads(line[len("RESULT ") :])
    assert measured["devices"] == 8
    # The largest kernel (and more) is split on the model axis.
    assert measured["split"] >= 10 and "model" in str(measured["largest"][1]), measured
    assert measured["diff"] == 0.0, measured
    # The gathered file loads into an unsharded model with difference 0, and
    # back into a split one.
    assert _max_diff(trained, plain) == 0.0
    assert _max_diff(sharded, plain) == 0.0
    assert _max_diff(trained, initial_weights, layers_only=True) > 1e-3


def test_jax_weights_load_and_serve_on_tensorflow(tmp_path, one_process_run):
    weights = str(one_process_run / "final.weights.h5")
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    load = (
        "import keras, numpy as np\n"
        "from keras_coatnet.variants import get_config\n"
        "from keras_coatnet.model import CoAtNet\n"
        f"model = CoAtNet(get_config('coatnet-digits'), input_shape=(32, 32, 3), classes=10,"
        f" weights={weights!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
    )
    _python(load + f"np.save({str(tmp_path / 'jax.npy')!r}, model.predict(x, verbose=0))\n", "jax")
    served = str(tmp_path / "served")
    _python(
        load
        + textwrap.dedent(
            f"""
            import tensorflow as tf
            from keras_coatnet import export
            np.save({str(tmp_path / "tf.npy")!r}, model.predict(x, verbose=0))
            version = export(model, {served!r})
            loaded = tf.saved_model.load(version)
            out = loaded.signatures["serving_default"](images=tf.constant(x))
            np.save({str(tmp_path / "served.npy")!r}, out["probabilities"].numpy())
            """
        ),
        "tensorflow",
    )
    on_jax = np.load(tmp_path / "jax.npy")
    assert on_jax.shape == (4, 10) and np.ptp(on_jax) > 1e-3
    np.testing.assert_allclose(np.load(tmp_path / "tf.npy"), on_jax, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), on_jax, atol=1e-4)


def test_jax_and_tensorflow_train_alike(tmp_path, digits_root, initial_weights, one_process_run):
    out = tmp_path / "tf"
    _run(_command(digits_root, initial_weights, out), "tensorflow")
    diff = _max_diff(out / "final.weights.h5", one_process_run / "final.weights.h5")
    # float32 kernels of two compilers over 6 AdamW steps (measured: see docs/DISTRIBUTED.md).
    assert diff <= 1e-4, diff
    assert _max_diff(out / "final.weights.h5", initial_weights, layers_only=True) > 1e-3


@pytest.mark.parametrize(
    "backend,argv,message",
    [
        ("jax", ["--tpu", "local"], "--tpu needs the TensorFlow backend"),
        ("tensorflow", ["--distribution", "data-parallel"], "needs the JAX backend"),
        (
            "jax",
            ["--distribution", "data-parallel", "--num-processes", "2", "--process-id", "0"],
            "needs --coordinator-address",
        ),
        (
            "jax",
            ["--distribution", "model-parallel", "--model-axis", "3"],
            "--model-axis 3 must divide the 1 devices of each process",
        ),
    ],
)
def test_unsupported_combinations_end_with_one_clear_line(tmp_path, backend, argv, message):
    result = subprocess.run(
        [sys.executable, TRAIN, *argv, "--output-dir", str(tmp_path), "--quiet"],
        env=_env(backend),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    err = [line for line in result.stderr.splitlines() if line.startswith("coatnet train")]
    assert len(err) == 1 and message in err[0], result.stderr[-2000:]
