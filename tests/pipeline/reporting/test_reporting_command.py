"""`bmrs report`: paths expanded to runs (run directories, seed groups, folders), each run's report.md
rebuilt, a comparison of several, and bad paths refused with one line naming them."""
from __future__ import annotations

import argparse
import json

import pytest
from reporting_fakes import make_failed_run, make_group, make_run, strict_json

from pipeline.reporting import add_report_parser, report_command
from pipeline.reporting.command import report_from_args


def parse(argv):
    parser = argparse.ArgumentParser(prog="bmrs")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_a_seed_group_is_reported_into_its_own_folder(tmp_path, capsys):
    group = make_group(tmp_path / "runs" / "default" / "20261130-000000-abcd", [0, 1, 2])
    make_run(group / "seed0", seed=0, accuracy=0.876)
    make_run(group / "seed1", seed=1, accuracy=0.870)
    make_failed_run(group / "seed2", seed=2, error="stopped by SIGTERM")
    assert report_command([group], None) == 0
    printed = capsys.readouterr().out
    for seed in (0, 1):
        assert (group / f"seed{seed}" / "report.md").is_file()
        assert f"bmrs: wrote {group / f'seed{seed}' / 'report.md'}" in printed
    assert f"{group / 'seed2'} has no report (failed)" in printed
    assert f"bmrs: compared 3 runs -> {group / 'report.md'}" in printed
    data = strict_json(group / "report.json")
    assert data["groups"][0]["seeds"] == [0, 1]
    assert data["excluded"][0]["state"] == "failed" and data["excluded"][0]["warning"] == "stopped by SIGTERM"
    text = (group / "report.md").read_text()
    assert "[" + str(group / "seed0") + "](seed0/report.md)" in text
    # Run again: the comparison's own report.json in the group folder is not taken for a run.
    assert report_command([group], None) == 0
    assert strict_json(group / "report.json")["groups"][0]["seeds"] == [0, 1]


def test_a_parent_folder_is_searched_for_runs(tmp_path, capsys):
    parent = tmp_path / "runs"
    make_run(parent / "default" / "a", seed=0)
    make_run(parent / "other" / "b", method="bmrs_u", seed=0)
    assert report_command([parent], None) == 0
    assert (parent / "report.md").is_file()
    labels = [group["label"] for group in strict_json(parent / "report.json")["groups"]]
    assert labels == ["bmrs_n", "bmrs_u"]
    assert report_command([parent], None) == 0  # the folder's comparison files are not runs either
    assert len(strict_json(parent / "report.json")["runs"]) == 2


def test_several_run_directories_go_to_report_unless_out_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first, second = make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)
    assert report_command([first, second, first], None) == 0  # the repeated one counts once
    assert len(strict_json(tmp_path / "report" / "report.json")["runs"]) == 2
    args = parse(["report", str(first), str(second), "--out", str(tmp_path / "elsewhere")])
    assert (args.run_dirs, args.out) == ([first, second], tmp_path / "elsewhere")
    assert report_from_args(args) == 0
    assert (tmp_path / "elsewhere" / "accuracy_vs_compression.png").is_file()


def test_one_run_gets_its_report_and_no_comparison(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", seed=0)
    assert report_command([run_dir / "report.json"], tmp_path / "out") == 0  # the file stands for its directory
    printed = capsys.readouterr().out
    assert (run_dir / "report.md").is_file() and not (tmp_path / "out").exists()
    assert "bmrs_n: 62.1% of parameters removed" in printed and "no comparison was written" in printed
    (run_dir / "config.json").unlink()  # a report given by name is read even without its config.json
    assert report_command([run_dir], None) == 0


def test_bad_paths_are_refused_with_the_path_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"'{missing}' does not exist; give a run directory"):
        report_command([missing], None)
    empty = tmp_path / "empty"
    make_failed_run(empty / "run", seed=0, error="x")
    with pytest.raises(ValueError, match=f"'{empty}' holds no finished run.*bmrs resume"):
        report_command([empty], None)
    good, broken = make_run(tmp_path / "good", seed=1), make_run(tmp_path / "broken", seed=0)
    (broken / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"'{broken / 'report.json'}' is not a readable run report.*bmrs resume {broken}"):
        report_command([good, broken], None)
    listed = make_run(tmp_path / "listed", seed=0)
    (listed / "report.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=f"'{listed / 'report.json'}' is not a readable run report"):
        report_command([listed], None)
    # Every report is read before any is written: the good run's report.md is not half the job done.
    assert not (good / "report.md").exists()
    # Through the CLI's handler: one `bmrs: error:` line and exit 2.
    assert report_from_args(parse(["report", str(missing)])) == 2
    assert capsys.readouterr().err == (f"bmrs: error: '{missing}' does not exist; give a run directory "
                                       "(runs/<flow>/<run-id>), a seed group or a folder holding runs\n")


def test_an_output_folder_that_is_a_run_is_refused(tmp_path):
    first, second = make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)
    with pytest.raises(ValueError, match="is a run directory, whose report.md is the run's own"):
        report_command([first, second], first)
    assert not (second / "report.md").exists()  # refused before anything was written
