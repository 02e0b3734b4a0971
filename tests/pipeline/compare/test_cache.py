"""The reuse key of a comparison's runs (``pipeline.cache``): a rerun reuses every finished run and
trains nothing; other code or other data makes the same command move the runs aside and make them
again; the comparison report is not rebuilt from the very same runs; I/O-bound stages retry
transient failures with backoff. Around the compare tests' stand-in for the flow: seconds."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from compare_cases import FLOW, CountingDense, FakeExecute, Reports, run_compare, write_blobs, write_flows

from pipeline import cache
from pipeline.retrying import _retry_condition, call_with_retries, task_options

METHODS = ["--methods", "none", "bmrs_n", "l2", "--seeds", "0"]
RUNS = ("none", "bmrs_n", "l2")


@pytest.fixture
def flows(tmp_path):
    return write_flows(tmp_path)


class WritingReports(Reports):
    """The comparison report's stand-in, writing report.md and report.json as the real one does."""

    def __call__(self, run_dirs, out_dir, *, title=None) -> Path:
        super().__call__(run_dirs, out_dir, title=title)
        (Path(out_dir) / "report.md").write_text(f"# {title}\n")
        (Path(out_dir) / "report.json").write_text(json.dumps({"kind": "comparison"}))
        return Path(out_dir) / "report.md"


@pytest.fixture
def reports(monkeypatch):
    stub = WritingReports()
    monkeypatch.setattr("pipeline.flow.comparison_report_flow", lambda dirs, out, title=None: stub(dirs, out, title=title))
    return stub


def out_dir(flows: Path) -> Path:
    return flows.parent / "runs" / FLOW / "compare"


def test_the_code_version_covers_training_export_measurement_and_the_flow():
    files = {path.relative_to(cache.ROOT).as_posix() for path in cache.source_files(cache.CODE_SOURCES)}
    for needed in ("bmrs/train/loop.py", "bmrs/math/reduction.py", "export/slicing.py", "export/onnx_export.py",
                   "benchmarks/latency.py", "benchmarks/energy_pair.py", "pipeline/stages/steps.py", "pipeline/flow.py"):  # fmt: skip
        assert needed in files
    assert not any(name.startswith(("pipeline/reporting/", "pipeline/compare/", "tests/")) for name in files)
    assert set(cache.dependency_versions()) == set(cache.DEPENDENCIES)


def test_a_changed_source_file_changes_the_digest(tmp_path):
    (tmp_path / "bmrs" / "train").mkdir(parents=True)
    loop = tmp_path / "bmrs" / "train" / "loop.py"
    loop.write_text("LR = 0.1\n")
    (tmp_path / "README.md").write_text("not code\n")
    before = cache.source_digest(("bmrs",), tmp_path)
    (tmp_path / "README.md").write_text("still not code\n")
    assert cache.source_digest(("bmrs",), tmp_path) == before
    loop.write_text("LR = 0.2\n")
    assert cache.source_digest(("bmrs",), tmp_path) != before


def test_a_rerun_trains_nothing_and_a_code_change_makes_every_run_again(flows, reports, monkeypatch, capsys):
    assert run_compare(flows, METHODS, FakeExecute(), CountingDense()) == 0
    out = out_dir(flows)
    first_code = cache.code_version()
    for label in RUNS:
        record = json.loads((out / label / "seed0" / cache.CACHE_FILE).read_text())
        assert record["code"] == first_code and len(record["key"]) == 64 and record["dependencies"]["torch"]
    assert json.loads((out / "dense" / "seed0" / cache.CACHE_FILE).read_text())["code"] == first_code
    dense_checkpoint = out / "dense" / "seed0" / "baseline" / "checkpoint.pt"
    dense_inode = dense_checkpoint.stat().st_ino
    capsys.readouterr()

    again, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, METHODS, again, dense) == 0
    assert again.calls == [] and dense.seeds == []  # nothing trained, nothing run
    printed = capsys.readouterr().out
    assert printed.count("finished before, reusing") == 3
    assert "(unchanged: made from these very runs)" in printed and len(reports.calls) == 1  # the report not rebuilt

    monkeypatch.setattr(cache, "code_version", lambda: "0123456789abcdef")  # as after an edit of bmrs/train/loop.py
    changed, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, METHODS, changed, dense) == 0
    assert [(method, seed) for method, seed, _ in changed.calls] == [("none", 0), ("bmrs_n", 0), ("l2", 0)]
    assert dense.seeds == [0] and dense_checkpoint.stat().st_ino != dense_inode  # the dense baseline trained anew
    printed = capsys.readouterr().out
    assert f"is stale (the code changed since it was made (code version {first_code} there, 0123456789abcdef now))" in printed
    stale = out.with_name("compare.stale") / first_code
    for label in (*RUNS, "dense"):  # the old results are kept, readable with `bmrs report`
        assert (stale / label / "seed0").is_dir(), label
    assert (stale / "none" / "seed0" / "report.json").is_file()
    assert json.loads((out / "none" / "seed0" / cache.CACHE_FILE).read_text())["code"] == "0123456789abcdef"
    assert len(reports.calls) == 2  # new runs: a new report


def test_a_run_without_a_record_or_on_other_data_is_made_again(flows, reports, capsys):
    assert run_compare(flows, METHODS, FakeExecute(), CountingDense()) == 0
    out = out_dir(flows)
    (out / "bmrs_n" / "seed0" / cache.CACHE_FILE).unlink()  # as a run made before records were kept
    capsys.readouterr()
    execute = FakeExecute()
    assert run_compare(flows, METHODS, execute, CountingDense()) == 0
    # bmrs_n only: it ends with the same per-layer fractions, so l2 (which prunes at them) is still current.
    assert [method for method, _, _ in execute.calls] == ["bmrs_n"]
    assert "no readable cache.json (made before runs recorded their code version)" in capsys.readouterr().out
    assert (out.with_name("compare.stale") / cache.UNVERSIONED / "bmrs_n" / "seed0" / "report.json").is_file()

    write_blobs(flows.parent / "blobs.npz", train=96)  # new data at the same path
    execute = FakeExecute()
    assert run_compare(flows, METHODS, execute, CountingDense()) == 0
    assert [method for method, _, _ in execute.calls] == list(RUNS)
    assert "is stale (the data changed since it was made)" in capsys.readouterr().out


def test_transient_io_errors_are_retried_with_growing_pauses_and_others_fail_at_once():
    attempts, pauses = [], []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(errno.EIO, "Input/output error", "report.json")
        return 7

    assert call_with_retries(flaky, sleep=pauses.append) == 7
    assert len(attempts) == 3 and 0.5 <= pauses[0] <= 1.5 and 1.0 <= pauses[1] <= 3.0

    for permanent in (ValueError("parity failed"), FileNotFoundError(errno.ENOENT, "no such file"), PermissionError(errno.EACCES, "denied")):
        pauses.clear()
        with pytest.raises(type(permanent)):
            call_with_retries(lambda error=permanent: (_ for _ in ()).throw(error), sleep=pauses.append)
        assert pauses == []

    pauses.clear()
    with pytest.raises(TimeoutError):
        call_with_retries(lambda: (_ for _ in ()).throw(TimeoutError("the API did not answer")), sleep=pauses.append)
    assert len(pauses) == 3  # then it gives up


def test_io_bound_stages_retry_only_transient_failures_and_training_never():
    from prefect.states import Failed

    from pipeline import flow

    assert _retry_condition(None, None, Failed(data=OSError(errno.EIO, "Input/output error")))
    assert not _retry_condition(None, None, Failed(data=ValueError("the ONNX file does not match the model")))
    for io_task in (flow.compress_task, flow.dense_task, flow.report_task):
        assert io_task.retries == task_options()["retries"] == 3 and io_task.retry_condition_fn is _retry_condition
    for compute_task in (flow.train_task, flow.latency_task, flow.post_training_task):
        assert compute_task.retries == 0
