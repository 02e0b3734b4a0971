"""Nothing of a `bmrs` process outlives it, however it ends.

Prefect's ephemeral mode runs its API server as a uvicorn subprocess (``SubprocessASGIServer``)
and stops it from an ``atexit`` hook, which never runs when the process is killed: SIGKILL from the
OOM killer, or SIGTERM (a scheduler's end of job) under Python's default handling. The server then
keeps running, re-parented to PID 1, still listening. Two things close that:

- ``start_bound_server`` starts that server from the main thread with the kernel asked to kill it
  when this process dies (Linux ``PR_SET_PDEATHSIG``, set in the child before it executes uvicorn;
  the signal follows the thread that started the child, hence the main thread);
- ``sigterm_raises`` turns SIGTERM into a ``Terminated`` exception that unwinds like Ctrl-C, so
  status.json records the failure and the ``atexit`` hook stops the server as at any other exit.

``start_bound_server`` also lets one process at a time start a server on a ``PREFECT_HOME``: each
start migrates the shared SQLite database, and two at once collide (two `bmrs run` at one instant).

A sweep's local Dask workers end with `bmrs` by Dask's own guard (``pipeline.sweep``).

`bmrs serve` binds the same way the ``prefect server start`` it runs (``die_with_this_process``) and
each scheduled run's process (``die_with_parent``, called by the run itself).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Terminated(BaseException):
    """SIGTERM arrived: a BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way up swallows it."""


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: in the child, ask for SIGKILL when the thread that forked it exits."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return  # not armed: the child then lives as it does without this module
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


class _SubprocessBoundToUs:
    """``subprocess`` as Prefect's server module sees it: a child it starts from the main thread
    dies with this process. Everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802  (subprocess's own name)
        if threading.current_thread() is threading.main_thread() and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent(os.getpid())
        return subprocess.Popen(*args, **kwargs)


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child that ``subprocess.Popen`` starts from the main thread: the kernel
    kills the child when this process dies, ``kill -9`` included (Linux; elsewhere None: no change)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    return _die_with_parent(os.getpid())


def die_with_parent(parent: int) -> None:
    """Called early in a child: the kernel kills this process when ``parent`` (the process, pid,
    that started it) dies. A no-op off Linux, or when ``parent`` is not the process that started
    this one (nothing to bind to)."""
    if sys.platform.startswith("linux") and os.getppid() == parent:
        _die_with_parent(parent)()


def start_bound_server() -> None:
    """Start Prefect's ephemeral API server now, bound to this process (on Linux); a no-op when it
    is already running, or when ``PREFECT_API_URL`` names a server of the user's own."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api import server as prefect_server

    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        prefect_server.subprocess = _SubprocessBoundToUs()
    with _one_start_at_a_time():
        prefect_server.SubprocessASGIServer().start()


SERVER_START_LOCK = ".bmrs-server-start.lock"
SERVER_START_WAIT_S = 300.0


@contextlib.contextmanager
def _one_start_at_a_time() -> Iterator[None]:
    """Hold ``PREFECT_HOME/.bmrs-server-start.lock`` while an ephemeral server starts. Every `bmrs`
    process starts its own server on the one SQLite database of ``PREFECT_HOME``, and a server
    migrates that database as it starts: two starting at once (two `bmrs run` at the same instant on
    a new home) both add the same column and one fails ("duplicate column name"). Once migrated,
    servers share the database as SQLite allows. The operating system drops the lock when its
    holder dies; after ``SERVER_START_WAIT_S`` this process starts anyway."""
    import fcntl
    import time
    from pathlib import Path

    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
        handle = open(home / SERVER_START_LOCK, "a")  # noqa: SIM115  (closed below, which unlocks)
    except OSError:  # a home this process cannot write: Prefect itself says so when it starts
        yield
        return
    try:
        deadline = time.monotonic() + SERVER_START_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        yield
    finally:
        handle.close()


def _raise_terminated(signum: int, frame: object) -> None:
    # A second SIGTERM while the first unwinds ends the process at once, as the default would.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
