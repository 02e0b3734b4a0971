"""Several runs compared: groups by method label, mean ± sample std over seeds, the dense reference,
runs left out, the Pareto front, the plots and a strict-JSON report.json."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from reporting_fakes import PNG_MAGIC, make_failed_run, make_run, strict_json

from bmrs.train.metrics import mean_std
from pipeline.reporting import write_comparison
from pipeline.reporting.comparison import aggregate, config_differences, pareto_front

BMRS_N = [(0, 0.876, 0.62, 2.9), (1, 0.870, 0.63, 2.7), (2, 0.880, 0.64, 3.1)]  # seed, accuracy, compression, speed-up
BMRS_U = [(0, 0.860, 0.70, 3.5), (1, 0.850, 0.72, 3.6)]
WARNING = "pruned accuracy 10.0% is within 5 points of chance (10.0%): the model collapsed"


@dataclass(frozen=True)
class Written:
    root: Path
    runs: list[Path]
    out: Path
    text: str
    data: dict


def make_runs(tmp_path: Path) -> list[Path]:
    dirs = [make_run(tmp_path / f"n{seed}", seed=seed, accuracy=a, compression=c, speedup=s) for seed, a, c, s in BMRS_N]
    dirs += [make_run(tmp_path / f"u{seed}", method="bmrs_u", settings={"p1": 4.0}, seed=seed, accuracy=a, compression=c,
                      speedup=s) for seed, a, c, s in BMRS_U]  # fmt: skip
    dirs.append(make_run(tmp_path / "u2", method="bmrs_u", settings={"p1": 4.0}, seed=2, accuracy=0.1, compression=0.99,
                         speedup=9.0, degraded=WARNING))  # fmt: skip
    dirs.append(make_failed_run(tmp_path / "u3", seed=3, error="TrainingDivergedError: loss is nan at epoch 2"))
    return dirs


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    """One comparison of the runs above, shared by the tests that only read it (plots take a while)."""
    root = tmp_path_factory.mktemp("comparison")
    dirs = make_runs(root)
    out = root / "cmp"
    text = write_comparison(dirs, out).read_text()
    return Written(root, dirs, out, text, strict_json(out / "report.json"))




def test_seeds_of_a_method_become_mean_and_sample_std(written):
    text, data = written.text, written.data
    groups = {group["label"]: group for group in data["groups"]}
    assert list(groups) == ["bmrs_n", "bmrs_u (p1=4)"]
    assert groups["bmrs_n"]["seeds"] == [0, 1, 2] and groups["bmrs_u (p1=4)"]["seeds"] == [0, 1]
    for label, rows in (("bmrs_n", BMRS_N), ("bmrs_u (p1=4)", BMRS_U)):
        for index, name in ((1, "accuracy"), (2, "compression"), (3, "speedup_p50_b256")):
            mean, std = mean_std([row[index] for row in rows])
            stat = groups[label]["metrics"][name]
            assert (stat["mean"], stat["std"], stat["n"]) == (pytest.approx(mean), pytest.approx(std), len(rows))
        joules = [1.2 / row[3] for row in rows]
        assert groups[label]["metrics"]["energy_j_per_1k"]["values"] == pytest.approx(joules)
        assert groups[label]["metrics"]["training_energy_kwh"]["mean"] == pytest.approx(0.0025)
    accuracy, accuracy_std = mean_std([0.876, 0.870, 0.880])
    compression, compression_std = mean_std([0.62, 0.63, 0.64])
    row = next(line for line in text.splitlines() if line.startswith("| bmrs_n |"))
    assert row.startswith(f"| bmrs_n | 3 (0, 1, 2) | {100 * accuracy:.1f} ± {100 * accuracy_std:.1f}% | 0.3252 ± 0.0000 "
                          f"| 0.0289 ± 0.0000 | {100 * compression:.1f} ± {100 * compression_std:.1f}% | n/a | n/a | n/a | 61,706 ± 0 |")
    speedup, speedup_std = mean_std([2.9, 2.7, 3.1])
    assert f"| {speedup:.2f}x ± {speedup_std:.2f} |" in row


def test_degraded_and_unfinished_runs_are_listed_apart_and_left_out(written):
    text, data, tmp_path = written.text, written.data, written.root
    excluded = {entry["run_dir"]: entry for entry in data["excluded"]}
    assert excluded[str(tmp_path / "u2")] == {"run_dir": str(tmp_path / "u2"), "label": "bmrs_u (p1=4)",
                                              "state": "degraded", "warning": WARNING}
    assert excluded[str(tmp_path / "u3")]["state"] == "failed"
    assert "seed 2, degraded): " + WARNING in text
    assert "(bmrs_n, seed 3, failed): TrainingDivergedError: loss is nan at epoch 2" in text
    # The collapsed seed's 10% accuracy is in no mean.
    assert all(0.1 not in group["metrics"]["accuracy"]["values"] for group in data["groups"])
    assert str(tmp_path / "u2") not in [run["run_dir"] for run in data["runs"]]


def test_the_dense_reference_counts_each_seeds_baseline_once(written):
    dense = written.data["dense"]
    assert dense["label"] == "dense reference" and dense["seeds"] == [0, 1, 2]  # 5 runs, 3 seeds' baselines
    assert dense["metrics"]["accuracy"]["mean"] == pytest.approx(0.8823)
    assert dense["metrics"]["energy_j_per_1k"]["mean"] == pytest.approx(1.2)
    assert dense["metrics"]["training_energy_kwh"]["mean"] == pytest.approx(0.0015)  # the baseline's stage


def test_without_baselines_the_dense_reference_is_the_none_runs_model(tmp_path):
    def no_baseline(report):
        report["dense"].update(accuracy=None, nll=None, ece=None)

    dirs = [make_run(tmp_path / f"n{seed}", seed=seed, edit=no_baseline) for seed in (0, 1)]
    dirs += [make_run(tmp_path / f"d{seed}", method="none", seed=seed, accuracy=acc, compression=0.0, speedup=1.0,
                      edit=no_baseline) for seed, acc in ((0, 0.90), (1, 0.88))]  # fmt: skip
    data = strict_json(write_comparison(dirs, tmp_path / "cmp").parent / "report.json")
    assert data["dense"]["metrics"]["accuracy"]["values"] == pytest.approx([0.90, 0.88])
    assert [group["label"] for group in data["groups"]] == ["bmrs_n", "none"]


def test_pareto_front_on_a_hand_made_case():
    points = [
        (1.0, 0.80),   # 0: fastest of the accurate ones: on the front
        (2.0, 0.90),   # 1: most accurate at its latency: on the front
        (1.5, 0.70),   # 2: slower and less accurate than 0
        (3.0, 0.90),   # 3: as accurate as 1 but slower
        (None, 0.99),  # 4: no latency measured: never on the front
        (0.5, 0.50),   # 5: fastest of all: on the front
        (2.0, 0.90),   # 6: the same point as 1: neither beats the other
    ]  # fmt: skip
    assert pareto_front(points) == [0, 1, 5, 6]
    assert pareto_front([]) == []


def test_the_front_in_the_report_follows_the_group_means(written, tmp_path):
    # bmrs_n: faster than dense, a little less accurate; bmrs_u: faster still, less accurate: all three on the front.
    assert written.data["pareto_front"]["labels"] == ["dense reference", "bmrs_n", "bmrs_u (p1=4)"]
    slow = make_run(tmp_path / "slow", method="snr", seed=0, accuracy=0.5, speedup=1.5)  # beaten by bmrs_n on both
    data = strict_json(write_comparison([*written.runs, slow], tmp_path / "cmp2").parent / "report.json")
    assert "snr" not in data["pareto_front"]["labels"]
    assert {group["label"]: group["on_pareto_front"] for group in data["groups"]}["snr"] is False


def test_plots_are_written_as_pngs(written):
    out, text = written.out, written.text
    for name in ("accuracy_vs_compression.png", "latency_vs_accuracy.png", "energy_per_1k.png"):
        content = (out / name).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 5000
        assert f"![{name}]({name})" in text


def test_runs_without_energy_leave_its_plot_out_and_the_json_strict(tmp_path):
    def nan_nll(report):
        report["pruned"]["nll"] = float("nan")

    dirs = [make_run(tmp_path / f"r{seed}", seed=seed, energy="missing", edit=nan_nll) for seed in (0, 1)]
    out = tmp_path / "cmp"
    (out).mkdir()
    (out / "energy_per_1k.png").write_bytes(PNG_MAGIC)  # an earlier comparison's plot
    text = write_comparison(dirs, out, title="no energy").read_text()
    data = strict_json(out / "report.json")
    assert data["plots"]["energy_per_1k.png"] is None and not (out / "energy_per_1k.png").exists()
    assert (out / "latency_vs_accuracy.png").is_file()
    assert "nll" not in data["groups"][0]["metrics"]  # NaN seeds give no figure rather than a NaN mean
    assert text.startswith("# no energy\n")
    assert "Energy: not measured (this report predates energy measurement)." in text
    assert "nan" not in text.lower()


def test_labels_name_what_else_varies_and_differences_within_a_group_are_noted(tmp_path):
    def layer_mean(report):
        report["settings"]["kl_weighting"] = "layer_mean"

    dirs = [make_run(tmp_path / "elbo", seed=0), make_run(tmp_path / "lm", seed=0, edit=layer_mean)]
    config = json.loads((dirs[1] / "config.json").read_text())
    config["train"]["epochs"] = 9
    (dirs[1] / "config.json").write_text(json.dumps(config))
    dirs.append(make_run(tmp_path / "lm1", seed=1, edit=layer_mean))
    text = write_comparison(dirs, tmp_path / "cmp").read_text()
    assert "| bmrs_n [kl_weighting=elbo] | 1 (0) |" in text
    assert "| bmrs_n [kl_weighting=layer_mean] | 2 (0, 1) |" in text
    assert "the runs of bmrs_n [kl_weighting=layer_mean] differ in more than the seed: train.epochs" in text


def test_aggregate_and_config_differences():
    stats = aggregate([{"a": 1.0, "b": None}, {"a": 3.0, "b": float("inf")}, {"a": 2.0}])
    assert stats == {"a": {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 3.0, 2.0]}}
    configs = [{"train": {"seed": 0, "lr": 0.1}, "output": {"runs_dir": "a"}},
               {"train": {"seed": 1, "lr": 0.2}, "output": {"runs_dir": "b"}}]
    assert config_differences(configs) == ["train.lr"]
    # Fractions per layer taken from each seed's ratio source are what the group is, not a difference.
    at_widths = [{"train": {"seed": seed, "criterion": {"name": "l2", "layer_ratios": {"a": fraction}}}}
                 for seed, fraction in ((0, 0.5), (1, 0.25))]  # fmt: skip
    assert config_differences(at_widths) == []


def test_a_run_directory_is_refused_as_the_output(written):
    with pytest.raises(ValueError, match=f"{written.runs[0]}.*is a run directory.*--out"):
        write_comparison(written.runs, written.runs[0])


def test_nothing_to_compare_names_the_runs(tmp_path):
    dirs = [make_run(tmp_path / "bad", degraded=WARNING), make_failed_run(tmp_path / "failed", seed=1, error="x")]
    with pytest.raises(ValueError, match="no finished run with its checks passed.*bad \\(degraded\\)"):
        write_comparison(dirs, tmp_path / "cmp")


def test_training_energy_is_unknown_when_a_stage_ran_unmeasured(tmp_path):
    def unmeasured_fine_tuning(report):
        report["energy"]["stages"]["fine_tuning"] = {"available": False, "reason": "attempt 1 of 1: tracker failed"}

    def no_fine_tuning(report):
        del report["energy"]["stages"]["fine_tuning"]

    dirs = [make_run(tmp_path / "a", seed=0, edit=unmeasured_fine_tuning),
            make_run(tmp_path / "b", seed=1, edit=no_fine_tuning), make_run(tmp_path / "c", seed=2)]
    data = strict_json(write_comparison(dirs, tmp_path / "cmp").parent / "report.json")
    assert data["groups"][0]["metrics"]["training_energy_kwh"]["values"] == pytest.approx([0.002, 0.0025])


def test_l2_at_each_seeds_own_fractions_is_one_method_and_differing_baselines_are_named(tmp_path):
    """``bmrs compare --widths-of`` gives l2 each seed's own per-layer fractions: one group, one
    short label. Runs of one seed measured against different dense models (a baseline retrained
    after its checkpoint was deleted) are named, since the dense row stands for one of them."""
    def dense_accuracy(value):
        def edit(report):
            report["dense"]["accuracy"] = value
        return edit

    dirs = [make_run(tmp_path / f"l2_{seed}", method="l2", seed=seed, settings={"layer_ratios": {"1.noise": 0.25 * (seed + 1)}},
                     edit=dense_accuracy(0.9 if seed == 0 else 0.88)) for seed in (0, 1)]  # fmt: skip
    dirs += [make_run(tmp_path / f"none_{seed}", method="none", seed=seed, edit=dense_accuracy(0.9)) for seed in (0, 1)]
    text = write_comparison(dirs, tmp_path / "cmp").read_text()
    data = strict_json(tmp_path / "cmp" / "report.json")
    assert [(group["label"], group["seeds"]) for group in data["groups"]] == [("l2 (layer_ratios=per layer)", [0, 1]), ("none", [0, 1])]
    assert data["dense_disagreements"] == ["seed 1: 88.00% in l2 (layer_ratios=per layer); 90.00% in none"]
    assert "measured against different dense models" in text and "seed 1: 88.00% in l2" in text
    assert "seed 0:" not in " ".join(data["dense_disagreements"])
