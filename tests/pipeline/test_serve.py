"""`bmrs serve`: bad input refused in one line with exit 2 before anything starts, and one real
Prefect server serving a tiny flow on a 10 s interval until its first scheduled run's report is on
disk; then SIGTERM (or kill -9) leaves no process of its own behind.

The two tests at the end start `prefect server start` for real (about 20 s on a fresh database, 10 s
on the one the first leaves) and train a 24-wide MLP on synthetic blobs for one epoch: together
about 95 s on 2 busy cores. Everything before them runs in this process in seconds.
"""
from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from pipeline_data import write_blobs
from prefect_env import prefect_environment
from test_schedule_config import isolate_prefect_environment

from pipeline.cli import main
from pipeline.server import ServerError, free_port, prefect_server

TINY_FLOW = {
    "data": {"dataset": "npz", "root": "blobs.npz"},
    "model": {"name": "mlp", "hidden_width": 24},
    "train": {"epochs": 1, "finetune_epochs": 0, "lr": 0.01, "criterion": {"name": "l2", "ratio": 0.3}},
    "latency": {"repeats": 3, "warmup": 1, "batch_sizes": [1]},
    "energy": {"enabled": False},  # codecarbon's start-up is not what is tested here
}


def workspace(folder: Path, *, schedule: dict | None = None, data_root: str = "blobs.npz") -> Path:
    """``folder/flows.yaml`` with a scheduled flow ``tiny`` (every 10 s) and an unscheduled one."""
    folder.mkdir(parents=True, exist_ok=True)
    write_blobs(folder / "blobs.npz")
    tiny = {**TINY_FLOW, "data": {"dataset": "npz", "root": data_root}, "schedule": schedule or {"interval": 10}}
    path = folder / "flows.yaml"
    path.write_text(yaml.safe_dump({"flows": {"tiny": tiny, "unscheduled": TINY_FLOW}}))
    return path


def our_processes() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture
def serve_here(tmp_path, monkeypatch, capsys):
    """``bmrs serve ARGS`` in this process, in ``tmp_path``: (exit code, stderr lines); it must start nothing."""
    isolate_prefect_environment(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = our_processes()

    def serve(*args: str) -> tuple[int, list[str]]:
        code = main(["serve", *args])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert our_processes() <= before, "bmrs serve left a process running after refusing"
        return code, lines

    return serve


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--flow", "unscheduled"], "flow 'unscheduled' in flows.yaml has no schedule; add schedule: {cron: '0 2 * * *'"),
        (["--flow", "nope"], "unknown flow 'nope' in flows.yaml; choose one of ['tiny', 'unscheduled']"),
        (["--flow", "tiny", "--limit", "0"], "--limit 0: at least one run must be allowed at a time"),
        (["--port", "70000"], "--port 70000 is not a TCP port; give one from 1 to 65535"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(serve_here, tmp_path, args, fragment):
    workspace(tmp_path)
    code, lines = serve_here("flows.yaml", *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bmrs: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_a_file_without_scheduled_flows(serve_here, tmp_path):
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump({"flows": {"unscheduled": TINY_FLOW}}))
    code, lines = serve_here("flows.yaml")
    assert code == 2 and lines == [
        "bmrs: error: no flow in flows.yaml has a schedule; add schedule: {cron: '0 2 * * *', timezone: "
        "Europe/Copenhagen} or schedule: {interval: 1h} to the flows to serve"
    ]


def test_what_a_scheduled_run_would_refuse_is_refused_before_serving(serve_here, tmp_path):
    workspace(tmp_path, data_root="missing.npz")
    code, lines = serve_here("flows.yaml")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bmrs: error: flow 'tiny': ") and "missing.npz" in lines[0]


def test_a_port_in_use_is_refused(serve_here, tmp_path):
    workspace(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = serve_here("flows.yaml", "--port", str(port))
    assert code == 2 and lines == [
        f"bmrs: error: port {port} on 127.0.0.1 is in use (Address already in use); choose another with --port, "
        "or leave --port out for a free one"
    ]
    assert not (tmp_path / "runs" / ".prefect-server").exists()


class QuietNotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_a_prefect_api_url_that_is_not_prefect_or_comes_with_a_port(serve_here, tmp_path, monkeypatch):
    workspace(tmp_path)
    answering = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietNotFound)
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{answering.server_address[1]}/api"
        monkeypatch.setenv("PREFECT_API_URL", url)
        code, lines = serve_here("flows.yaml")
        assert code == 2 and len(lines) == 1 and f"PREFECT_API_URL={url} does not answer ({url}/health answered HTTP 404)" in lines[0]
        code, lines = serve_here("flows.yaml", "--port", "4200")
        assert code == 2 and len(lines) == 1 and "drop --port or unset PREFECT_API_URL" in lines[0]
    finally:
        answering.shutdown()
        answering.server_close()


def test_an_unreachable_prefect_api_url_from_the_command_line(tmp_path):
    """The real command: one line on stderr, exit 2, no traceback, nothing started."""
    workspace(tmp_path)
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**prefect_environment(tmp_path), "PREFECT_API_URL": url}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "flows.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"bmrs: error: PREFECT_API_URL={url} does not answer ({url}/health: Connection refused); start that server, "
        "or unset PREFECT_API_URL and bmrs serve starts one of its own"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_server_that_does_not_answer_in_time_is_stopped(tmp_path):
    before = our_processes()
    with pytest.raises(ServerError, match=r"did not answer http://127\.0\.0\.1:\d+/api/health within 0\.2 s; see .*server\.log"):
        with prefect_server(tmp_path / "home", startup_timeout_s=0.2):
            pytest.fail("the server cannot have answered yet")
    assert our_processes() <= before


# --- a real server: one scheduled run, then SIGTERM; then kill -9 -------------------------------------


class Serve:
    """`bmrs serve flows.yaml` in ``cwd``, in a session of its own; every process it starts is
    remembered (the server, each scheduled run) so that the test can tell none outlives it."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.started = cwd, time.monotonic()
        self.out, self.err = open(cwd / "serve.out", "w"), open(cwd / "serve.err", "w")  # noqa: SIM115
        command = [sys.executable, "-m", "pipeline.cli", "serve", "flows.yaml"]
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.out, stderr=self.err, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def watch(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_for(self, condition, what: str, timeout_s: float = 300) -> float:
        """Seconds from the start of `bmrs serve` until ``condition()``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.watch()
            if self.process.poll() is not None:
                pytest.fail(f"bmrs serve ended (exit {self.process.returncode}) before {what}: {self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s:.0f} s: {self.output()}")
            time.sleep(0.2)
        self.watch()
        return time.monotonic() - self.started

    def output(self) -> str:
        self.out.flush()
        self.err.flush()
        return (self.cwd / "serve.out").read_text() + (self.cwd / "serve.err").read_text()[-3000:]

    def left_running(self, grace_s: float = 10) -> list[str]:
        """What it started that still runs ``grace_s`` after it ended (a zombie has ended)."""
        deadline = time.monotonic() + grace_s
        while True:
            alive = [p for p in self.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not alive or time.monotonic() > deadline:
                return [" ".join(p.cmdline()[:6]) for p in alive]
            time.sleep(0.2)

    def started_a(self, fragment: str) -> bool:
        return any(fragment in " ".join(self._cmdline(p)) for p in self.seen.values())

    @staticmethod
    def _cmdline(process: psutil.Process) -> list[str]:
        try:
            return process.cmdline()
        except psutil.Error:
            return []

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for process in self.seen.values():  # a failed test must not leave the server behind either
            try:
                process.kill()
            except psutil.Error:
                pass
        self.out.close()
        self.err.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One workspace for both tests: the second reuses the server's database the first created."""
    cwd = tmp_path_factory.mktemp("serve")
    workspace(cwd)
    return cwd, prefect_environment(cwd)


def reports(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("runs/tiny/*/report.md"))


def test_scheduled_run_writes_its_report_then_sigterm_leaves_nothing_running(served):
    cwd, env = served
    serve = Serve(cwd, env)
    try:
        serving_s = serve.wait_for(lambda: "bmrs: serving flow 'tiny'" in serve.output(), "serving")
        first_run_s = serve.wait_for(lambda: list(cwd.glob("runs/tiny/*/config.json")), "scheduled run")
        report_s = serve.wait_for(lambda: reports(cwd), "report of the first scheduled run")
        print(f"\nbmrs serve: serving after {serving_s:.1f} s, first scheduled run started after {first_run_s:.1f} s, "
              f"its report.md on disk after {report_s:.1f} s")  # fmt: skip
        # The key line is printed once the run is over; report.md is written before its artifacts are published.
        serve.wait_for(lambda: "bmrs: l2 (ratio=0.3): " in serve.output(), "the run's key line")
        assert serve.started_a("prefect server start") and serve.started_a("prefect.engine")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=120) == 0, serve.output()
        assert serve.left_running() == []
        output = serve.output()
        assert "Traceback" not in output and "bmrs: the Prefect server is stopped" in output, output
    finally:
        serve.close()
    run_dir = reports(cwd)[0].parent  # exactly what `bmrs run` writes
    assert {"report.json", "report.md", "model.onnx", "dense.onnx", "config.json", "status.json"} <= {p.name for p in run_dir.iterdir()}
    assert '"completed"' in (run_dir / "status.json").read_text()
    assert f"bmrs: wrote {run_dir.relative_to(cwd)}/report.json" in output
    assert (cwd / "runs" / ".prefect-server" / "prefect.db").is_file()


def test_kill_9_of_bmrs_serve_takes_its_server_and_runs_with_it(served):
    cwd, env = served
    before = set(cwd.glob("runs/tiny/*"))
    serve = Serve(cwd, env)
    try:
        serve.wait_for(lambda: "bmrs: serving flow 'tiny'" in serve.output(), "serving")
        # A run directory exists once the run's own code runs, which binds its process to bmrs serve.
        serve.wait_for(lambda: set(cwd.glob("runs/tiny/*")) - before, "scheduled run")
        assert serve.started_a("prefect server start") and serve.started_a("prefect.engine")
        os.kill(serve.process.pid, signal.SIGKILL)  # bmrs serve alone: not its process group
        serve.process.wait(timeout=30)
        assert serve.left_running() == []
    finally:
        serve.close()
