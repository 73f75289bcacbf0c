"""Worker processes that never outlive the build that started them.

A killed parent must not leave pool workers behind (each holds a patient's volumes in memory),
and a terminated parent must get the chance to remove what it half-wrote.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_DEFERRED = (signal.SIGTERM, signal.SIGINT)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the kernel kills this worker when its parent dies (Linux)."""
    # Ctrl-C reaches the whole process group; the parent decides what happens to the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's handler
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


STOP_GRACE_S = 30.0
"""How long a failed build waits for the patients being decoded before killing their workers."""


@contextmanager
def worker_pool(workers: int, grace_s: float = STOP_GRACE_S) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process and stop early if the block fails.

    Leaving the block normally waits for the workers; leaving it by an exception (a bad
    patient, Ctrl-C, SIGTERM under :func:`sigterm_as_exit`) cancels the patients not started
    and gives those being decoded ``grace_s`` seconds to finish; only a worker still busy then
    is killed. Killing at once is not safe: a worker killed while it sends its result leaves
    the pool's reader thread waiting forever for the rest of that message, and the shutdown
    with it (seen under load: one SIGTERM in a dozen hung). Submit the work inside
    :func:`signals_deferred`: the first submit starts the workers and the pool's thread, and
    an exception raised half-way through that leaves a pool that cannot be shut down.
    """
    # fork where the platform has it: spawn would re-import the entry point (torch,
    # Lightning) in every worker. Workers use numpy and nibabel only, never torch.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    except BaseException:
        # The pool offers no public handle on its processes and thread before Python 3.14, and
        # shutdown() drops its own; they are taken first.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)  # each worker exits after its patient
        _kill_late(processes, grace_s)
        if manager is not None:
            manager.join()
        raise
    pool.shutdown(wait=True)


def _kill_late(processes: list, grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``processes`` to exit; kill those still running."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends, then act on the first one caught.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so a
    signal mask cannot hold them back; recording handlers can.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _DEFERRED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if caught:
            signal.raise_signal(caught[0])


def _exit_on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` so ``finally``/``except`` cleanup runs.

    Only the main thread can receive Python signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
