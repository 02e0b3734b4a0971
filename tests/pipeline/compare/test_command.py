"""``bmrs compare`` around a stand-in for the flow: what runs, once, in which order, and what is reused."""
from __future__ import annotations

import json
import os

import pytest
from compare_cases import FLOW, PRUNED, CountingDense, FakeExecute, Reports, run_compare, write_flows

from bmrs.nn.noise import noise_modules
from pipeline.compare import plan
from pipeline.config import load_flow
from pipeline.stages import steps


@pytest.fixture
def flows(tmp_path):
    return write_flows(tmp_path)


@pytest.fixture
def reports(monkeypatch):
    stub = Reports()
    monkeypatch.setattr("pipeline.reporting.write_comparison", stub)
    # The report flow (the comparison's report plus its Prefect artifacts) without Prefect.
    monkeypatch.setattr("pipeline.flow.comparison_report_flow", lambda dirs, out, title=None: stub(dirs, out, title=title))
    return stub


def out_dir(flows):
    return flows.parent / "runs" / FLOW / "compare"


def config_of(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def test_every_run_once_on_one_dense_baseline_per_seed(flows, reports, capsys):
    execute, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, ["--methods", "l2", "none", "snr", "grad", "--seeds", "0", "1"], execute, dense) == 0
    out = out_dir(flows)
    printed = capsys.readouterr().out
    assert "bmrs: running bmrs_n too: l2, grad prune at its per-layer fractions" in printed
    # Per seed: the dense model first, bmrs_n before the methods at its fractions; each run once.
    order = ["none", "snr", "bmrs_n", "l2", "grad"]
    assert [(method, seed) for method, seed, _ in execute.calls] == [(m, s) for s in (0, 1) for m in order]
    assert dense.seeds == [0, 1]  # the dense baseline trained once per seed
    assert all(resume for _, _, resume in execute.calls) and all(execute.dense_present)  # each run only loads it
    for seed in (0, 1):
        shared = plan.dense_dir(out, seed) / "baseline" / "checkpoint.pt"
        for label in order:
            assert os.path.samefile(out / label / f"seed{seed}" / "baseline" / "checkpoint.pt", shared)
        assert os.path.samefile(out / "none" / f"seed{seed}" / "train" / "checkpoint.pt", shared)  # the dense method's own model
        assert config_of(out / "none" / f"seed{seed}")["train"]["seed"] == seed

    # l2 and grad remove, per noise layer, the fraction the same seed's bmrs_n run ended with.
    base = load_flow(flows, FLOW)
    sizes = {name: noise.num_structures for name, noise in noise_modules(steps.build(base, steps.load_data(base), noisy=True)).items()}
    assert len(sizes) == 2
    for label in ("l2", "grad"):
        criterion = config_of(out / label / "seed1")["train"]["criterion"]
        assert criterion["layer_ratios"] == {name: PRUNED / size for name, size in sizes.items()}

    summary = json.loads((out / "compare.json").read_text())
    assert summary["flow"] == FLOW and summary["seeds"] == [0, 1] and summary["ratio_source"] == "bmrs_n"
    assert [m["label"] for m in summary["methods"]] == order
    assert summary["methods"][3] == {"spec": "l2", "label": "l2", "method": "l2", "criterion": {"name": "l2"}, "sparsify": False,
                                   "layer_ratios_from": "bmrs_n", "ratio_source": False}
    assert summary["methods"][2]["ratio_source"] is True and summary["methods"][2]["layer_ratios_from"] is None
    assert summary["config"]["name"] == FLOW and summary["config"]["train"]["lr"] == 0.01
    assert [(r["method"], r["seed"], r["state"], r["reused"]) for r in summary["runs"]] == [(m, s, "completed", False) for s in (0, 1) for m in order]
    (call,) = reports.calls
    assert call["out_dir"] == out and call["run_dirs"] == [out / m / f"seed{s}" for s in (0, 1) for m in order]
    assert call["title"] == f"{FLOW}: none, snr, bmrs_n, l2, grad over seeds [0, 1]"


def test_rerunning_reuses_finished_runs_and_adds_only_the_missing_ones(flows, reports, capsys):
    first = FakeExecute()
    assert run_compare(flows, ["--methods", "none", "bmrs_n", "l2", "--seeds", "0"], first, CountingDense()) == 0
    out = out_dir(flows)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()

    again, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, ["--methods", "none", "bmrs_n", "l2", "--seeds", "0", "--no-progress"], again, dense) == 0
    assert again.calls == [] and dense.seeds == []  # progress bars are no setting of a result
    printed = capsys.readouterr().out
    assert printed.count("finished before, reusing") == 3
    after = {p: p.stat().st_mtime_ns for p in before}
    assert {p: t for p, t in after.items() if p.name not in ("compare.json",)} == {p: t for p, t in before.items() if p.name != "compare.json"}

    more, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, ["--methods", "none", "bmrs_n", "l2", "etheta", "--seeds", "0", "1"], more, dense) == 0
    assert [(m, s) for m, s, _ in more.calls] == [("etheta", 0), ("none", 1), ("bmrs_n", 1), ("etheta", 1), ("l2", 1)]
    assert dense.seeds == [0, 1]  # seed 0's finished baseline is only loaded for etheta's run
    assert os.path.samefile(out / "etheta" / "seed0" / "baseline" / "checkpoint.pt", out / "dense" / "seed0" / "baseline" / "checkpoint.pt")


def test_a_run_under_other_settings_is_refused_before_anything_runs(flows, reports, capsys):
    assert run_compare(flows, ["--methods", "none", "snr", "--seeds", "0"], FakeExecute(), CountingDense()) == 0
    out = out_dir(flows)
    before = (out / "compare.json").read_text()
    capsys.readouterr()
    execute = FakeExecute()
    assert run_compare(flows, ["--methods", "none", "snr", "--seeds", "0", "--set", "train.lr=0.02"], execute, CountingDense()) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: ")
    assert f"{str(out / 'none' / 'seed0')!r} holds a run made under other settings (train.lr: 0.01 there, 0.02 now)" in lines[0]
    assert "choose another --out, or delete" in lines[0]
    assert execute.calls == [] and (out / "compare.json").read_text() == before
    # Elsewhere the same command runs.
    other = flows.parent / "other"
    assert run_compare(flows, ["--methods", "none", "--seeds", "0", "--set", "train.lr=0.02", "--out", str(other)], execute, CountingDense()) == 0
    assert (other / "none" / "seed0" / "report.json").is_file() and config_of(other / "none" / "seed0")["train"]["lr"] == 0.02


def test_a_begun_run_is_resumed_in_place(flows, reports, capsys):
    assert run_compare(flows, ["--methods", "snr", "--seeds", "0"], FakeExecute(), CountingDense()) == 0
    run_dir = out_dir(flows) / "snr" / "seed0"
    (run_dir / "report.json").unlink()
    steps.set_status(run_dir, "failed", "killed")
    capsys.readouterr()
    # The stand-in's checkpoint holds weights only: the flow could not resume it, so nothing starts.
    assert run_compare(flows, ["--methods", "snr", "--seeds", "0"], FakeExecute(), CountingDense()) == 2
    assert "holds weights only, not the training state a resume needs" in capsys.readouterr().err
    (run_dir / "train" / "checkpoint.pt").unlink()  # as a run killed before its first epoch ended leaves it
    execute, dense = FakeExecute(), CountingDense()
    assert run_compare(flows, ["--methods", "snr", "--seeds", "0"], execute, dense) == 0
    assert execute.calls == [("snr", 0, True)] and dense.seeds == [0]  # the finished baseline, loaded
    assert f"snr seed 0 resuming in {run_dir}" in capsys.readouterr().out


def test_a_failed_ratio_source_leaves_its_dependents_unrun_and_the_others_going(flows, reports, capsys):
    execute = FakeExecute(fail={"bmrs_n"}, degrade={"snr"})
    assert run_compare(flows, ["--methods", "l2", "snr", "none", "--seeds", "0"], execute, CountingDense()) == 1
    assert [m for m, _, _ in execute.calls] == ["none", "snr", "bmrs_n"]
    err = capsys.readouterr().err
    assert "l2 seed 0: not run: the bmrs_n run of seed 0 has no report" in err
    assert "runs without a report: bmrs_n seed 0 (bmrs_n diverged); l2 seed 0 (not run:" in err
    runs = {r["method"]: r for r in json.loads((out_dir(flows) / "compare.json").read_text())["runs"]}
    assert {m: r["state"] for m, r in runs.items()} == {"none": "completed", "snr": "degraded", "bmrs_n": "failed", "l2": "not run"}
    assert runs["snr"]["error"] == "snr collapsed" and not (out_dir(flows) / "l2").exists()
    assert reports.calls[0]["run_dirs"] == [out_dir(flows) / m / "seed0" for m in ("none", "snr", "bmrs_n")]


def test_a_degraded_run_makes_exit_3_also_when_reused(flows, reports, capsys):
    assert run_compare(flows, ["--methods", "snr", "--seeds", "0"], FakeExecute(degrade={"snr"}), CountingDense()) == 3
    capsys.readouterr()
    assert run_compare(flows, ["--methods", "snr", "--seeds", "0"], FakeExecute(), CountingDense()) == 3
    assert "bmrs: warning: snr seed 0: snr collapsed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--methods", "none", "magic"], "--methods 'magic': unknown method 'magic'; known methods: none, bmrs_n"),
        (["--methods", "bmrs_u:q=2"], "--methods 'bmrs_u:q=2': tiny.train.criterion: criterion 'bmrs_u' has no setting 'q'"),
        (["--methods", "none", "--seeds", "1", "1"], "--seeds lists seed 1 twice"),
        (["--methods", "none", "--set", "train.epochz=1"], "unknown setting"),
        (["--methods", "none", "--set", "noise.start_on=[nope]"], "start_on names 'nope', which holds no noise layer"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(flows, reports, capsys, argv, fragment):
    execute = FakeExecute()
    assert run_compare(flows, argv, execute) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: ") and fragment in lines[0], lines
    assert execute.calls == [] and not (flows.parent / "runs").exists() and reports.calls == []


def test_an_out_that_is_a_file_is_refused(flows, reports, capsys):
    assert run_compare(flows, ["--methods", "none", "--out", str(flows / "sub")], FakeExecute()) == 2
    assert f"--out {str(flows / 'sub')!r}: {str(flows)!r} is a file, not a directory" in capsys.readouterr().err


def test_a_comparison_directory_in_use_is_refused(flows, reports, capsys):
    from pipeline.stages.resume import exclusive_run

    out = out_dir(flows)
    out.mkdir(parents=True)
    with exclusive_run(out):
        assert run_compare(flows, ["--methods", "none"], FakeExecute()) == 2
    assert "another bmrs process" in capsys.readouterr().err


def test_widths_of_takes_l2s_fractions_from_the_named_methods_run(flows, reports, capsys):
    execute = FakeExecute(pruners=frozenset({"bmrs_u"}))
    code = run_compare(flows, ["--methods", "none", "l2", "--seeds", "0", "--widths-of", "bmrs_u:4"], execute, CountingDense())
    assert code == 0
    assert "bmrs: running bmrs_u:4 too: l2 prune at its per-layer fractions" in capsys.readouterr().out
    assert [(method, seed) for method, seed, _ in execute.calls] == [("none", 0), ("bmrs_u", 0), ("l2", 0)]
    out = out_dir(flows)
    base = load_flow(flows, FLOW)
    sizes = {name: noise.num_structures for name, noise in noise_modules(steps.build(base, steps.load_data(base), noisy=True)).items()}
    assert config_of(out / "l2" / "seed0")["train"]["criterion"]["layer_ratios"] == {name: PRUNED / size for name, size in sizes.items()}
    summary = json.loads((out / "compare.json").read_text())
    assert summary["ratio_source"] == "bmrs_u:4"
    assert [(m["label"], m["ratio_source"], m["layer_ratios_from"]) for m in summary["methods"]] == [
        ("none", False, None), ("bmrs_u-p1=4", True, None), ("l2", False, "bmrs_u:4")]


def test_widths_of_without_a_method_to_use_it_says_it_is_unused(flows, reports, capsys):
    execute = FakeExecute(pruners=frozenset({"bmrs_u"}))
    code = run_compare(flows, ["--methods", "none", "bmrs_u:4", "--seeds", "0", "--widths-of", "bmrs_u:4"], execute, CountingDense())
    assert code == 0
    assert "bmrs: note: --widths-of bmrs_u:4 is unused" in capsys.readouterr().out
    assert [(method, seed) for method, seed, _ in execute.calls] == [("none", 0), ("bmrs_u", 0)]


def test_widths_of_a_method_without_fractions_is_one_line_and_exit_2(flows, reports, capsys):
    execute = FakeExecute()
    assert run_compare(flows, ["--methods", "l2", "--widths-of", "none"], execute, CountingDense()) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: --widths-of 'none'")
    assert execute.calls == [] and not out_dir(flows).exists()
