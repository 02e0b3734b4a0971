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
    prefect_server.SubprocessASGIServer().start()


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
