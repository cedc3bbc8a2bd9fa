"""Processes for data-parallel training: launch, the process group, liveness and faults.

Two launches end in one code path. ``torchrun --nproc-per-node N -m approxgnn train …`` sets
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` and hosts the rendezvous store in its
agent; ``approxgnn train … --nproc N`` (:func:`launch`) does the same itself -- it hosts a
``TCPStore`` in the parent and starts N processes (``torch.multiprocessing``, forked from a
fresh fork server) with those variables set. Either way each rank calls :meth:`DistContext.from_env`, which joins the default process
group through ``env://`` (gloo on CPU, NCCL on CUDA) with a bounded collective timeout.

Faults. A rank that dies closes its sockets, so a peer's next collective fails at once (gloo);
a rank that hangs makes it fail after the collective timeout. To *name* the lost rank, every
rank bumps a heartbeat counter in the store twice a second from a thread, and marks itself done
(with its error, if any) when it stops; :meth:`DistContext.explain` turns a failure into
:class:`RankLost` for the ranks whose counters stopped without a done mark. The launcher gives
the survivors time to exit with that message, then terminates stragglers, so nothing hangs.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..threads import set_threads
from .base import TrainingDiverged
from .config import DistConfig

HEARTBEAT_S = 0.5  # between a rank's heartbeats
STALE_S = 3.0  # a rank whose heartbeat has not moved for this long, and that is not done, is lost
KILL_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankLost(RuntimeError):
    """A peer rank died or stopped answering; this rank stops too (resume from the checkpoint)."""


def under_launcher() -> bool:
    """Whether this process is one rank of a launched group (torchrun, or :func:`launch`)."""
    return all(k in os.environ for k in _ENV)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def shard_batches(perm: np.ndarray, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """Rank ``rank``'s mini-batches of the epoch permutation ``perm`` (``batch_size`` seeds each).

    Global batch ``b`` is ``perm[b·W·B : (b+1)·W·B]`` (``W`` ranks, ``B = batch_size``) -- what
    one process with batch size ``W·B`` would train -- split into ``W`` contiguous slices
    (``np.array_split``); rank ``r`` takes slice ``r``. Every rank thus gets the same number of
    batches (no rank waits for a collective that its peers never enter), the shards are disjoint
    and cover ``perm``, and a final global batch too small to give each rank a seed is merged
    into the one before it.
    """
    n, g = len(perm), batch_size * world
    if n < world:
        raise ValueError(f"{n} training nodes cannot be shared by {world} processes; use fewer processes")
    starts = list(range(0, n, g))
    if len(starts) > 1 and n - starts[-1] < world:
        starts.pop()
    bounds = starts + [n]
    return [np.array_split(perm[a:b], world)[rank] for a, b in zip(bounds[:-1], bounds[1:])]


def threads_per_rank(dc: DistConfig, local_world: int) -> int:
    """``dc.threads``, else the usable cores divided by the ranks on this machine (at least 1)."""
    if dc.threads is not None:
        return dc.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


def check_devices(device: torch.device, local_world: int, backend: str | None) -> None:
    """Refuse a layout whose ranks cannot each have their own GPU: rank ``r`` on a machine drives
    ``cuda:<local rank>`` (or the one device named), and NCCL cannot run two ranks on one GPU."""
    if device.type != "cuda" or local_world == 1:
        return
    count = torch.cuda.device_count()
    if device.index is None and local_world > count:
        raise ValueError(f"{local_world} processes on this machine but {count} GPU(s); each process drives its own: "
                         f"run at most {count} (--nproc / --nproc-per-node), or train on the CPU (--device cpu)")
    if device.index is not None and (backend or "nccl") == "nccl":
        raise ValueError(f"--device {device}: NCCL cannot run {local_world} processes on one GPU; "
                         "give --device cuda (one GPU per process) or --backend gloo")


class Heartbeat:
    """A thread bumping ``<prefix>hb/<rank>`` in the store every :data:`HEARTBEAT_S` seconds."""

    def __init__(self, rank: int, world: int, timeout_s: float) -> None:
        self.rank, self.world = rank, world
        self.prefix = f"approxgnn/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        # Its own connection: the thread never shares a socket with the main thread's calls.
        self.store = self._connect(timeout_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="approxgnn-heartbeat", daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(timeout_s: float) -> dist.TCPStore:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=timeout_s))

    def _run(self) -> None:
        key = f"{self.prefix}hb/{self.rank}"
        while not self._stop.is_set():
            try:
                self.store.add(key, 1)
            except Exception:  # the store host is gone: nothing to report to
                return
            self._stop.wait(HEARTBEAT_S)

    def stop(self, error: str | None) -> None:
        """Stop beating and mark this rank done (``error``: why it stopped, if it failed)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.set(f"{self.prefix}done/{self.rank}", error or "ok")
        except Exception:
            pass

    def lost(self) -> tuple[list[int], dict[int, str]]:
        """Peers whose heartbeat stays still for :data:`STALE_S` without a done mark, and the
        errors that peers which stopped themselves left behind."""
        peers = [r for r in range(self.world) if r != self.rank]
        counts = self._counts(peers)
        deadline = time.monotonic() + STALE_S
        moving: set[int] = set()
        while time.monotonic() < deadline and len(moving) < len(peers):
            time.sleep(HEARTBEAT_S)
            now = self._counts(peers)
            moving |= {r for r in peers if now[r] != counts[r]}
        done = {r: self.store.get(f"{self.prefix}done/{r}").decode() for r in peers
                if self.store.check([f"{self.prefix}done/{r}"])}
        lost = [r for r in peers if r not in moving and r not in done]
        return lost, {r: m for r, m in done.items() if m != "ok"}

    def _counts(self, peers: list[int]) -> dict[int, int]:
        return {r: self.store.add(f"{self.prefix}hb/{r}", 0) for r in peers}


@dataclass
class DistContext:
    """This process's place in the group, and the collectives the trainer uses."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device
    threads: int
    heartbeat: Heartbeat | None = field(default=None, repr=False)
    distributed = True  # (not a field) peers exist: e.g. every rank maps one feature file


    @classmethod
    def from_env(cls, dc: DistConfig, device: torch.device) -> "DistContext":
        """Join the group described by the environment (torchrun's variables, or :func:`launch`'s)."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank if device.index is None else device.index)
            torch.cuda.set_device(device)
        backend = dc.backend or ("nccl" if device.type == "cuda" else "gloo")
        threads = threads_per_rank(dc, local_world)
        set_threads(threads)
        timeout = timedelta(seconds=dc.timeout_s)
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", timeout=timeout, **kw)
        beat = Heartbeat(rank, world, dc.timeout_s)
        return cls(rank, world, local_rank, local_world, backend, device, threads, beat)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives -----------------------------------------------------------------------
    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def all_values(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order (one all-reduce of a one-hot vector)."""
        v = [0.0] * self.world_size
        v[self.rank] = value
        return self.all_sum(v)

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        for t in tensors:
            dist.broadcast(t, src=src)

    def barrier(self) -> None:
        dist.barrier()

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's ``[n_r, d]`` rows concatenated in rank order (``total = Σ n_r``); an empty
        slice may come as ``[0, 0]``. Padded to equal shapes for ``all_gather``."""
        shapes = torch.tensor(rows.shape, dtype=torch.int64, device=rows.device)
        every = [torch.empty_like(shapes) for _ in range(self.world_size)]
        dist.all_gather(every, shapes)
        sizes = [int(s[0]) for s in every]
        width = max(int(s[1]) for s in every)
        pad = torch.zeros(max(sizes), width, dtype=rows.dtype, device=rows.device)
        pad[: rows.size(0), : rows.size(1)] = rows
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        out = torch.cat([p[:k] for p, k in zip(parts, sizes)])
        if out.size(0) != total:
            raise RuntimeError(f"gathered {out.size(0)} rows, expected {total}")
        return out

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---- faults and shutdown -----------------------------------------------------------------
    def explain(self, error: BaseException) -> BaseException:
        """``error`` as :class:`RankLost` when a peer was lost or failed (named), else itself."""
        if self.heartbeat is None or self.world_size == 1 or isinstance(error, (KeyboardInterrupt, TrainingDiverged)):
            return error  # a divergence is decided by every rank together (Trainer.finite_guard)
        try:
            lost, failed = self.heartbeat.lost()
        except Exception:  # the store itself is gone: the launcher (or its host) was lost
            return RankLost(f"lost the rendezvous store at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} (the launcher died) after: {error}")
        if lost:
            names = ", ".join(map(str, lost))
            return RankLost(f"lost rank {names} (no heartbeat for {STALE_S:g} s; "
                            f"it died or hangs); stopping. The last complete checkpoint can be resumed with "
                            f"--resume. Failed collective: {type(error).__name__}: {_first_line(error)}")
        if failed:
            r, msg = next(iter(failed.items()))
            return RankLost(f"stopping because rank {r} failed: {msg}")
        return error

    def close(self, error: BaseException | None = None) -> None:
        """Mark this rank done (with its error) and leave the group."""
        if self.heartbeat is not None:
            self.heartbeat.stop(None if error is None else f"{type(error).__name__}: {_first_line(error)}")
            self.heartbeat = None
        if dist.is_initialized():
            if error is None:
                dist.destroy_process_group()
            # After a fault, destroying a gloo group can block on the dead peer: leave it to exit.


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


# ---- the local launcher ----------------------------------------------------------------------
def _child(rank: int, world: int, env: dict[str, str], fn: Callable[..., int], args: tuple) -> None:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        code = fn(*args)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - reported, then the exit status says it failed
        print(f"approxgnn: rank {rank}: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("APPROXGNN_TRACEBACK"):
            traceback.print_exc()
        code = 1
    exit_rank(code)


def exit_rank(code: int) -> None:
    """End this rank's process with ``code`` now: flush, run the exit handlers (temporary feature
    files) after a success, then skip the interpreter's teardown -- seconds of freeing torch's
    modules on a busy machine, and after a fault it can block on the dead peer's process group."""
    sys.stderr.flush()
    sys.stdout.flush()
    if code == 0:
        atexit._run_exitfuncs()
    os._exit(code)


def _start_method(fn: Callable[..., int]) -> Any:
    """``forkserver`` where there is one (Linux, macOS), else ``spawn``. The server is a fresh
    interpreter that imports ``fn``'s module and ``torch._dynamo`` (which the optimiser imports on
    first use, seconds) once; the ranks fork from it. Unlike a fork of the launcher, a rank inherits
    no threads, sockets or CUDA state -- the caller may have any (the rendezvous store's among them)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__, "torch._dynamo"])
    return ctx


def launch(fn: Callable[..., int], nproc: int, args: tuple = (), *, grace_s: float = 60.0,
           deadline_s: float | None = None) -> int:
    """Run ``fn(*args)`` in ``nproc`` new ranks on this machine (:func:`_start_method`); return
    the exit status.

    The parent hosts the rendezvous store (so it outlives any rank) and sets the variables
    torchrun would (``TORCHELASTIC_USE_AGENT_STORE`` tells ``env://`` that the store is hosted).
    When a rank fails, the others get ``grace_s`` to stop on their own, with their message, then
    are terminated. The status is 0 when every rank returned 0, else the first failure's
    (1 for a rank killed by a signal), 130 when interrupted, and 124 when ``deadline_s`` (a bound
    on the whole run, e.g. for tests) passed first.
    """
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True",
           # The fork server imports from its environment's path, not ours (Python 3.11 drops the
           # path it is given), and may run in another directory: give it ours, absolute, so that
           # it preloads the same approxgnn (a relative PYTHONPATH=src, or an installed copy).
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if os.path.isabs(p))}
    ctx = _start_method(fn)
    procs = [ctx.Process(target=_child, args=(r, nproc, env, fn, args), name=f"approxgnn-rank{r}")
             for r in range(nproc)]
    saved = dict(os.environ)
    try:
        for r, p in enumerate(procs):  # a spawned child starts with its variables, as under torchrun
            os.environ.update(env, RANK=str(r), LOCAL_RANK=str(r))
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        return _supervise(procs, grace_s, deadline_s)
    except KeyboardInterrupt:
        _terminate(procs)
        return 130
    finally:
        del store


def _supervise(procs: list[Any], grace_s: float, deadline_s: float | None) -> int:
    """Wait for every rank; after the first failure, wait at most ``grace_s`` for the rest."""
    status = 0
    end = None if deadline_s is None else time.monotonic() + deadline_s
    alive = list(procs)
    while alive:
        timeout = None if end is None else max(0.0, end - time.monotonic())
        ready = wait_any([p.sentinel for p in alive], timeout=timeout)
        if not ready:  # survivors did not stop within the grace period (or the run's deadline passed)
            print(f"approxgnn: ranks {[procs.index(p) for p in alive]} did not stop in time; terminating them",
                  file=sys.stderr)
            _terminate(alive)
            return status or 124
        for p in [p for p in alive if p.sentinel in ready]:
            p.join()
            alive.remove(p)
            code = p.exitcode
            if code != 0:
                rank = procs.index(p)
                if code < 0:
                    name = signal.Signals(-code).name
                    print(f"approxgnn: rank {rank} (pid {p.pid}) was killed by {name}", file=sys.stderr)
                if status == 0:
                    status = code if code > 0 else 1
                    grace_end = time.monotonic() + grace_s
                    end = grace_end if end is None else min(end, grace_end)
    return status


def _terminate(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + KILL_GRACE_S
    for p in procs:
        p.join(timeout=max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
