"""Timing hygiene for the RSC benchmarks on a shared machine (Linux ``/proc/stat``).

The 2-core machine is shared: ``flock /tmp/approxgnn-bench.lock`` keeps timed runs apart, but
untimed jobs (tests, data generation) still take cores and memory bandwidth and can slow a
timed SpMM several-fold. So every timed section here (1) first waits, up to a limit, until the
other processes leave the CPUs nearly idle, and (2) records how much CPU the *other* processes
used while it ran (``others_cpu``: 0 = the machine was ours, 1 = another process kept one whole
core busy on average). Results with a high ``others_cpu`` are flagged, not silently mixed in.
"""
from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from typing import Iterator


def _cpu_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(parts[:8]) / hz  # user..steal; guest time is already inside user
    return total - idle / hz, total


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def others_busy(window: float = 1.0) -> float:
    """Cores' worth of CPU that other processes used over the next ``window`` seconds."""
    b0, _, o0, w0 = *_cpu_jiffies(), _own_cpu(), time.monotonic()
    time.sleep(window)
    b1, _, o1, w1 = *_cpu_jiffies(), _own_cpu(), time.monotonic()
    return max(0.0, (b1 - b0) - (o1 - o0)) / max(w1 - w0, 1e-9)


def wait_quiet(max_busy: float = 0.25, timeout: float = 900.0, window: float = 2.0) -> float:
    """Block until other processes use under ``max_busy`` cores (or ``timeout`` passes).

    Returns the last measurement; prints while waiting so a long wait is visible.
    """
    if not os.path.exists("/proc/stat"):
        return float("nan")
    start = time.monotonic()
    busy = others_busy(window)
    while busy > max_busy and time.monotonic() - start < timeout:
        print(f"  (waiting: other processes use {busy:.2f} cores)", flush=True)
        time.sleep(10.0)
        busy = others_busy(window)
    return busy


class OthersMeter:
    """``with OthersMeter() as m: ...`` then ``m.cores``: other processes' mean CPU use (cores)."""

    cores: float = float("nan")


@contextmanager
def others_meter() -> Iterator[OthersMeter]:
    m = OthersMeter()
    if not os.path.exists("/proc/stat"):
        yield m
        return
    b0, _, o0, w0 = *_cpu_jiffies(), _own_cpu(), time.monotonic()
    try:
        yield m
    finally:
        b1, _, o1, w1 = *_cpu_jiffies(), _own_cpu(), time.monotonic()
        m.cores = max(0.0, (b1 - b0) - (o1 - o0)) / max(w1 - w0, 1e-9)


LOCK = "/tmp/approxgnn-bench.lock"


@contextmanager
def bench_lock(path: str | None = LOCK) -> Iterator[None]:
    """Hold the shared benchmark lock (the one ``flock /tmp/approxgnn-bench.lock`` takes) while a
    timed section runs, so long suites release it between runs instead of for hours.

    Do not also wrap the script in ``flock`` on the same file: the inner lock would wait forever.
    ``path=None`` disables locking.
    """
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        if waited > 5:
            print(f"  (waited {waited:.0f}s for {path})", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def quiet_lock(path: str | None = LOCK, max_busy: float = 0.25, timeout: float = 1200.0) -> Iterator[float]:
    """Take the benchmark lock when the machine is quiet; yields the last "others" measurement.

    Waits for quiet *before* taking the lock (so a long wait never blocks other people's timed
    runs), then re-checks under the lock and backs off if someone's untimed job started. After
    ``timeout`` seconds it runs anyway; the caller records ``others_cpu`` to flag the result.
    """
    start = time.monotonic()
    while True:
        wait_quiet(max_busy, timeout=max(0.0, timeout - (time.monotonic() - start)))
        with bench_lock(path):
            busy = others_busy(1.0) if os.path.exists("/proc/stat") else float("nan")
            if not busy > max_busy or time.monotonic() - start >= timeout:
                yield busy
                return
        time.sleep(15.0)
