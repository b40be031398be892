"""Timed rounds, their summaries, the sgemm peak and the machine's load and memory."""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import sys
import threading
import time

import numpy as np


def log(*parts) -> None:
    """One line of the benchmark's log on stdout, flushed; erases the ticker first."""
    ticker = Ticker.active
    if ticker is None:
        print(*parts, flush=True)
        return
    with ticker.lock:
        ticker.erase()
        print(*parts, flush=True)


class Ticker:
    """The time since the start on stderr, redrawn every half second between log lines.

    For a person watching (a terminal, no `--quiet`): the benchmark logs a
    line per block, and blocks take minutes. `log` erases it before writing.
    """

    active: Ticker | None = None

    def __init__(self, label: str, enabled: bool, stream=None):
        self.label, self.enabled = label, enabled
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.drawn = False

    def __enter__(self):
        if self.enabled:
            self.start = time.perf_counter()
            self.thread = threading.Thread(target=self._run, daemon=True)
            Ticker.active = self
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()
            Ticker.active = None
            with self.lock:
                self.erase()
        return False

    def erase(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False

    def _run(self):
        while not self.stop.wait(0.5):
            with self.lock:
                elapsed = time.perf_counter() - self.start
                self.stream.write(f"\r{self.label} {elapsed:.0f}s\033[K")
                self.stream.flush()
                self.drawn = True


def timed_rounds(fns: dict, warmup: int, repeats: int, budget: float, min_repeats: int = 3):
    """Warm up every fn, then time them in interleaved rounds.

    Returns `{name: {"first_s", "times_s"}}`; stops after `repeats` rounds, or
    earlier once `budget` seconds of rounds are spent and `min_repeats` done.
    Round r calls the functions in their order rotated by r.
    """
    results = {name: {"first_s": None, "times_s": []} for name in fns}
    for name, fn in fns.items():
        for i in range(warmup):
            start = time.perf_counter()
            fn()
            if i == 0:
                results[name]["first_s"] = time.perf_counter() - start
    names = list(fns)
    spent = 0.0
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            results[name]["times_s"].append(elapsed)
            spent += elapsed
        if spent > budget and r + 1 >= min_repeats:
            break
    return results


def summarize(times, batch: int, macs: int, passes: int = 1) -> dict:
    """Median and min ms per call, images/s (from the median and the min), GFLOP/s."""
    median = statistics.median(times)
    ips = batch / median
    gflops = 2.0 * macs * passes * ips / 1e9
    return {
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "repeats": len(times),
        "images_per_s": ips,
        "images_per_s_best": batch / min(times),
        "gflops": gflops,
    }


def sgemm_peak(n: int = 2048, repeats: int = 10) -> dict:
    """GFLOP/s of float32 n x n matmul in numpy, TensorFlow and torch (best time each)."""
    import tensorflow as tf

    from keras_coatnet._timm import import_timm

    torch, _ = import_timm()
    a = np.random.RandomState(0).standard_normal((n, n)).astype("float32")
    b = np.random.RandomState(1).standard_normal((n, n)).astype("float32")
    ta, tb = tf.constant(a), tf.constant(b)
    pa, pb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {
        "numpy": lambda: a @ b,
        "tf.matmul": lambda: tf.matmul(ta, tb).numpy(),
        "torch.mm": lambda: torch.mm(pa, pb),
    }
    out = {}
    for name, fn in fns.items():
        fn()
        best = min(_time(fn) for _ in range(repeats))
        out[name] = 2.0 * n**3 / best / 1e9
    return out


class ForeignLoad:
    """CPU use of other processes (in cores) while a block runs: /proc/stat minus our own."""

    cores: float | None = None

    def __enter__(self):
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        if None in (busy, self.start[0]):
            self.cores = None
        else:
            other = (busy - self.start[0]) - (own - self.start[1])
            self.cores = max(0.0, other / (wall - self.start[2]))
        return False


def quiet_block(options, run, *run_args):
    """`(run(*run_args), cores used by others meanwhile)`, run again while that is too high.

    Waits for a quiet machine first (`--wait-idle`); a block during which other
    processes used more than `--busy` cores is run again, up to `--retries` times.
    """
    for attempt in range(options.retries + 1):
        wait_idle(options.wait_idle)
        with ForeignLoad() as load:
            result = run(*run_args)
        log(f"   other processes used {cores(load.cores)} cores meanwhile")
        if load.cores is None or load.cores <= options.busy or attempt == options.retries:
            return result, load.cores
        log(f"   busy machine: timing this block again ({attempt + 1}/{options.retries})")


def wait_idle(max_wait: float, threshold: float = 0.2, window: float = 3.0) -> None:
    """Wait (up to `max_wait` s) until other processes use < `threshold` cores for `window` s."""
    if max_wait <= 0:
        return
    start = time.perf_counter()
    while True:
        before = _busy_seconds()
        time.sleep(window)
        after = _busy_seconds()
        if before is None or after is None:
            return
        used = (after - before) / window
        waited = time.perf_counter() - start
        if used < threshold:
            if waited > window + 1:
                log(f"   waited {waited:.0f}s for other processes to finish")
            return
        if waited > max_wait:
            log(f"   machine still busy ({used:.2f} cores used by others) after {waited:.0f}s")
            return


def cores(value) -> str:
    return "?" if value is None else f"{value:.2f}"


def rss_gib():
    """(current, peak) resident memory of this process in GiB, from /proc/self/status."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 2**20
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def free_memory() -> None:
    """Drop the last block's models (tf.function and Keras hold reference cycles)."""
    import keras

    keras.backend.clear_session()
    gc.collect()
    try:  # hand freed heap pages back (glibc); TF's function library itself stays
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    rss, peak = rss_gib()
    if rss is not None:
        log(f"   memory: {rss:.1f} GiB resident now, {peak:.1f} GiB peak")


def _busy_seconds():
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    t = os.times()  # waited-for children (the torch-only timm worker) count as our own
    return t.user + t.system + t.children_user + t.children_system


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
