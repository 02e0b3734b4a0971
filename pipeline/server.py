"""A real Prefect API server for `bmrs serve`: ``prefect server start`` on 127.0.0.1, started, waited
for and stopped by this process.

Prefect's ephemeral server (what `bmrs run` uses) runs flows but never schedules them: its scheduler
service does not run. ``prefect_server`` starts the real one with its home (SQLite database, log)
in a folder of the runs directory, on a free port unless one is given, and waits until
``/api/health`` answers. It stops the server when the block ends however it ends (an error,
Ctrl-C, SIGTERM), and the kernel kills it if this process is killed (``kill -9``, the OOM killer):
``pipeline.lifetime.die_with_this_process``. It runs in a session of its own, so a Ctrl-C in the
terminal reaches `bmrs serve`, which stops its runs first and the server last.

Nothing here imports Prefect; every failure is a ``ServerError`` of one line naming the fix.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.lifetime import die_with_this_process

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0  # a first start creates the database; on 2 busy cores that took 20 s
STOP_GRACE_S = 10.0  # uvicorn's graceful shutdown, then SIGKILL
LOG_NAME = "server.log"


class ServerError(RuntimeError):
    """The Prefect server cannot be used: a port in use, a server that does not answer or start."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(port: int, host: str = HOST) -> None:
    if not 1 <= port <= 65535:
        raise ServerError(f"--port {port} is not a TCP port; give one from 1 to 65535, or leave --port out for a free one")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As `prefect server start` checks: a port left in TIME_WAIT is free, one being listened on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(
                f"port {port} on {host} is in use ({error.strerror}); choose another with --port, or leave --port out for a free one"
            ) from None


def health_problem(api_url: str, timeout_s: float = 5.0) -> str | None:
    """Why the Prefect API at ``api_url`` (``http://host:port/api``) does not answer its health check, or None."""
    url = api_url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310  (a URL the user set)
            body = response.read(64)
    except urllib.error.HTTPError as error:
        return f"{url} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: not a URL at all
        reason = getattr(error, "reason", error)
        return f"{url}: {getattr(reason, 'strerror', None) or reason}"
    try:
        healthy = json.loads(body) is True
    except ValueError:
        healthy = False
    return None if healthy else f"{url} answered {body[:40]!r}, not Prefect's health check"


def check_answers(api_url: str) -> None:
    """Refuse a ``PREFECT_API_URL`` whose server does not answer."""
    problem = health_problem(api_url)
    if problem is not None:
        raise ServerError(
            f"PREFECT_API_URL={api_url} does not answer ({problem}); start that server, or unset "
            "PREFECT_API_URL and bmrs serve starts one of its own"
        )


@contextlib.contextmanager
def prefect_server(home: Path, port: int | None = None, *, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """Run ``prefect server start`` with ``PREFECT_HOME=home`` on 127.0.0.1 (``port``, or a free one)
    for the block, which gets its API URL (``http://127.0.0.1:PORT/api``). Its output goes to
    ``home/server.log``. The server is stopped when the block ends, and on every error on the way in."""
    if port is None:
        port = free_port()
    else:
        check_port_free(port)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / LOG_NAME
    api_url = f"http://{HOST}:{port}/api"
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(home.resolve()), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")  # not a line per request of the runner's polling
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_this_process(),
        )  # fmt: skip
    try:
        _wait_healthy(process, api_url, log_path, startup_timeout_s)
        yield api_url
    finally:
        _stop(process)


def _wait_healthy(process: subprocess.Popen, api_url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while health_problem(api_url, timeout_s=2.0) is not None:
        if process.poll() is not None:
            raise ServerError(
                f"prefect server start ended with exit code {process.returncode} before answering "
                f"({_last_line(log_path)}); see {log_path}"
            )
        if time.monotonic() > deadline:
            raise ServerError(
                f"the Prefect server started for bmrs serve did not answer {api_url}/health within {timeout_s:g} s; "
                f"see {log_path}, or start one yourself and set PREFECT_API_URL"
            )
        time.sleep(0.25)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE_S``; a second Ctrl-C or SIGTERM meanwhile does not
    cut this short, or the server would be left running."""
    if process.poll() is not None:
        return
    in_main = threading.current_thread() is threading.main_thread()
    previous = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM)] if in_main else []
    try:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    finally:
        for signum, handler in previous:
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(signum, handler)


def _last_line(log_path: Path) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "nothing logged"
