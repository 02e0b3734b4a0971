"""Command-line plumbing shared by the training benchmarks (table 1, the p1 sweep, rank correlations,
networks trained from scratch).

What every one of them needs the same way:

* ``paper_config``: one run's ``FlowConfig``, loaded as ``bmrs run`` loads it: the paper flow of
  flows.yaml for the (dataset, model) (``PAPER_FLOWS``; the paper's budgets, appendix C, are written
  there and nowhere else) with ``--set section.key=value`` overrides on top: the user's
  (``user_overrides``, refused where the benchmark sets the key itself), then what the benchmark
  varies (epochs, seed, and the criterion, always through ``criterion_overrides``).
* ``add_config_arguments`` / ``add_run_arguments``: ``--flows`` and the repeatable ``--set``, and
  the options the one-model benchmarks share; ``bad_input``: one error line and exit status 2, as
  ``bmrs run`` answers bad input.
* ``check_jobs`` and ``command_line``: the parallelism and the command that reproduces the
  invocation, as its results record it. Seeds are checked by ``pipeline.seeds.check_seeds``, the
  check ``bmrs run --seeds`` makes.
* ``run_all``: many runs, one after another or in a pool of worker processes. A run may depend on
  others and is then given their results; one failed run is reported at the end instead of taking
  the finished ones down with it, and the runs that depend on it are reported as not run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import enum
import json
import math
import multiprocessing
import os
import shlex
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from benchmarks.paper.experiment import load_data
from bmrs.nn.noise import LogNormalNoise
from pipeline.config import ConfigError, FlowConfig, load_flow, parse_overrides

FLOWS = Path(__file__).resolve().parents[2] / "flows.yaml"
# The flow holding the paper's budget (appendix C) for each (dataset, model) it trains; the order is
# that of the default --models.
PAPER_FLOWS: dict[tuple[str, str], str] = {
    ("fashion_mnist", "lenet5"): "lenet5_fmnist_paper",
    ("fashion_mnist", "mlp"): "mlp_fmnist_paper",
    ("mnist", "lenet5"): "lenet5_mnist_paper",
    ("mnist", "mlp"): "mlp_mnist_paper",
    ("cifar10", "mlp"): "mlp_cifar10_paper",
}
# A benchmark run is data, a model with or without noise, and training; the other sections of a
# flow (export, latency, checks, ...) belong to `bmrs run`, and setting them here would do nothing.
RUN_SECTIONS = ("data", "model", "noise", "train")
# Chosen by every benchmark's own flags: a --set would contradict them.
CHOSEN_BY_FLAGS = {
    "model.name": "the model is chosen with --model/--models",
    "data.dataset": "the dataset is chosen with --dataset",
    "train.progress": "benchmarks print one line per finished run instead of progress bars",
}
EXIT_BAD_INPUT = 2  # as bmrs run


def paper_flow(dataset: str, model: str) -> str:
    if (dataset, model) not in PAPER_FLOWS:
        known = ", ".join(f"{m} on {d}" for d, m in PAPER_FLOWS)
        raise ConfigError(f"no paper flow for {model} on {dataset}; choose one of: {known}")
    return PAPER_FLOWS[(dataset, model)]


def paper_models(dataset: str) -> list[str]:
    """The models the paper trains on ``dataset``, in ``PAPER_FLOWS`` order."""
    return [model for known, model in PAPER_FLOWS if known == dataset]


def paper_config(flows: str | Path, model: str, dataset: str, overrides: Sequence[str]) -> FlowConfig:
    """``model`` on ``dataset`` as the paper trains it, with ``overrides`` (``--set`` strings)
    applied by ``load_flow``, exactly as ``bmrs run flows.yaml --flow <paper flow> --set ...``."""
    config = load_flow(flows, paper_flow(dataset, model), list(overrides))
    if (config.data.dataset, config.model.name) != (dataset, model):
        raise ConfigError(
            f"{config.name} in {flows} trains {config.model.name} on {config.data.dataset}, not {model} on {dataset}; "
            "restore the flow, or run that pair with its own --model/--dataset"
        )
    try:  # the truncation is checked where a noise layer checks it, before hours of other runs
        LogNormalNoise(1, **config.noise.posterior_options())
    except ValueError as error:
        raise ConfigError(f"{config.name}.noise: {error}") from None
    return config


def criterion_overrides(name: str | None, settings: Mapping[str, Any] | None = None) -> list[str]:
    """The ``--set`` strings that give a run the criterion ``name`` with ``settings`` (None: train
    without pruning). Every benchmark chooses its criterion here, so the syntax lives in one place."""
    if name is None:
        if settings:
            raise ValueError(f"criterion settings {dict(settings)} are given without a criterion; name one")
        return ["train.criterion=null"]
    return [f"train.criterion={yaml_value({'name': name, **dict(settings or {})})}"]


def yaml_value(value: Any) -> str:
    """``value`` as a ``--set`` value that reads back as ``value`` (modes as their values)."""
    if isinstance(value, enum.Enum):
        value = value.value
    text = yaml.safe_dump(json.loads(json.dumps(value, allow_nan=False)), default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("...\n").strip()  # a plain scalar is written as a document with an end marker


def user_overrides(pairs: Sequence[str], fixed: Mapping[str, str]) -> list[str]:
    """The user's ``--set`` pairs, checked before any run is built: ``ConfigError`` for a malformed
    pair, a setting outside the sections a run uses, or one the benchmark sets itself (``fixed``:
    a dotted setting or a whole section -> the reason, which the refusal names)."""
    taken = {**CHOSEN_BY_FLAGS, **fixed}
    for key, _ in parse_overrides(list(pairs)):
        section, dot, _rest = key.partition(".")
        if not dot:  # a whole section would replace the paper flow's, budget included
            raise ConfigError(f"--set {key}={{...}} replaces a whole section; set one setting at a time, e.g. --set train.lr=1e-3")
        for setting, reason in taken.items():
            if key == setting or key.startswith(f"{setting}."):
                raise ConfigError(f"--set {key} cannot be overridden here: {reason}")
        if section not in RUN_SECTIONS:
            sections = f"{', '.join(RUN_SECTIONS[:-1])} and {RUN_SECTIONS[-1]}"
            raise ConfigError(f"--set {key}: benchmark runs use only the {sections} sections of a flow")
    return list(pairs)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flows", type=Path, default=FLOWS, help="the flows file holding the paper flows (default: the repository's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting of every run, as bmrs run --set does, e.g. --set train.lr=1e-3")  # fmt: skip


def add_run_arguments(parser: argparse.ArgumentParser, *, default_out: str, default_seeds: Sequence[int]) -> None:
    """The options the one-model benchmarks (p1 sweep, rank correlations, from scratch) share."""
    parser.add_argument("--model", default="lenet5", choices=sorted({m for _, m in PAPER_FLOWS}))
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted({d for d, _ in PAPER_FLOWS}))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (paper: 50)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one torch thread each")
    parser.add_argument("--out", default=default_out)
    add_config_arguments(parser)


def bad_input(prog: str, error: BaseException | str) -> NoReturn:
    """One line naming what is wrong, and exit status 2, as ``bmrs run`` answers bad input."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def checked_configs(prog: str, run_configs: Callable[[argparse.Namespace], Mapping[Any, FlowConfig]],
                    args: argparse.Namespace) -> Mapping[Any, FlowConfig]:
    """``run_configs(args)``, and the first run's data loaded once, so that a bad ``--set`` or a
    missing dataset ends as one line and exit 2 here, not once per run."""
    try:
        configs = run_configs(args)
        load_data(next(iter(configs.values())).data)
    except (ValueError, TypeError) as error:  # ConfigError among them: a bad --set, as bmrs run reports it
        bad_input(prog, error)
    return configs


def check_jobs(jobs: int) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (runs in parallel), got {jobs!r}; pass e.g. --jobs 2")
    return jobs


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run of benchmark ``module``, as its results record it."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


@dataclass(frozen=True)
class Task:
    """One run: ``function(*args, *results of depends_on)``. A task may depend only on tasks listed
    before it; it starts once they have all finished, and is not run when one of them failed."""

    label: str
    function: Callable[..., Any]  # module-level, so that a worker process can import it
    args: tuple[Any, ...] = ()
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    label: str
    error: str  # "ExceptionType: message", or "not run, because <label> failed"


def run_all(
    tasks: Sequence[Task], jobs: int = 1, *, describe: Callable[[Any], str] | None = None
) -> tuple[dict[str, Any], list[Failure]]:
    """Every task's result by label, and the tasks that raised or were not run. ``jobs == 1`` runs
    them here, one after another; more runs them in that many worker processes of one torch thread
    each (runs of one thread each scale with cores, while torch's own threads barely help models
    this small). Each finished run prints a progress line, ``describe(result)`` when given."""
    check_jobs(jobs)
    dependants = _dependants(tasks)
    by_label = {task.label: task for task in tasks}
    waiting = {task.label: set(task.depends_on) for task in tasks}
    ready = deque(task for task in tasks if not task.depends_on)
    results: dict[str, Any] = {}
    failures: list[Failure] = []
    given_up: set[str] = set()
    started = time.perf_counter()

    def progress(label: str, status: str) -> None:
        print(f"[{len(results) + len(failures)}/{len(tasks)}] {label}: {status}", flush=True)

    def failed(label: str, error: str) -> None:
        failures.append(Failure(label, error))
        progress(label, f"FAILED ({error})")
        for later in _downstream(label, dependants):
            if later not in given_up:  # a run that needs two failed runs is reported once
                given_up.add(later)
                failures.append(Failure(later, f"not run, because {label} failed"))
                progress(later, failures[-1].error)

    def finished(task: Task, outcome: Callable[[], Any]) -> None:
        try:
            results[task.label] = outcome()
        except Exception as error:  # noqa: BLE001  (one bad run must not lose the others; reported at the end)
            traceback.print_exc(file=sys.stderr)
            failed(task.label, _one_line(error))
            return
        progress(task.label, describe(results[task.label]) if describe else f"done ({time.perf_counter() - started:.0f} s)")
        for later in dependants[task.label]:
            waiting[later].discard(task.label)
        # A run whose inputs just finished goes next, ahead of the independent runs not yet started.
        ready.extendleft(reversed([by_label[later] for later in dependants[task.label] if not waiting[later]]))

    def arguments(task: Task) -> tuple[Any, ...]:
        return (*task.args, *(results[label] for label in task.depends_on))

    if jobs == 1 or len(tasks) <= 1:
        executor: concurrent.futures.Executor = _InlineExecutor()
    else:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-use
        executor = concurrent.futures.ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_worker_setup, initargs=(os.getpid(),))
    pending: dict[concurrent.futures.Future, Task] = {}
    with executor:
        while ready or pending:
            # Only ``jobs`` runs are handed out at a time, so that a newly unblocked run is not queued behind the rest.
            while ready and len(pending) < jobs:
                task = ready.popleft()
                try:
                    pending[executor.submit(task.function, *arguments(task))] = task
                except Exception as error:  # noqa: BLE001  (a broken pool refuses new work; the others are kept)
                    failed(task.label, f"not started ({_one_line(error)})")
            if pending:
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    finished(pending.pop(future), future.result)
    return results, failures


def _dependants(tasks: Sequence[Task]) -> dict[str, list[str]]:
    """Per label, the labels of the tasks that depend on it directly, in task order."""
    dependants: dict[str, list[str]] = {}
    for task in tasks:
        if task.label in dependants:
            raise ValueError(f"task label {task.label!r} is used twice; labels name results and must be unique")
        if len(set(task.depends_on)) < len(task.depends_on):
            raise ValueError(f"task {task.label!r} lists a dependency twice in {task.depends_on}; list each once")
        for needed in task.depends_on:
            if needed not in dependants:
                raise ValueError(
                    f"task {task.label!r} depends on {needed!r}, which is not listed before it; "
                    "list every task after the tasks it depends on"
                )
            dependants[needed].append(task.label)
        dependants[task.label] = []
    return dependants


def _downstream(label: str, dependants: Mapping[str, list[str]]) -> list[str]:
    """Every task that depends on ``label``, directly or through others, each once."""
    found: list[str] = []
    queue = deque(dependants[label])
    while queue:
        later = queue.popleft()
        if later not in found:
            found.append(later)
            queue.extend(dependants[later])
    return found


class _InlineExecutor(concurrent.futures.Executor):
    """``jobs == 1``: each run in this process, one after the other, through the same scheduler."""

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:  # type: ignore[override]
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001  (delivered through the future, as a pool would)
            future.set_exception(error)
        return future


def _worker_setup(parent: int) -> None:
    """Pool worker set-up: one torch thread, and an exit when the parent process is gone.

    A killed benchmark (Ctrl-C, ``kill``, a lost session) would otherwise leave its workers training
    for hours, since nothing is left to collect their results; each run they finished is already in
    its raw file, so the next invocation picks up from there."""
    torch.set_num_threads(1)

    # ``parent`` comes from the parent itself: read here, getppid() would already be the reaper's
    # pid if the parent died before this worker started.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _one_line(error: BaseException) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0]}" if message else type(error).__name__


def describe_failures(failures: Sequence[Failure]) -> str:
    """One line per failed (or not run) run, under a count; empty when nothing failed."""
    if not failures:
        return ""
    lines = [f"FAILED {failure.label}: {failure.error}" for failure in failures]
    return f"{len(failures)} run(s) failed; finished runs are cached, rerun the same command to retry:\n" + "\n".join(lines)


def report_failures(failures: Sequence[Failure]) -> int:
    """Print the failed runs; the exit status for the benchmark."""
    if failures:
        print(describe_failures(failures), file=sys.stderr)
    return 1 if failures else 0
