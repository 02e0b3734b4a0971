"""One real ``bmrs compare`` (none, bmrs_n, l2, snr_ratio; one seed) through the CLI's own run path:
the dense baseline is trained once and every run holds that very file; l2 and snr_ratio end at
bmrs_n's per-layer sizes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from compare_cases import FLOW, write_blobs, write_flows
from prefect_env import prefect_environment

from bmrs.nn.noise import noise_modules
from pipeline.compare import plan
from pipeline.config import flow_config_from_dict, load_flow
from pipeline.stages import steps

REPO = Path(__file__).resolve().parents[3]
# Posteriors started low enough that one epoch of BMRS_N removes part of the hidden layer.
SETTINGS = ["model.hidden_width=24", "model.hidden_layers=1", "train.batch_size=32", "train.lr=0.05",
            "noise.init_mu=-13.5", "noise.init_log_sigma=4"]  # fmt: skip


def test_compare_trains_the_dense_baseline_once_and_shares_it_bit_for_bit(tmp_path):
    flows = write_flows(tmp_path)
    write_blobs(tmp_path / "blobs.npz", train=480, test=200)
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    command = [sys.executable, "-m", "pipeline.compare", str(flows), "--flow", FLOW, "--methods", "l2", "snr_ratio", "none", "--seeds", "0",
               "--no-progress", *sets]  # fmt: skip

    def compare() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO, env=prefect_environment(tmp_path), capture_output=True, text=True, timeout=900)

    result = compare()
    out = tmp_path / "runs" / FLOW / "compare"
    states = {row["method"]: row["state"] for row in json.loads((out / "compare.json").read_text())["runs"]}
    assert states == {"none": "completed", "bmrs_n": "completed", "l2": "completed", "snr_ratio": "completed"}, result.stderr
    assert result.returncode == 0, result.stderr
    assert "running bmrs_n too: l2, snr_ratio prune at its per-layer fractions" in result.stdout
    assert result.stdout.count("dense baseline of seed 0: training once") == 1
    assert f"comparison report {out / 'report.md'}" in result.stdout

    runs = {label: out / label / "seed0" for label in ("none", "bmrs_n", "l2", "snr_ratio")}
    dense = out / "dense" / "seed0" / "baseline" / "checkpoint.pt"
    dense_bytes = dense.read_bytes()
    holders = [run / "baseline" / "checkpoint.pt" for run in runs.values()] + [runs["none"] / "train" / "checkpoint.pt"]
    for path in holders:  # the file trained once: no run wrote a checkpoint of its own there
        assert os.path.samefile(path, dense) and path.read_bytes() == dense_bytes, path
    reports = {label: json.loads((run / "report.json").read_text()) for label, run in runs.items()}
    # One dense reference: every report measured the same model; the dense method's model is it.
    for report in reports.values():
        report["dense"]["onnx"].pop("path")  # each run exports its own dense.onnx
    for label in ("bmrs_n", "l2", "snr_ratio"):
        assert reports[label]["dense"] == reports["none"]["dense"]
    assert reports["none"]["pruned"]["accuracy"] == reports["none"]["dense"]["accuracy"]

    # l2 and snr_ratio removed, per noise layer, the fraction the bmrs_n run's final masks had removed.
    base = load_flow(flows, FLOW, SETTINGS)
    data = steps.load_data(base)
    masked = steps.restore(base, data, runs["bmrs_n"] / "train" / "checkpoint.pt", noisy=True)
    fractions = {name: (noise.num_structures - int(noise.mask.sum())) / noise.num_structures for name, noise in noise_modules(masked).items()}
    assert 0 < fractions["1.noise"] < 1  # part of the layer: l2 has something to match
    for label in ("l2", "snr_ratio"):
        criterion = json.loads((runs[label] / "config.json").read_text())["train"]["criterion"]
        assert criterion["name"] == label and criterion["layer_ratios"] == fractions
        assert reports[label]["pruned"]["widths"] == reports["bmrs_n"]["pruned"]["widths"]
        assert reports[label]["pruned"]["params"] == reports["bmrs_n"]["pruned"]["params"]
    # Results kept without their checkpoints (as committed) still give the same fractions: the
    # training history's last 'alive' counts are the final masks' sums.
    kept = tmp_path / "kept_without_checkpoints"
    shutil.copytree(runs["bmrs_n"], kept, ignore=shutil.ignore_patterns("*.pt", "*.onnx"))
    bmrs_n = json.loads((runs["bmrs_n"] / "config.json").read_text())
    assert plan.layer_fractions(flow_config_from_dict(bmrs_n), data, kept) == fractions

    # The same command again reuses every run and trains nothing.
    before = {path: path.read_bytes() for run in runs.values() for path in (run / "report.json", run / "train" / "checkpoint.pt")}
    again = compare()
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished before, reusing") == 4 and "training once" not in again.stdout
    assert all(path.read_bytes() == content for path, content in before.items())
