"""Sweeps: ``bmrs compare --workers N`` / ``--dask-address`` (``pipeline.sweep``, ``pipeline.sweep_flow``)
and ``--models``.

In this process, in seconds: bad input (one line, exit 2, nothing written, nothing left running,
Dask not even contacted twice), how a local cluster is sized, how an existing cluster's workers are
vetted, and ``--models`` laying out one comparison per model. Then one real sweep: ``l2`` over seeds 0 and 1 of an 8-wide MLP, run serially and, meanwhile, on a
local cluster of 2 workers: the Dask sweep is killed with ``kill -9`` once its runs have begun
(nothing of it may be left running), run again (it resumes and finishes), and must report what the serial comparison
reports, to the bit, training being deterministic at a fixed thread count (1 torch thread per run
in both); then run once more, when it starts no cluster and trains nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from compare_cases import FLOW, CountingDense, FakeExecute, Reports, run_compare, write_flows
from prefect_env import prefect_environment

from pipeline.server import free_port
from pipeline.sweep import ClusterChoice, SweepError, check_workers, plan_local

REPO = Path(__file__).resolve().parents[3]
EXACT = ("accuracy", "nll", "ece", "compression", "params", "flops", "onnx_bytes")  # what latency does not touch


@pytest.fixture
def flows(tmp_path):
    return write_flows(tmp_path)


@pytest.fixture
def reports(monkeypatch):
    stub = Reports()
    monkeypatch.setattr("pipeline.flow.comparison_report_flow", lambda dirs, out, title=None: stub(dirs, out, title=title))
    return stub


def our_processes() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--workers", "0"], "--workers 0: a local cluster needs at least 1 worker; give --workers 1 or more"),
        (["--dask-address", "scheduler"], "--dask-address 'scheduler' is not an address; give the scheduler's, e.g. tcp://"),
        (["--models", "mlp", "mlp"], "--models lists 'mlp' twice; list each model once"),
        (["--models", "mlp", "--set", "model.name=mlp"], "--models and --set model.name=... both choose the model"),
    ],
)
def test_bad_sweep_input_is_one_line_and_nothing_is_written(flows, reports, capsys, argv, fragment):
    execute = FakeExecute()
    assert run_compare(flows, ["--methods", "none", *argv], execute) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: ") and fragment in lines[0], lines
    assert execute.calls == [] and not (flows.parent / "runs").exists()


def test_an_unreachable_dask_address_is_one_line_exit_2_and_starts_nothing(flows, reports, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    before = our_processes()
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    execute = FakeExecute()
    assert run_compare(flows, ["--methods", "none", "--dask-address", address], execute) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"bmrs: error: --dask-address {address}: nothing answers there ("), lines
    assert "start one with `dask scheduler` and `dask worker" in lines[0]
    assert execute.calls == [] and not (flows.parent / "runs").exists()
    assert our_processes() <= before  # neither a Prefect server nor a Dask process was started


def test_a_local_cluster_never_has_more_workers_than_runs_or_cores():
    assert (plan_local(2, runs=4, cores=2).workers, plan_local(2, runs=4, cores=2).threads) == (2, 1)
    assert (plan_local(8, runs=3, cores=16).workers, plan_local(8, runs=3, cores=16).threads) == (3, 5)
    assert (plan_local(4, runs=10, cores=2).workers, plan_local(4, runs=10, cores=2).threads) == (2, 1)
    assert plan_local(1, runs=1, cores=2).threads == 2
    assert ClusterChoice.checked(workers=None, address="10.0.0.5:8786").address == "10.0.0.5:8786"


def test_an_existing_clusters_workers_must_share_code_files_and_the_prefect_api():
    from pipeline.cache import code_version

    def fact(**changes):
        return {"cores": 16, "code": code_version(), "host": "a", "missing": [], "api": None, **changes}

    threads = check_workers("tcp://s:8786", {"tcp://a:1": fact(), "tcp://a:2": fact(), "tcp://b:1": fact(host="b", cores=8)}, "http://s/api")
    assert threads == {"tcp://a:1": 8, "tcp://a:2": 8, "tcp://b:1": 8}  # a machine's cores shared by its worker processes
    refusals = {
        "runs other code (code version 0000": fact(code="0000"),
        "does not see /shared/runs; the runs directory and the data must be on one shared file system": fact(missing=["/shared/runs"]),
        "cannot reach the Prefect API http://s/api (refused); start `prefect server start --host 0.0.0.0`": fact(api="refused"),
    }
    for fragment, bad in refusals.items():
        with pytest.raises(SweepError, match=None) as raised:
            check_workers("tcp://s:8786", {"tcp://a:1": fact(), "tcp://b:1": bad}, "http://s/api")
        assert str(raised.value).startswith("--dask-address tcp://s:8786: worker tcp://b:1") and fragment in str(raised.value)


def test_workers_that_trim_malloc_are_used_with_a_note_naming_the_fix(capsys):
    from pipeline.cache import code_version

    fact = {"cores": 2, "code": code_version(), "host": "a", "missing": [], "api": None}
    assert check_workers("tcp://s:8786", {"tcp://a:1": {**fact, "malloc_trim": None}}, "http://s/api") == {"tcp://a:1": 2}
    assert capsys.readouterr().out == ""
    threads = check_workers("tcp://s:8786", {"tcp://a:1": {**fact, "malloc_trim": "65536"}, "tcp://a:2": fact}, "http://s/api")
    assert threads == {"tcp://a:1": 1, "tcp://a:2": 1}
    note = capsys.readouterr().out
    assert note.startswith("bmrs: note: 1 of 2 workers (tcp://a:1, ...) run with MALLOC_TRIM_THRESHOLD_=65536")
    assert "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null in their Dask config" in note


def test_a_local_clusters_workers_do_not_inherit_the_nannys_malloc_trim_threshold(monkeypatch):
    """Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 into its workers by default, which costs torch
    training about 3x (benchmarks.dask_worker_speed); the local cluster leaves it out, and this
    process's environment stays as it was."""
    from distributed import Client

    from pipeline.sweep import TRIM_VARIABLE, local_cluster

    monkeypatch.delenv(TRIM_VARIABLE, raising=False)
    with local_cluster(plan_local(1, runs=1, cores=1), "http://127.0.0.1:9/api") as cluster, Client(cluster.address) as client:
        seen = client.run(os.environ.get, TRIM_VARIABLE)
    assert list(seen.values()) == [None]
    assert TRIM_VARIABLE not in os.environ


FACTORIES = """
from torch import nn

def wide(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, num_classes))

def narrow(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, num_classes))
"""


def test_models_each_get_their_own_comparison_folder(tmp_path, reports, importable_module, capsys):
    flows = write_flows(tmp_path)
    tree = json.loads(flows.read_text())
    tree["flows"][FLOW]["model"] = {"name": "mlp"}  # no mlp-only settings: the models replace the name
    flows.write_text(json.dumps(tree))
    module = importable_module(FACTORIES, "sweep_models")
    execute = FakeExecute()
    models = [f"{module}:wide", f"{module}:narrow"]
    assert run_compare(flows, ["--methods", "none", "bmrs_n", "--seeds", "0", "--models", *models], execute, CountingDense()) == 0
    out = tmp_path / "runs" / FLOW / "compare"
    for model in models:
        folder = out / model.replace(":", "_")
        for label in ("none", "bmrs_n"):
            assert json.loads((folder / label / "seed0" / "config.json").read_text())["model"]["name"] == model
        assert json.loads((folder / "compare.json").read_text())["config"]["model"]["name"] == model
    assert [call["title"] for call in reports.calls] == [f"{FLOW} [{model}]: none, bmrs_n over seeds [0]" for model in models]
    assert len(execute.calls) == 4
    assert f"bmrs: [2/2] {module}_narrow bmrs_n seed 0 -> " in capsys.readouterr().out


# --- one real sweep: serial vs 2 local Dask workers, kill -9, resume, cached rerun ------------------------


def compare_command(flows: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "compare", str(flows), "--flow", FLOW, "--methods", "l2", "--seeds", "0", "1",
            "--no-progress", "--out", str(out), *extra]  # fmt: skip


def exact_figures(out: Path) -> dict:
    """What the comparison reports that timing cannot change: per method each exact metric's values."""
    report = json.loads((out / "report.json").read_text())
    return {group["label"]: {name: group["metrics"][name]["values"] for name in EXACT} for group in report["groups"]}


def wait_for(condition, process: subprocess.Popen, seen: dict[int, psutil.Process], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        try:
            for child in psutil.Process(process.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        assert process.poll() is None, f"the sweep ended (exit {process.returncode}) too early"
        assert time.monotonic() < deadline, "the sweep's runs did not begin in time"
        time.sleep(0.2)


def alive(seen: dict[int, psutil.Process], grace_s: float = 15) -> list[str]:
    deadline = time.monotonic() + grace_s
    while True:
        left = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return [" ".join(p.cmdline()[:4]) for p in left]
        time.sleep(0.2)


def test_a_dask_sweep_matches_the_serial_one_survives_kill_9_and_reruns_without_training(tmp_path):
    flows = write_flows(tmp_path)
    env = prefect_environment(tmp_path)
    env["OMP_NUM_THREADS"] = "1"  # the serial runs' torch threads: 1, as each Dask run's on 2 cores
    serial, swept = tmp_path / "serial", tmp_path / "swept"

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(compare_command(flows, out, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    # The serial comparison, meanwhile (1 torch thread: the two share the 2 cores as the workers do).
    serial_result: list[subprocess.CompletedProcess] = []
    serial_run = threading.Thread(target=lambda: serial_result.append(run(serial)))
    serial_run.start()

    # kill -9 of the sweep once its runs have begun on the workers: nothing of it stays.
    log = open(tmp_path / "killed.out", "w")  # noqa: SIM115
    process = subprocess.Popen(compare_command(flows, swept, "--workers", "2"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    try:
        wait_for(lambda: list(swept.glob("*/seed*/config.json")), process, seen)
        commands = [" ".join(p.cmdline()) for p in seen.values() if p.is_running()]
        assert sum("multiprocessing.spawn" in c for c in commands) >= 2, commands  # the two Dask workers
        assert any("uvicorn" in c and "prefect" in c for c in commands), commands  # the Prefect API server
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert alive(seen) == []
    finally:
        if process.poll() is None:
            process.kill()
        for leftover in seen.values():
            try:
                leftover.kill()
            except psutil.Error:
                pass
        log.close()
        serial_run.join()
    assert serial_result[0].returncode == 0, serial_result[0].stderr[-3000:]

    # Again: the begun runs are resumed, the others made; every figure as the serial comparison's.
    second = run(swept, "--workers", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "starting a local Dask cluster of 2 worker processes, one run at a time each, 1 torch thread per run" in second.stdout
    assert exact_figures(swept) == exact_figures(serial)
    for label in ("bmrs_n", "l2"):
        for seed in (0, 1):
            ours, theirs = (json.loads((out / label / f"seed{seed}" / "report.json").read_text()) for out in (swept, serial))
            assert ours["pruned"]["widths"] == theirs["pruned"]["widths"] and ours["pruned"]["accuracy"] == theirs["pruned"]["accuracy"]

    # A finished sweep again: nothing trained, no cluster, the report kept.
    third = run(swept, "--workers", "2")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "every run finished before; no cluster started" in third.stdout
    assert third.stdout.count("finished before, reusing") == 4
    assert "training once" not in third.stdout and " -> " not in third.stdout.split("no cluster started", 1)[1]
    assert "(unchanged: made from these very runs)" in third.stdout
