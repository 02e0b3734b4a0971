"""``benchmarks.serve_first_report``'s workspace is a flows file the product itself accepts."""
from __future__ import annotations

from benchmarks.serve_first_report import INTERVAL_S, REPO, workspace
from pipeline.config import load_flow


def test_the_workspace_is_the_default_flow_on_a_schedule(tmp_path):
    tiny = load_flow(workspace(tmp_path / "tiny", full=False), "nightly")
    full = load_flow(workspace(tmp_path / "full", full=True), "nightly")
    default = load_flow(REPO / "flows.yaml", "default")
    for config in (tiny, full):
        assert config.schedule is not None and config.schedule.interval == INTERVAL_S
        assert config.model == default.model and config.noise == default.noise
    assert (tiny.train.epochs, tiny.train.finetune_epochs, tiny.data.max_train_examples, tiny.energy.enabled) == (1, 0, 2000, False)
    assert full.train == default.train and full.data == default.data
    assert tiny.output.runs_dir == str(tmp_path / "tiny" / "runs")
