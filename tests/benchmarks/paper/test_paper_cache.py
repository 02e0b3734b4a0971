"""The committed raw results (hours of CPU training) stay valid: the runs each documented command
builds now, from the paper flows of flows.yaml with --set overrides, are the runs those files hold,
so a rerun reuses them without training and rewrites its report unchanged but for the command."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.paper import from_scratch, p1_sweep, rank_correlation, table1
from benchmarks.paper.experiment import run_record, same_run
from benchmarks.paper.runner import FLOWS, criterion_overrides, paper_config

RESULTS = Path(table1.__file__).parent / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
FROM_PRIOR = ["--epochs", "20", "--finetune-epochs", "40", "--set", "noise.init_mu=-20", "--set", "noise.init_log_sigma=5",
              "--set", "train.prune_start=20", "--set", "train.finetune_noise=expected"]  # fmt: skip
CLIMB = ["--models", "lenet5", "--methods", "bmrs_n", "--seeds", "0", "--epochs", "30", "--finetune-epochs", "0",
         "--set", "noise.init_mu=-20", "--set", "noise.init_log_sigma=5", "--set", "train.prune_start=30",
         "--set", "train.finetune_noise=expected"]  # fmt: skip
# Per results folder, the table1 commands that wrote it (README.md), in today's syntax.
TABLE1_COMMANDS = {
    "table1": [["--models", "mlp", "lenet5", "--seeds", "0", "1", "2", "--jobs", "2"]],
    "table1_from_prior": [
        ["--models", "mlp", "--methods", "none", "bmrs_n", "l2", "grad", "--seeds", "0", "1", "2", *FROM_PRIOR],
        ["--models", "lenet5", "--methods", "bmrs_n", "l2", "grad", "--seeds", "0", "1", "2", *FROM_PRIOR,
         "--set", "noise.start_on=[features]"],
    ],
    "table1_conv1_on": [["--models", "lenet5", "--methods", "bmrs_n", "l2", "grad", "--seeds", "0", "1", "2", *FROM_PRIOR,
                         "--set", "noise.start_on=[features.0]"]],
    "table1_per_layer": [["--models", "lenet5", "--methods", "bmrs_n", "--seeds", "0", "1", "2", *FROM_PRIOR,
                          "--set", "noise.start_on=[features]", "--set", "train.prune_start_by_layer={classifier.1: 9, classifier.3: 16}"]],
    "climb_lenet5/kl_scale_1": [[*CLIMB, "--set", "noise.start_on=[features]"]],
    "climb_lenet5/kl_scale_10": [[*CLIMB, "--set", "noise.start_on=[features]", "--set", "train.kl_scale=10"]],
    "climb_lenet5/kl_scale_100": [[*CLIMB, "--set", "noise.start_on=[features]", "--set", "train.kl_scale=100"]],
    "climb_lenet5/conv1_on": [[*CLIMB, "--set", "noise.start_on=[features.0]"]],
}


def stored(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("folder", list(TABLE1_COMMANDS))
def test_every_committed_table1_run_is_cached_for_the_command_that_made_it(folder):
    raw = RESULTS / folder / "raw"
    files = sorted(raw.glob("*.json"))
    assert files, f"no committed raw results under {raw}"
    matched = set()
    for argv in TABLE1_COMMANDS[folder]:
        args = table1._parser().parse_args([*argv, "--out", str(raw.parent)])
        recipe = table1._options(args)
        for path in files:
            result = stored(path)
            if result["model"] not in args.models:
                continue
            ratios = None
            if table1.METHODS[result["method"]].schedule is table1.Schedule.AT_RATIO_SOURCE:  # as execute gets them
                source = table1.raw_path(raw, "fashion_mnist", result["model"], table1.RATIO_SOURCE, result["seed"])
                ratios = table1.pruned_fractions(stored(source))
            config = table1.run_config(result["model"], result["method"], result["seed"], recipe, ratios)
            assert same_run(result["spec"], run_record(config)), f"{path.name} would be retrained by {argv}"
            matched.add(path.name)
    assert matched == {path.name for path in files}


@pytest.mark.parametrize(
    "module, argv, folder",
    [
        (p1_sweep, ["--model", "mlp", "--p1", "1", "2", "4", "8", "16"], "p1_sweep"),
        (p1_sweep, ["--model", "lenet5", "--p1", "1", "2", "4", "8", "16"], "p1_sweep"),
        (from_scratch, ["--model", "mlp", "--widths", "10", "32"], "from_scratch"),
        (from_scratch, ["--model", "lenet5", "--widths", "6,10,20,20", "6,9,11,10"], "from_scratch"),
        (rank_correlation, ["--model", "mlp"], "rank_correlation"),
        (rank_correlation, ["--model", "lenet5"], "rank_correlation"),
    ],
)
def test_every_committed_run_of_the_figures_is_cached_for_its_command(module, argv, folder):
    args = module._parser().parse_args([*argv, "--seeds", "0", "1", "2"])
    configs = module.run_configs(args)
    if module is from_scratch:
        configs = {f"{from_scratch.label(widths)}-seed{seed}": config for (widths, seed), config in configs[1].items()}
    elif module is p1_sweep:
        configs = {f"p1_{p1:g}-seed{seed}": config for (p1, seed), config in configs.items()}
    else:
        configs = {f"seed{seed}": config for seed, config in configs.items()}
    noisy = True if module is rank_correlation else None
    for name, config in configs.items():
        result = stored(RESULTS / folder / "raw" / f"fashion_mnist-{args.model}-{name}.json")
        assert same_run(result["spec"], run_record(config, noisy=noisy)), f"{name} would be retrained"
        if module is rank_correlation:
            wanted = json.loads(json.dumps([asdict(entry) for entry in rank_correlation.scored_criteria()]))
            assert rank_correlation._same_criteria(result["criteria"], wanted), f"{name} would be rescored"


def test_records_compare_with_every_criterion_setting_filled_in():
    config = paper_config(FLOWS, "mlp", "fashion_mnist", criterion_overrides("bmrs_u", {"p1": 8}))
    today = run_record(config)
    assert today["train"]["criterion_settings"] == {"p1": 8.0, "p2": 23.0}
    written_before = json.loads(json.dumps(today))
    written_before["train"]["criterion_settings"] = {"p1": 8.0}  # only what was given, as older records hold
    assert same_run(written_before, today) and same_run(today, written_before)
    bmrs_n = run_record(paper_config(FLOWS, "mlp", "fashion_mnist", []))
    assert same_run({**bmrs_n, "train": {**bmrs_n["train"], "criterion_settings": {}}}, bmrs_n)
    for changed in ({"p1": 4.0}, {"p1": 8.0, "p2": 20.0}):
        assert not same_run({**today, "train": {**today["train"], "criterion_settings": changed}}, today)
    assert not same_run({**today, "train": {**today["train"], "lr": 1e-3}}, today)
    assert not same_run({**today, "train": {**today["train"], "criterion": "no_such_criterion"}}, today)
    assert not same_run(None, today) and not same_run({"train": None}, today)


def test_set_changes_the_record_and_so_the_cache_key():
    lr = run_record(paper_config(FLOWS, "lenet5", "fashion_mnist", ["train.lr=1e-3"]))
    assert lr["train"]["lr"] == 1e-3
    assert not same_run(stored(RESULTS / "table1" / "raw" / "fashion_mnist-lenet5-bmrs_n-seed0.json")["spec"], lr)


def test_table1_rebuilds_its_committed_table_from_cache_without_training(tmp_path, monkeypatch, capsys):
    shutil.copytree(RESULTS / "table1" / "raw", tmp_path / "raw")
    monkeypatch.setattr(table1, "train_and_measure", lambda *a, **k: pytest.fail("a committed run was trained again"))
    argv = ["--models", "mlp", "lenet5", "--seeds", "0", "1", "2", "--out", str(tmp_path)]
    table1.main(argv)
    assert capsys.readouterr().out.count(": cached;") == 48
    committed = (RESULTS / "table1" / "table1.md").read_text().splitlines()
    rebuilt = (tmp_path / "table1.md").read_text().splitlines()
    changed = [(old, new) for old, new in zip(committed, rebuilt) if old != new]
    assert len(committed) == len(rebuilt) and changed == [(
        "    python -m benchmarks.table1 --aggregate-only --models mlp lenet5 --seeds 0 1 2 --out benchmarks/results/table1",
        "    python -m benchmarks.paper.table1 " + " ".join(argv),
    )]  # fmt: skip
    assert (tmp_path / "table1.csv").read_text() == (RESULTS / "table1" / "table1.csv").read_text()
    assert sorted(p.read_text() for p in (tmp_path / "raw").glob("*.json")) == sorted(
        p.read_text() for p in (RESULTS / "table1" / "raw").glob("*.json")
    ), "no raw file was rewritten"


@needs_fmnist
def test_p1_sweep_rebuilds_its_committed_report_from_cache_without_training(tmp_path, monkeypatch):
    shutil.copytree(RESULTS / "p1_sweep" / "raw", tmp_path / "raw")
    monkeypatch.setattr(p1_sweep, "train_and_measure", lambda *a, **k: pytest.fail("a committed run was trained again"))
    argv = ["--model", "mlp", "--p1", "1", "2", "4", "8", "16", "--seeds", "0", "1", "2", "--jobs", "1", "--out", str(tmp_path)]
    assert p1_sweep.main(argv) == 0
    report, committed = stored(tmp_path / "fashion_mnist-mlp.json"), stored(RESULTS / "p1_sweep" / "fashion_mnist-mlp.json")
    assert report["command"] == "python -m benchmarks.paper.p1_sweep " + " ".join(argv)
    assert {**report, "command": committed["command"]} == committed
    markdown = (tmp_path / "fashion_mnist-mlp.md").read_text().splitlines()
    assert markdown[:-1] == (RESULTS / "p1_sweep" / "fashion_mnist-mlp.md").read_text().splitlines()[:-1]
