"""A sweep: the runs of one or more comparisons (methods x seeds x models) as one Prefect flow,
``bmrs-sweep``, whose tasks run concurrently on Dask through prefect-dask's ``DaskTaskRunner``.

The dependencies are the serial comparison's (``pipeline.compare.runs``), as task dependencies:
a seed's dense baseline (task ``dense-baseline``) before its runs that use it, and ``l2`` / ``grad``
after the same seed's ``bmrs_n`` run (``--widths-of``'s method), whose per-layer fractions they take
as their input. Every
other run is free to run beside any other. Each run task makes its run exactly as ``bmrs run``
does (``pipeline.cli._execute``: the same compression flow, a subflow of the sweep, into the same
directory), so a run made on Dask and one made serially are interchangeable, and reused alike.

Runs that would only be reused (finished, same key) are reused here, before any cluster starts:
a rerun of a finished sweep starts neither Dask nor Prefect, and costs the checks and the report.

The workers report to this process's Prefect API (the ephemeral server, started bound to this
process, or ``PREFECT_API_URL``); its URL reaches them in the task's settings. A run task never
raises: a failed run is an outcome like any other, and the others go on. Stages are not retried;
a worker lost mid-run leaves a begun run directory, which the same command resumes.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from pipeline.compare.command import Comparison, Execute
    from pipeline.compare.methods import Method
    from pipeline.sweep import ClusterChoice, Cluster

_data_cache: dict[str, Any] = {}  # per worker process: a comparison's data, loaded once
# One run at a time per worker process, however many threads the worker has: runs in one process
# would share torch's thread count and random state, and exporting two models at once in one
# process breaks (CPython's AST recursion guard is not thread-safe: "AST constructor recursion depth
# mismatch"). A worker with more threads queues its runs here.
_one_run_at_a_time = threading.Lock()


def _with_data(shipped: Comparison) -> Comparison:
    from pipeline.stages import steps

    key = repr(shipped.base.data)
    if key not in _data_cache:
        _data_cache[key] = steps.load_data(shipped.base)
    return shipped.with_data(_data_cache[key])


def _use_threads(cluster: Cluster) -> None:
    import torch

    torch.set_num_threads(cluster.threads_here())


def run_in_worker(shipped: Comparison, method: Method, seed: int, index: int, total: int, execute: Execute,
                  dense: Path | str | None, fractions: dict[str, float] | None, source: Any, cluster: Cluster,
                  ) -> tuple[dict[str, Any], dict[str, float] | None]:  # fmt: skip
    """One run on a worker. ``dense``: the seed's dense baseline (the ``dense-baseline`` task's
    result) when the run uses it; ``fractions`` known before the sweep, or ``source``: the ratio
    source's task result (outcome, fractions) it waited for."""
    from pipeline.compare.runs import run_one

    if source is not None:
        fractions = source[1]
    try:
        with _one_run_at_a_time:
            _use_threads(cluster)
            return run_one(_with_data(shipped), method, seed, index=index, total=total, execute=execute,
                           dense=lambda: dense if dense is not None else "the dense baseline was not trained", fractions=fractions)  # fmt: skip
    except Exception as error:  # noqa: BLE001  (an outcome, not a failed task: the other runs go on)
        from pipeline.compare import plan

        directory = plan.run_dir(shipped.out_dir, method, seed)
        return ({"method": method.label, "spec": method.spec, "seed": seed, "run_dir": str(directory), "state": "failed",
                 "reused": False, "error": f"{type(error).__name__}: {error}"}, None)  # fmt: skip


def dense_in_worker(shipped: Comparison, seed: int, cluster: Cluster) -> Path | str:
    from pipeline.compare import plan
    from pipeline.compare.runs import dense_baseline

    try:
        with _one_run_at_a_time:
            _use_threads(cluster)
            return dense_baseline(_with_data(shipped), seed, plan.train_dense)
    except Exception as error:  # noqa: BLE001  (data that fails to load on a worker fails the seed's runs)
        return f"the dense baseline of seed {seed} failed on its worker ({type(error).__name__}: {error})"


# Training is not retried (a failure there is deterministic or resumable); the runs' own I/O-bound
# stages carry their retries (pipeline.flow). Results stay in memory: their record is on disk.
run_task = task(run_in_worker, name="run", cache_policy=NO_CACHE, persist_result=False)
dense_task = task(dense_in_worker, name="dense-baseline", cache_policy=NO_CACHE, persist_result=False)


def pending_runs(comparison: Comparison) -> list[list[bool]]:
    """Per seed, per method (in run order): whether the run has to be made (not only reused)."""
    from pipeline.compare.methods import method_config
    from pipeline.compare import plan
    from pipeline.compare.runs import reusable

    pending = []
    for seed in comparison.seeds:
        fractions, row = None, []
        for method in comparison.methods:
            reuse = reusable(comparison, method, seed, fractions)
            row.append(not reuse)
            if reuse and method.is_ratio_source:
                config = method_config(comparison.base, method, seed)
                fractions = plan.layer_fractions(config, comparison.data, plan.run_dir(comparison.out_dir, method, seed))
        pending.append(row)
    return pending


@flow(name="bmrs-sweep", persist_result=False, validate_parameters=False)
def sweep_flow(shipped_comparisons: list[Comparison], pending: list[list[list[bool]]], execute: Execute, cluster: Cluster) -> list[list[dict[str, Any]]]:
    """Every run of the comparisons (without their data, which Prefect would otherwise encode as
    the flow's parameters): reused ones here, the ``pending`` ones as tasks; each comparison's
    outcomes in its run order."""
    from pipeline.compare.runs import run_one

    rows: list[list[Any]] = []
    for shipped, by_seed in zip(shipped_comparisons, pending):
        comparison, row = _with_data(shipped), []
        total = len(comparison.methods) * len(comparison.seeds)
        for seed, todo in zip(comparison.seeds, by_seed):
            uses_dense = [(comparison.base.baseline.enabled or m.criterion is None) and t for m, t in zip(comparison.methods, todo)]
            dense = dense_task.submit(shipped, seed, cluster) if any(uses_dense) else None
            fractions, source = None, None
            for method, todo_here, needs in zip(comparison.methods, todo, uses_dense):
                index = len(row) + 1
                if not todo_here:
                    outcome, found = run_one(comparison, method, seed, index=index, total=total, execute=execute,
                                             dense=lambda: "not needed", fractions=fractions)  # fmt: skip
                    row.append(outcome)
                    fractions = found if found is not None else fractions
                    continue
                waits = source if method.at_ratio_source and fractions is None else None
                future = run_task.submit(shipped, method, seed, index, total, execute, dense if needs else None, fractions, waits, cluster)
                row.append((method, seed, future))
                if method.is_ratio_source:
                    source = future
        rows.append(row)
    return [[item if isinstance(item, dict) else _collect(shipped, *item) for item in row] for shipped, row in zip(shipped_comparisons, rows)]


def _collect(comparison: Comparison, method: Method, seed: int, future: Any) -> dict[str, Any]:
    """A run task's outcome; one whose task itself failed (a worker lost twice) is a failed run."""
    from pipeline.compare import plan

    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()[0]
    return {"method": method.label, "spec": method.spec, "seed": seed, "run_dir": str(plan.run_dir(comparison.out_dir, method, seed)),
            "state": "failed", "reused": False, "error": f"its task ended {state.type.value}: {state.message}"}  # fmt: skip


def run_sweep(comparisons: list[Comparison], execute: Execute, choice: ClusterChoice) -> list[dict[str, Any]]:
    """``bmrs compare --workers N`` / ``--dask-address``: the comparisons' runs on Dask; each
    comparison's summary, as ``run_comparison`` returns it. ``SweepError`` before anything is
    written when the cluster cannot be used."""
    from contextlib import ExitStack

    from pipeline.compare.runs import holding, run_comparison, write_outcomes
    from pipeline.sweep import dask_cluster

    # Absolute, so that every worker, whatever its working directory, writes where this process reads.
    comparisons = [replace(comparison, out_dir=comparison.out_dir.resolve()) for comparison in comparisons]
    pending = [pending_runs(comparison) for comparison in comparisons]
    runs = sum(todo for by_seed in pending for row in by_seed for todo in row)
    if runs == 0:  # everything is reused: no cluster, no Prefect
        print("bmrs: every run finished before; no cluster started")
        return [run_comparison(comparison, execute) for comparison in comparisons]
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    with ExitStack() as stack:
        cluster = stack.enter_context(dask_cluster(choice, runs, prefect_api_url, _shared_paths(comparisons)))
        for comparison in comparisons:
            stack.enter_context(holding(comparison))
        print(f"bmrs: {runs} runs to make on the Dask cluster at {cluster.address}")
        outcomes: list[list[dict[str, Any]]] = [[] for _ in comparisons]
        for comparison in comparisons:  # the flow's own reused runs read the data this process loaded
            _data_cache.setdefault(repr(comparison.base.data), comparison.data)
        try:
            with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
                flow_ = sweep_flow.with_options(task_runner=DaskTaskRunner(address=cluster.address))
                outcomes = flow_([comparison.shipped() for comparison in comparisons], pending, execute, cluster)
        finally:
            summaries = [write_outcomes(comparison, rows) for comparison, rows in zip(comparisons, outcomes)]
    return summaries


def _shared_paths(comparisons: list[Comparison]) -> list[str]:
    """What every worker must see: the nearest existing folder of each comparison, and the data."""
    paths = []
    for comparison in comparisons:
        paths.append(str(next(p for p in (comparison.out_dir, *comparison.out_dir.parents) if p.exists())))
        paths.append(comparison.base.data.resolved_root())
    return list(dict.fromkeys(paths))


def prefect_api_url() -> str:
    """The API the sweep and its workers report to: ``PREFECT_API_URL``, or the ephemeral server,
    started now, bound to this process (``pipeline.lifetime``)."""
    from prefect.settings import PREFECT_API_URL

    from pipeline.lifetime import start_bound_server

    start_bound_server()
    configured = PREFECT_API_URL.value()
    if configured:
        return str(configured)
    from prefect.server.api import server

    return server.SubprocessASGIServer().api_url
