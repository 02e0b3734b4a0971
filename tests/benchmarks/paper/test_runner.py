"""benchmarks.paper.runner's scheduler: dependent runs, failures, and the checks shared by every benchmark."""
from __future__ import annotations

import math
import operator
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.paper.runner import (
    Failure,
    Task,
    check_jobs,
    command_line,
    describe_failures,
    paper_models,
    parse_noise,
    report_failures,
    run_all,
)

# Builtins, so that a spawned worker can import them without this test module.
CHAIN = [
    Task("root", math.sqrt, (16.0,)),
    Task("bad", math.sqrt, (-1.0,)),
    Task("plus one", operator.add, (1.0,), depends_on=("root",)),  # 1 + 4
    Task("product", operator.mul, (), depends_on=("root", "plus one")),  # 4 * 5
    Task("after bad", operator.neg, (), depends_on=("bad",)),
    Task("also bad", math.log, (0.0,)),
    Task("after after bad", operator.add, (), depends_on=("root", "after bad", "also bad")),
]
EXPECTED_FAILURES = [
    Failure("bad", "ValueError: math domain error"),
    Failure("after bad", "not run, because bad failed"),
    Failure("after after bad", "not run, because bad failed"),  # once, though it needs "also bad" too
    Failure("also bad", "ValueError: math domain error"),
]

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("jobs", [1, 2])
def test_dependants_get_their_inputs_results_and_are_not_run_after_a_failure(jobs):
    results, failures = run_all(CHAIN, jobs)
    assert results == {"root": 4.0, "plus one": 5.0, "product": 20.0}
    assert {f.label for f in failures} == {f.label for f in EXPECTED_FAILURES} and len(failures) == len(EXPECTED_FAILURES)
    if jobs == 1:  # in a pool, either failed input may be the one named
        assert failures == EXPECTED_FAILURES


def test_a_dependant_runs_as_soon_as_its_inputs_are_done(capsys):
    order: list[str] = []

    def record(label: str, *inputs: str) -> str:
        order.append(label)
        return label

    tasks = [Task(name, record, (name,)) for name in ("source", "other", "another")]
    tasks.append(Task("dependant", record, ("dependant",), depends_on=("source",)))
    _, failures = run_all(tasks, 1, describe=lambda label: f"ran {label}")
    assert order == ["source", "dependant", "other", "another"] and failures == []
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[1/4] source: ran source", "[2/4] dependant: ran dependant", "[3/4] other: ran other", "[4/4] another: ran another"]


def test_badly_formed_task_lists_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="not listed before it"):
        run_all([Task("late", operator.neg, (), depends_on=("early",)), Task("early", abs, (-1,))])
    with pytest.raises(ValueError, match="not listed before it"):
        run_all([Task("self", operator.neg, (), depends_on=("self",))])
    with pytest.raises(ValueError, match="lists a dependency twice"):
        run_all([Task("early", abs, (-1,)), Task("late", operator.add, (), depends_on=("early", "early"))])
    with pytest.raises(ValueError, match="used twice"):
        run_all([Task("same", abs, (1,)), Task("same", abs, (2,))])
    with pytest.raises(ValueError, match="--jobs 2"):
        check_jobs(0)


def test_failures_are_summarised_with_the_exit_status(capsys):
    assert report_failures([]) == 0 and describe_failures([]) == ""
    assert report_failures(EXPECTED_FAILURES) == 1
    err = capsys.readouterr().err
    assert err.startswith("4 run(s) failed")
    assert "FAILED after bad: not run, because bad failed" in err


def test_noise_bounds_and_command_and_models():
    assert parse_noise(["log_a=-15"]) == {"log_a": -15.0}
    with pytest.raises(ValueError, match="--noise: need log_a < log_b"):
        parse_noise(["log_a=1"])
    assert command_line("benchmarks.paper.p1_sweep", ["--p1", "4", "--out", "a b"]) == "python -m benchmarks.paper.p1_sweep --p1 4 --out 'a b'"
    assert paper_models("fashion_mnist") == ["lenet5", "mlp"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from Linux /proc")
def test_workers_exit_when_the_benchmark_is_killed(tmp_path):
    """A killed benchmark must not leave its pool training on: the workers notice and exit."""
    script = tmp_path / "pool.py"
    script.write_text(
        "import time\nfrom benchmarks.paper import runner\n"
        "if __name__ == '__main__':\n"
        "    runner.run_all([runner.Task('a', time.sleep, (120,)), runner.Task('b', time.sleep, (120,))], jobs=2)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO)
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        # The resource tracker is a child too; pool workers are the ones running spawn_main.
        workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, "the pool never started its two workers"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
