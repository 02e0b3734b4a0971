"""Command-line plumbing shared by the training benchmarks (table 1, the p1 sweep, rank correlations).

What every one of them needs the same way:

* ``paper_spec``: a ``RunSpec`` with the paper's per-(dataset, model) budget (appendix C), on top of
  which a benchmark sets what it varies (criterion, seed, epochs) and the user's overrides.
* ``parse_overrides`` / ``parse_noise``: ``--train KEY=VALUE`` / ``--noise KEY=VALUE`` pairs, checked
  against the fields of ``TrainConfig`` / ``NoiseInit`` before anything is trained.
* ``check_seeds``, ``check_jobs`` and ``command_line``: the seeds, the parallelism and the command
  that reproduces the invocation, as its results record it.
* ``run_all``: many runs, one after another or in a pool of worker processes. A run may depend on
  others and is then given their results; one failed run is reported at the end instead of taking
  the finished ones down with it, and the runs that depend on it are reported as not run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import enum
import multiprocessing
import os
import shlex
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from benchmarks.paper.experiment import RunSpec
from bmrs.data import DATASETS
from bmrs.models import MODELS, NoiseInit, mlp_settings
from bmrs.nn.noise import LogNormalNoise
from bmrs.train import TrainConfig


@dataclass(frozen=True)
class PaperBudget:
    batch_size: int
    lr: float
    model_options: dict[str, Any] = field(default_factory=dict)


# Paper appendix C; LeNet5 on Fashion-MNIST as the repository's paper flows (flows.yaml) train it.
PAPER_BUDGETS: dict[tuple[str, str], PaperBudget] = {
    ("fashion_mnist", "lenet5"): PaperBudget(batch_size=32, lr=1.4e-3),
    ("fashion_mnist", "mlp"): PaperBudget(batch_size=128, lr=1.5e-3, model_options=mlp_settings("fashion_mnist")),
    ("mnist", "lenet5"): PaperBudget(batch_size=128, lr=1.4e-3),
    ("mnist", "mlp"): PaperBudget(batch_size=128, lr=8.5e-4, model_options=mlp_settings("mnist")),
    ("cifar10", "mlp"): PaperBudget(batch_size=32, lr=6.8e-4, model_options=mlp_settings("cifar10")),
}


def paper_budget(dataset: str, model: str) -> PaperBudget:
    if (dataset, model) not in PAPER_BUDGETS:
        known = ", ".join(f"{m} on {d}" for d, m in PAPER_BUDGETS)
        raise ValueError(f"no paper budget for {model} on {dataset}; choose one of: {known}")
    return PAPER_BUDGETS[(dataset, model)]


def paper_models(dataset: str) -> list[str]:
    """The models the paper gives ``dataset`` a budget for, in ``PAPER_BUDGETS`` order."""
    return [model for known, model in PAPER_BUDGETS if known == dataset]


def paper_spec(
    model: str,
    dataset: str,
    *,
    train: Mapping[str, Any],
    noise: Mapping[str, Any] | None = None,
    root: str | None = None,
    max_train_examples: int | None = None,
) -> RunSpec:
    """The paper's budget for ``model`` on ``dataset``; ``train`` (``TrainConfig`` fields: what the
    benchmark varies and the user's overrides) goes on top of it. ``noise=None`` trains no noise."""
    if max_train_examples is not None and (isinstance(max_train_examples, bool) or max_train_examples < 1):
        raise ValueError(f"max_train_examples must be a positive number of examples, got {max_train_examples!r}")
    budget = paper_budget(dataset, model)
    config = TrainConfig(**{"batch_size": budget.batch_size, "lr": budget.lr, "progress": False, **train})
    return RunSpec(
        model=model,
        model_options=dict(budget.model_options),
        dataset=dataset,
        root=root,
        max_train_examples=max_train_examples,
        noise=None if noise is None else NoiseInit(**noise),
        train=config,
    )


def parse_overrides(
    pairs: Sequence[str] | None, cls: type, flag: str, fixed: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fields of the dataclass ``cls``. Values are YAML (``lr=1e-3``,
    ``criterion_settings={p1: 4}``); enum fields take their value's name (``kl_weighting=layer_mean``).
    ``fixed`` maps the fields the benchmark sets itself to the reason, which a refusal names."""
    fixed = dict(fixed or {})
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    settable = sorted(name for name in defaults if name not in fixed)
    overrides: dict[str, Any] = {}
    for pair in pairs or ():
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"{flag} {pair!r} is not KEY=VALUE; write e.g. {flag} {settable[0]}=VALUE")
        if key in fixed:
            raise ValueError(f"{flag} {key} cannot be overridden here: {fixed[key]}")
        if key not in defaults:
            raise ValueError(f"{flag} has no key {key!r}; valid keys are {settable}")
        if key in overrides:
            raise ValueError(f"{flag} {key} is given twice; give it once")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{flag} {key}={text!r} is not a valid YAML value ({error}); quote or fix it") from error
        overrides[key] = _coerce(value, defaults[key], f"{flag} {key}")
    return overrides


def parse_noise(pairs: Sequence[str] | None, flag: str = "--noise") -> dict[str, Any]:
    """``NoiseInit`` overrides, with the truncation checked where a noise layer checks it: one is
    built now, so that bad bounds fail before training rather than when the first model is built."""
    noise = parse_overrides(pairs, NoiseInit, flag)
    try:
        LogNormalNoise(1, **NoiseInit(**noise).posterior_options())
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None
    return noise


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None


def _coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` as the type of the field's default; fields without a typed default take it as is."""
    if isinstance(default, enum.Enum):
        choices = [member.value for member in type(default)]
        if value not in choices:
            raise ValueError(f"{where}={value!r} is not one of {choices}")
        return type(default)(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        # YAML 1.1 reads 1e-3 (no dot) as a string.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise TypeError(f"{where} must be a mapping such as {{p1: 4}}, got {value!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, *, default_out: str, default_seeds: Sequence[int]) -> None:
    """The options the one-model benchmarks (p1 sweep, rank correlations) share."""
    parser.add_argument("--model", default="lenet5", choices=sorted({m for _, m in PAPER_BUDGETS} & set(MODELS)))
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted({d for d, _ in PAPER_BUDGETS} & set(DATASETS)))
    parser.add_argument("--data-root", default=None, help="the dataset's files (default: its standard location)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (paper: 50)")
    parser.add_argument("--max-train-examples", type=int, default=None, help="train on the first N examples only")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field")
    parser.add_argument("--noise", action="append", default=[], metavar="KEY=VALUE", help="override a NoiseInit field")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one torch thread each")
    parser.add_argument("--out", default=default_out)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    if not seeds:
        raise ValueError("no seeds given; pass --seeds 0 1 2 ...")
    duplicates = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if duplicates:
        raise ValueError(f"seed {duplicates[0]} is listed twice; list each seed once")
    return list(seeds)


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
