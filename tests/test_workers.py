"""Build workers: stopped when the build fails (killed if stuck), signals held while a pool starts."""

from __future__ import annotations

import os
import signal

import pytest

from gliograde.data.caching.workers import signals_deferred, sigterm_as_exit, worker_pool


def _wait_on(fd: int) -> bytes:
    return os.read(fd, 1)  # blocks: nothing is ever written


def test_a_failing_block_kills_workers_still_busy_after_the_grace():
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(RuntimeError, match="a bad patient"):
            with worker_pool(2, grace_s=0.5) as pool:
                pids = {pool.submit(os.getpid).result(timeout=60) for _ in range(4)}
                busy = [pool.submit(_wait_on, read_end) for _ in range(2)]
                raise RuntimeError("a bad patient")
        assert all(future.done() for future in busy)  # never answered: the workers were killed
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone and reaped
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs signal.raise_signal")
def test_sigterm_is_held_until_a_pool_has_started_then_exits_cleanly():
    before = signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(SystemExit) as exit_info:
        with sigterm_as_exit():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("after the signal")
            reached.append("after the block")
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) == before


def _slow_square(value: int) -> int:
    import time

    time.sleep(0.3)
    return value * value


def test_a_failing_block_lets_running_patients_finish_and_cancels_the_rest():
    with pytest.raises(RuntimeError, match="a bad patient"):
        with worker_pool(2) as pool:
            futures = [pool.submit(_slow_square, i) for i in range(12)]
            futures[0].result(timeout=60)
            raise RuntimeError("a bad patient")
    finished = [f for f in futures if not f.cancelled()]
    assert all(f.done() and f.exception() is None for f in finished)  # none killed mid-way
    assert any(f.cancelled() for f in futures)  # the queued ones were never started
