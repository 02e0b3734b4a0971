"""One run of a comparison, and the serial loop over them: what ``bmrs compare`` does per
(method, seed), whether in this process one after another (the default) or on a Dask worker
(``pipeline.sweep``), so that both make the same directories, records and outcomes.

A run directory is reused when it holds ``report.json`` made under the same settings and its
``cache.json`` (``pipeline.cache``) matches the key the run would be made with now: settings, data
digest and code version. One whose key differs (other code, other data) is moved aside and run
again; one begun under the same key is resumed. The dense baseline of a seed is keyed the same way.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import cache

if TYPE_CHECKING:
    from pipeline.compare.command import Comparison, Execute, TrainDense
    from pipeline.compare.methods import Method

# The dense baseline of the run's seed, trained (or loaded) on first call: its checkpoint, or why it failed.
DenseProvider = Callable[[], "Path | str"]


def run_comparison(comparison: Comparison, execute: Execute, *, train_dense: TrainDense | None = None) -> dict[str, Any]:
    """Every run of ``comparison`` that has no report yet, seed by seed, holding the directory's lock;
    ``compare.json`` lists each run's outcome, also after Ctrl-C."""
    from pipeline.compare import plan

    outcomes: list[dict[str, Any]] = []
    with holding(comparison):
        try:
            for seed in comparison.seeds:
                run_seed(comparison, seed, execute, train_dense or plan.train_dense, outcomes)
        finally:
            summary = write_outcomes(comparison, outcomes)
    return summary


@contextmanager
def holding(comparison: Comparison) -> Iterator[None]:
    """The comparison folder, created, locked against another `bmrs compare` and given its
    ``compare.json`` header, for as long as the block runs."""
    from bmrs.artifacts import write_json
    from pipeline.compare import plan
    from pipeline.stages.resume import exclusive_run

    comparison.out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_run(comparison.out_dir):
        write_json(comparison.out_dir / plan.COMPARE_FILE, comparison.header())
        yield


def write_outcomes(comparison: Comparison, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    from bmrs.artifacts import write_json
    from pipeline.compare import plan

    summary = {**comparison.header(), "runs": outcomes}
    write_json(comparison.out_dir / plan.COMPARE_FILE, summary)
    return summary


def run_seed(comparison: Comparison, seed: int, execute: Execute, train_dense: TrainDense, outcomes: list[dict[str, Any]]) -> None:
    """The runs of one seed in method order: the dense method first, the ratio source (``bmrs_n``
    unless ``--widths-of``) before the methods that prune at its per-layer fractions; the dense baseline trained when a run first needs it."""
    trained: list[Path | str] = []

    def dense() -> Path | str:
        if not trained:
            trained.append(dense_baseline(comparison, seed, train_dense))
        return trained[0]

    fractions: dict[str, float] | None = None
    total = len(comparison.methods) * len(comparison.seeds)
    for method in comparison.methods:
        outcome, found = run_one(comparison, method, seed, index=len(outcomes) + 1, total=total, execute=execute,
                                 dense=dense, fractions=fractions)  # fmt: skip
        outcomes.append(outcome)
        fractions = found if found is not None else fractions


def key_of(comparison: Comparison, config: Any, *, dense: bool = False) -> cache.RunKey:
    return cache.run_key(config.to_dict(), comparison.data_digest, dense=dense)


def set_aside_if_stale(comparison: Comparison, directory: Path, key: cache.RunKey, what: str) -> None:
    if not directory.exists():
        return
    reason = cache.stale_reason(directory, key)
    if reason is not None:
        moved = cache.set_aside(directory, comparison.out_dir)
        print(f"{what}: {directory} is stale ({reason}); moved to {moved}, running it again")


def reusable(comparison: Comparison, method: Method, seed: int, fractions: dict[str, float] | None) -> bool:
    """Whether ``run_one`` would only reuse this run (finished, same settings, same key)."""
    from pipeline.compare import plan
    from pipeline.compare.methods import method_config

    if method.at_ratio_source and fractions is None:
        return False
    config = method_config(comparison.base, method, seed, fractions if method.at_ratio_source else None)
    directory = plan.run_dir(comparison.out_dir, method, seed)
    try:
        found = plan.inspect(directory, config)
    except ValueError:
        return False  # run_one says why, in its place among the runs
    return found is plan.Found.FINISHED and cache.stale_reason(directory, key_of(comparison, config)) is None


def run_one(
    comparison: Comparison,
    method: Method,
    seed: int,
    *,
    index: int,
    total: int,
    execute: Execute,
    dense: DenseProvider,
    fractions: dict[str, float] | None,
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Reuse, resume or make ``method``'s run of ``seed``. Returns its outcome (compare.json's row)
    and, for the ratio source once it has a report, its per-layer fractions (else None). Never
    raises for a run that fails: the outcome says why, and the other runs go on."""
    from pipeline.compare import plan
    from pipeline.compare.methods import method_config
    from pipeline.stages import steps

    directory = plan.run_dir(comparison.out_dir, method, seed)
    outcome: dict[str, Any] = {"method": method.label, "spec": method.spec, "seed": seed, "run_dir": str(directory),
                               "state": "not run", "reused": False, "error": None}  # fmt: skip
    head = f"bmrs: [{index}/{total}] {comparison.prefix}{method.label} seed {seed}"
    if method.at_ratio_source and fractions is None:
        outcome["error"] = f"not run: the {method.ratio_source} run of seed {seed} has no report, so there are no per-layer fractions to prune at"
        print(f"{head}: {outcome['error']}", file=sys.stderr)
        return outcome, None
    config = method_config(comparison.base, method, seed, fractions if method.at_ratio_source else None)
    key = key_of(comparison, config)
    set_aside_if_stale(comparison, directory, key, head)
    try:
        found = plan.inspect(directory, config)
    except ValueError as error:  # only where the ratio source's fractions changed since the check
        outcome["error"] = f"refused: {error}"
        print(f"{head}: {outcome['error']}", file=sys.stderr)
        return outcome, None
    if found is plan.Found.FINISHED:
        outcome["reused"] = True
        print(f"{head}: finished before, reusing {directory}")
    else:
        resume = found is plan.Found.BEGUN
        if plan.needs_dense(config):
            baseline = dense()
            if isinstance(baseline, str):
                outcome["error"] = f"not run: {baseline}"
                print(f"{head}: {outcome['error']}", file=sys.stderr)
                return outcome, None
        if found is plan.Found.NEW:
            steps.start_run_dir(config, directory)
            cache.write_key(directory, key)
        if plan.needs_dense(config):
            resume = bool(plan.share_dense(plan.dense_dir(comparison.out_dir, seed), directory, config)) or resume
        print(f"{head} {'resuming in' if found is plan.Found.BEGUN else '->'} {directory}")
        try:
            execute(config, directory, resume=resume)
        except Exception as error:  # noqa: BLE001  (status.json records it; the other runs still run)
            print(f"{head} failed ({type(error).__name__}: {error}); going on with the others", file=sys.stderr)
    outcome.update(outcome_of(directory))
    found_fractions = None
    if method.is_ratio_source and outcome["state"] in ("completed", "degraded"):
        try:
            found_fractions = plan.layer_fractions(config, comparison.data, directory)
        except ValueError as error:  # a damaged checkpoint: CheckpointError names the file
            print(f"{head}: its per-layer fractions cannot be read: {error}", file=sys.stderr)
    return outcome, found_fractions


def dense_baseline(comparison: Comparison, seed: int, train_dense: TrainDense) -> Path | str:
    """Train (or load) seed ``seed``'s dense baseline; the checkpoint, or why it failed."""
    from bmrs.train.checkpoint import read_checkpoint
    from pipeline.compare import plan
    from pipeline.seeds import seed_config

    directory = plan.dense_dir(comparison.out_dir, seed)
    checkpoint = directory / "baseline" / "checkpoint.pt"
    config = seed_config(comparison.base, seed)
    try:
        key = key_of(comparison, config, dense=True)
        set_aside_if_stale(comparison, directory, key, f"bmrs: dense baseline of {comparison.prefix}seed {seed}")
        if not directory.exists():
            directory.mkdir(parents=True)
            cache.write_key(directory, key)
        finished = checkpoint.is_file() and read_checkpoint(checkpoint).meta.get("finished") is True
        what = "reusing" if finished else "training once, for every run of this seed:"
        print(f"bmrs: dense baseline of {comparison.prefix}seed {seed}: {what} {checkpoint}")
        return train_dense(config, comparison.data, directory)
    except Exception as error:  # noqa: BLE001  (a diverged baseline fails this seed's runs, not the others)
        reason = f"the dense baseline of seed {seed} failed ({type(error).__name__}: {error}); rerun to continue it from {checkpoint}"
        print(f"bmrs: {reason}", file=sys.stderr)
        return reason


def outcome_of(directory: Path) -> dict[str, Any]:
    """A run's state from its directory, as seed groups read it: completed and degraded runs have a
    report (degraded: a sanity bound failed, its warning), any other run is failed with its error."""
    import json

    from pipeline.stages import steps

    if (directory / "report.json").is_file():
        warning = steps.degraded_warning(directory)
        return {"state": "completed" if warning is None else "degraded", "error": warning}
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        status = {}
    error = status.get("error") if isinstance(status, dict) else None
    return {"state": "failed", "error": error or "no report was written"}
