"""benchmarks.paper.runner: the scheduler (dependent runs, failures) and how every benchmark builds its
runs from the paper flows of flows.yaml with --set overrides."""
from __future__ import annotations

import math
import operator
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.paper.runner import (
    FLOWS,
    PAPER_FLOWS,
    Failure,
    Task,
    check_jobs,
    command_line,
    criterion_overrides,
    describe_failures,
    paper_config,
    paper_models,
    report_failures,
    run_all,
    user_overrides,
    yaml_value,
)
from bmrs.criteria import BMRSLogUniform, IncomingWeightNorm
from pipeline.config import ConfigError, load_flow

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


def test_command_and_models():
    assert command_line("benchmarks.paper.p1_sweep", ["--p1", "4", "--out", "a b"]) == "python -m benchmarks.paper.p1_sweep --p1 4 --out 'a b'"
    assert paper_models("fashion_mnist") == ["lenet5", "mlp"] and paper_models("mnist") == ["lenet5", "mlp"]


# Paper appendix C: (batch size, lr, hidden width x depth) per (dataset, model); flows.yaml holds them.
APPENDIX_C = {
    ("fashion_mnist", "lenet5"): (32, 1.4e-3, None), ("fashion_mnist", "mlp"): (128, 1.5e-3, (150, 1)),
    ("mnist", "lenet5"): (128, 1.4e-3, None), ("mnist", "mlp"): (128, 8.5e-4, (100, 7)), ("cifar10", "mlp"): (32, 6.8e-4, (150, 5)),
}  # fmt: skip


@pytest.mark.parametrize(("dataset", "model"), list(PAPER_FLOWS))
def test_every_paper_flow_holds_appendix_c_and_is_what_bmrs_run_loads(dataset, model):
    config = paper_config(FLOWS, model, dataset, ["train.seed=4"])
    batch_size, lr, mlp = APPENDIX_C[(dataset, model)]
    assert (config.data.dataset, config.model.name, config.train.batch_size, config.train.lr) == (dataset, model, batch_size, lr)
    assert (config.train.epochs, config.train.finetune_epochs) == (50, 10)
    if mlp is not None:
        assert config.model.options() == {"hidden_width": mlp[0], "hidden_layers": mlp[1]}
    assert config == load_flow(FLOWS, PAPER_FLOWS[(dataset, model)], ["train.seed=4"]), "the flow bmrs run --flow loads"


def test_criterion_overrides_are_the_one_place_a_criterion_is_written():
    assert criterion_overrides(None) == ["train.criterion=null"]
    flow = PAPER_FLOWS[("fashion_mnist", "mlp")]
    assert load_flow(FLOWS, flow, criterion_overrides(None)).train.criterion is None
    assert load_flow(FLOWS, flow, criterion_overrides("bmrs_u", {"p1": 4})).train.criterion == BMRSLogUniform(p1=4.0)
    ratios = {"1.noise": 0.6416666666666667, "features.2.noise": 0.0}
    assert load_flow(FLOWS, flow, criterion_overrides("l2", {"layer_ratios": ratios})).train.criterion == IncomingWeightNorm(layer_ratios=ratios)
    with pytest.raises(ValueError, match="without a criterion"):
        criterion_overrides(None, {"p1": 4})


@pytest.mark.parametrize("value", [8.0, 1e-06, 0.6416666666666667, None, True, "null", {"1.noise": 0.25}, [6, 10, 20, 20], {}])
def test_yaml_values_read_back_as_given(value):
    assert yaml.safe_load(yaml_value(value)) == value


def test_user_overrides_refuse_what_the_benchmark_sets_or_does_not_use():
    assert user_overrides(["train.lr=1e-3", "noise.start_on=[features]"], {"train.seed": "use --seeds"}) == [
        "train.lr=1e-3", "noise.start_on=[features]",
    ]  # fmt: skip
    for pair, message in [
        ("train.seed=3", "--set train.seed cannot be overridden here: use --seeds"),
        ("model.name=mlp", "--set model.name cannot be overridden here: the model is chosen with --model/--models"),
        ("data.dataset=mnist", "chosen with --dataset"),
        ("export.opset=17", "--set export.opset: benchmark runs use only the data, model, noise and train sections"),
        ("train={lr: 1}", "set one setting at a time"),
        ("lr", "expected key=value"),
    ]:
        with pytest.raises(ConfigError) as refused:
            user_overrides([pair], {"train.seed": "use --seeds"})
        assert message in str(refused.value)
    with pytest.raises(ConfigError, match="no paper flow for lenet5 on cifar10; choose one of: lenet5 on fashion_mnist"):
        paper_config(FLOWS, "lenet5", "cifar10", [])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from Linux /proc")
def test_workers_exit_when_the_benchmark_is_killed(tmp_path):
    """A killed benchmark must not leave its pool training on: the workers notice and exit."""
    script = tmp_path / "pool.py"
    # Each task marks that it started: by then its worker ran the pool's initializer (the parent
    # watch), however long the imports took on a loaded machine.
    script.write_text(
        "import pathlib, sys, time\nfrom benchmarks.paper import runner\n"
        "def work(marker):\n    pathlib.Path(marker).touch()\n    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        f"    runner.run_all([runner.Task(n, work, ({str(tmp_path)!r} + '/' + n,)) for n in 'ab'], jobs=2)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO)
    workers: list[int] = []
    deadline = time.monotonic() + 300
    while not (len(workers) == 2 and (tmp_path / "a").exists() and (tmp_path / "b").exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        # The resource tracker is a child too; pool workers are the ones running spawn_main.
        workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, "the pool never started its two workers"
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists(), "the workers never started their tasks"
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
