"""Executors: where runs execute. Workers return results; only the driver writes the registry.

* ``InProcessExecutor``: runs tasks one at a time in the driver process (``--workers 0``
  or ``1`` on a CPU).
* ``LocalExecutor``: N worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn
  context). With GPUs: one run per GPU at a time (slot i uses ``cuda:i % n_gpus``);
  without: the CPU threads are split between the workers (``torch.set_num_threads``).
  Workers die with the driver (``PR_SET_PDEATHSIG``), so a killed driver leaves no
  stragglers. A worker that dies (OOM killer, segfault, ``kill -9``) breaks the pool: the
  pool is rebuilt and every run in flight comes back with status ``lost``, with
  ``worker_died`` true for the run whose worker died (workers report their pid when they
  start a run) and false for its siblings, and for every run when the dead worker was idle
  (so its death uses no attempt of theirs); where the dead worker cannot be told apart (it
  died of SIGTERM, as the siblings do), all of them get ``worker_died``.
* ``RayExecutor``: one Ray task per run requesting ``num_cpus`` / ``num_gpus``; connects
  to a cluster (``address``) or starts a local instance. Checkpoints go to the model-set
  directory, which every node must reach at the same path.

Interface (``Executor``): ``capacity`` (runs in flight at most), ``submit(task)``, ``wait() ->
list of results`` (blocks until at least one run ends), ``close()``. Every executor calls
``fn(task)`` for a task: ``camgap.zoo.train.execute_task`` (a ``Task`` or ``Pack`` in, a
``RunResult`` out) unless another top-level function is given (``zoo measure`` passes
``camgap.zoo.measure.run_measure_task``: a ``MeasureTask`` in, a ``MeasureOutcome`` out); ``fn``
must never raise and must return a result with the task's ``run_id`` and a ``status``. ``submit`` fills in the task's
``device`` and ``threads``. A result's ``status`` is ``done``, ``failed`` (the run's own
failure), ``storage`` (a full or failing disk) or ``lost`` (stopped by a dead worker,
``worker_died`` telling whether it was the run's own).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch

from camgap.errors import InputError
from camgap.machine import cpu_count, max_workers, too_many_workers
from camgap.zoo.train import execute_task

__all__ = ["InProcessExecutor", "LocalExecutor", "RayExecutor", "make_executor", "resolve_device", "cpu_count"]


def thread_budget() -> int:
    """CPU threads the runs may use together: OMP_NUM_THREADS when set, else the CPUs."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else cpu_count()


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to this process")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    return device


class Work(Protocol):
    """A task an executor runs (a ``Task``, a ``Pack`` or a ``MeasureTask``: frozen dataclasses with
    these fields); ``failure`` is its result when its ``fn`` could not return one."""

    run_id: str
    device: str
    threads: int

    def failure(self, status: str, error: str, worker_died: bool = False) -> Any: ...


Outcome = Any  # what the task's ``fn`` returns: a RunResult or a MeasureOutcome
TaskFn = Callable[[Work], Outcome]


def _placed(task: Work, device: str, threads: int) -> Work:
    """The task with the device and thread count it runs with."""
    return replace(task, device=device, threads=threads)


def _failed(task: Work, error: str) -> Outcome:
    return task.failure("failed", error)


def _lost(task: Work, worker_died: bool, error: str) -> Outcome:
    return task.failure("lost", error, worker_died)


class Executor(Protocol):
    """Where runs (or a run's measurements) execute. ``submit`` a task while fewer than
    ``capacity`` are in flight; ``wait`` blocks until at least one ends and returns their results
    (a task's ``fn`` never raises: failures come back as results); ``close`` ends the work in
    flight. The driver that uses one is the only writer of the registry."""

    capacity: int

    def submit(self, task: Work) -> None: ...

    def wait(self) -> list[Outcome]: ...

    def close(self) -> None: ...


class InProcessExecutor:
    def __init__(self, device: str = "cpu", threads: int | None = None, fn: TaskFn = execute_task):
        self.fn = fn
        self.device = "cuda:0" if device == "cuda" else device
        self.threads = threads or thread_budget()
        self.capacity = 1
        self._queue: list[Work] = []

    def submit(self, task: Work) -> None:
        self._queue.append(_placed(task, self.device, self.threads))

    def wait(self) -> list[Outcome]:
        task = self._queue.pop(0)
        threads = torch.get_num_threads()
        try:
            return [self.fn(task)]
        finally:
            torch.set_num_threads(threads)  # a run sets its own thread count; the caller keeps its own

    def close(self) -> None:
        self._queue.clear()


_PID_QUEUE = None  # in a worker: where it reports (run_id, pid) when it starts a run


def _worker_init(pid_queue=None) -> None:
    """Die with the driver (Linux): a SIGKILLed driver must not leave runs training."""
    global _PID_QUEUE
    _PID_QUEUE = pid_queue
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the driver died before prctl took effect
                os._exit(1)
        except OSError:
            pass


def _execute_in_worker(task: Work, fn: TaskFn = execute_task) -> Outcome:
    """Report this worker's pid for the run (so the driver can tell whose worker died), then run it."""
    if _PID_QUEUE is not None:
        _PID_QUEUE.put((task.run_id, os.getpid()))
    return fn(task)


def check_local_workers(workers: int) -> None:
    """InputError unless a local executor may start `workers` processes: each is a process of this
    machine, at most one per CPU (a mistyped count would fork until memory runs out)."""
    problem = f"{workers} processes: give 0 or more" if workers < 0 else too_many_workers(workers)
    if problem:
        raise InputError(
            f"--workers {problem} (a local executor starts one process per worker; --executor ray runs more)"
        )


def _exit_code(proc: mp.process.BaseProcess, wait: float = 10.0) -> int | None:
    """The exit code of a pool's worker process once it has ended (None: still running after
    `wait` s). The pool's own thread reaps its workers too: when it wins the race to waitpid,
    ours fails (ECHILD) and the code reads None until that thread has stored it, microseconds
    later; so a process that has ended is asked again for up to a second."""
    from multiprocessing.connection import wait as ready

    proc.join(timeout=wait)
    deadline, code = time.monotonic() + 1.0, proc.exitcode
    # its sentinel is ready once it has ended (is_alive would read the same failed waitpid)
    while code is None and ready([proc.sentinel], 0) and time.monotonic() < deadline:
        time.sleep(0.01)
        code = proc.exitcode
    return code


class LocalExecutor:
    def __init__(self, workers: int, device: str = "cpu", threads: int | None = None, fn: TaskFn = execute_task):
        check_local_workers(int(workers))
        self.fn = fn
        self.workers = max(1, int(workers))
        self.device = device
        self.capacity = self.workers
        if device.startswith("cuda"):
            if device == "cuda":
                self.gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            else:
                self.gpus = [device]
        else:
            self.gpus = []
        self.threads = threads or max(1, thread_budget() // self.workers)
        self._free_slots = list(range(self.workers))
        self._inflight: dict[Future, tuple[Work, int]] = {}
        self._pids: dict[str, int] = {}  # run_id -> pid of the worker running it
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("spawn")
        self._pid_queue = ctx.SimpleQueue()  # a fresh one: a killed worker may have left the old one locked
        # every worker this pool started (the pool starts them on submit, and forgets them on shutdown)
        self._workers: dict[int, mp.process.BaseProcess] = {}
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init, initargs=(self._pid_queue,))

    def _note_workers(self) -> None:
        self._workers.update(getattr(self._pool, "_processes", None) or {})

    def _drain_pids(self) -> None:
        while not self._pid_queue.empty():
            run_id, pid = self._pid_queue.get()
            self._pids[run_id] = pid

    def _dead_pids(self) -> set[int]:
        """Pids of the broken pool's workers that died on their own: every other one is
        terminated (SIGTERM) by the pool once it sees one dead."""
        self._note_workers()
        dead = set()
        for pid, proc in self._workers.items():
            code = _exit_code(proc)
            if code is not None and code != -signal.SIGTERM:
                dead.add(pid)
        return dead

    def submit(self, task: Work) -> None:
        slot = self._free_slots.pop(0)
        device = self.gpus[slot % len(self.gpus)] if self.gpus else "cpu"
        task = _placed(task, device, self.threads)
        self._pids.pop(task.run_id, None)
        try:
            fut = self._pool.submit(_execute_in_worker, task, self.fn)
        except BrokenProcessPool:
            self._restart()
            fut = self._pool.submit(_execute_in_worker, task, self.fn)
        self._note_workers()
        self._inflight[fut] = (task, slot)

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def wait(self) -> list[Outcome]:
        done, _ = futures_wait(list(self._inflight), return_when=FIRST_COMPLETED)
        results, broken = [], []
        for fut in done:
            task, slot = self._inflight.pop(fut)
            self._free_slots.append(slot)
            try:
                results.append(fut.result())
            except BrokenProcessPool:
                broken.append(task)
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                results.append(_failed(task, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"))
        if broken:  # every run in flight in the broken pool is lost
            for task, slot in self._inflight.values():
                self._free_slots.append(slot)
                broken.append(task)
            self._inflight.clear()
            results += self._lost_runs(broken)
            self._restart()
        self._free_slots.sort()
        return results

    def _lost_runs(self, tasks: list[Work]) -> list[Outcome]:
        """One ``lost`` result per run of the broken pool: ``worker_died`` for the run whose
        worker died (by its reported pid; a run not reported yet when no reported one matches),
        for none when every run reported a live worker (the dead one was idle), for all of them
        when that cannot be told."""
        self._drain_pids()
        dead = self._dead_pids()
        pids = {t.run_id: self._pids.get(t.run_id) for t in tasks}
        culprits = {rid for rid, pid in pids.items() if pid in dead}
        if not culprits and dead:  # the dead worker had not reported the run it picked up, or ran none
            culprits = {rid for rid, pid in pids.items() if pid is None}
            if not culprits:
                idle = "stopped when an idle worker process died (killed, out of memory or crashed)"
                return [_lost(t, False, idle) for t in tasks]
        died = "its worker process died (killed, out of memory or crashed)"
        if not culprits:
            return [_lost(t, True, f"{died}, or a sibling's did (cannot tell which)") for t in tasks]
        return [
            _lost(t, True, died)
            if t.run_id in culprits
            else _lost(t, False, "stopped by another run's dead worker process")
            for t in tasks
        ]

    def close(self) -> None:
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        if self._inflight:  # interrupted: do not wait for the runs in flight
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()


class RayExecutor:
    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        device: str = "auto",
        cpus_per_run: int | None = None,
        gpus_per_run: float | None = None,
        fn: TaskFn = execute_task,
    ):
        import ray

        self.ray = ray
        self._started = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                pkg_root = str(Path(__file__).resolve().parents[2])
                env = {"PYTHONPATH": os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)}
                ray.init(num_cpus=workers or None, runtime_env={"env_vars": env}, **kwargs)
            self._started = True
        resources = ray.cluster_resources()
        n_gpu = int(resources.get("GPU", 0))
        n_cpu = int(resources.get("CPU", 1))
        if device == "auto":
            device = "cuda" if n_gpu else "cpu"
        if device.startswith("cuda") and not n_gpu:
            raise InputError("--device cuda: the Ray cluster has no GPU")
        self.num_gpus = (gpus_per_run if gpus_per_run is not None else 1.0) if device.startswith("cuda") else 0.0
        self.num_cpus = cpus_per_run or (max(1, n_cpu // max(1, n_gpu)) if self.num_gpus else 1)
        self.device = "cuda:0" if self.num_gpus else "cpu"
        slots = int(n_gpu / self.num_gpus) if self.num_gpus else n_cpu // self.num_cpus
        self.capacity = max(1, min(slots, workers) if workers else slots)
        self._remote = ray.remote(fn).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_retries=0,
            name="camgap-zoo-run" if fn is execute_task else f"camgap-zoo-{fn.__name__}",
        )
        self._inflight: dict = {}

    def submit(self, task: Work) -> None:
        task = _placed(task, self.device, int(max(1, self.num_cpus)))
        ref = self._remote.remote(task)
        self._inflight[ref] = task

    def wait(self) -> list[Outcome]:
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1)
        results = []
        for ref in ready:
            task = self._inflight.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - execute_task never raises: a worker crash, node death, OOM kill
                results.append(_lost(task, True, f"ray task failed: {type(exc).__name__}: {exc}"))
        return results

    def close(self) -> None:
        for ref in list(self._inflight):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self._inflight.clear()
        if self._started:
            self.ray.shutdown()


def make_executor(
    kind: str = "local",
    workers: int | None = None,
    device: str = "auto",
    ray_address: str | None = None,
    threads: int | None = None,
    cpus_per_run: int | None = None,
    run_threads: int = 1,
    fn: TaskFn = execute_task,
) -> Executor:
    """Build an executor that calls ``fn(task)`` for each task (default: train a run). Local
    defaults: one worker per GPU, else one per ``run_threads`` CPUs (the grid's ``[train]
    threads``: parallelism comes from workers, never from a run's thread count, which would
    change its weights); ``workers`` 0, or 1 on a CPU, run in-process."""
    if kind == "ray":
        return RayExecutor(
            ray_address,
            workers,
            device if device == "auto" else resolve_device_for_ray(device),
            cpus_per_run=cpus_per_run or run_threads,
            fn=fn,
        )
    if kind != "local":
        raise InputError(f"unknown executor {kind!r}; expected local or ray")
    if workers is not None:
        check_local_workers(workers)
    device = resolve_device(device)
    if workers == 0:
        return InProcessExecutor(device, threads, fn=fn)
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if device == "cuda" else 1
        return LocalExecutor(workers or n, device, threads, fn=fn)
    if workers is None:  # OMP_NUM_THREADS (thread_budget) may exceed the CPUs this process may use
        workers = max(1, min(thread_budget() // max(1, run_threads), max_workers()))
    if workers <= 1:
        return InProcessExecutor("cpu", threads, fn=fn)
    return LocalExecutor(workers, "cpu", threads, fn=fn)


def resolve_device_for_ray(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise InputError(f"--executor ray takes --device auto, cpu or cuda, got {device!r}")
    return device
