"""benchmarks.prunable_by_epoch on a few hundred Fashion-MNIST images: it trains without pruning,
scores every epoch by each exact criterion, and writes what it measured."""
import json

import pytest

from benchmarks import prunable_by_epoch


def test_scores_each_epoch_without_pruning_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "default.json"
    overrides = ["data.max_train_examples=256", "train.progress=false", "train.batch_size=32"]
    argv = ["--flow", "default", "--epochs", "2", "--val-examples", "100", "--out", str(out)]
    assert prunable_by_epoch.main(argv + [arg for item in overrides for arg in ("--set", item)]) == 0
    result = json.loads(out.read_text())
    assert [row["epoch"] for row in result["rows"]] == [1, 2]
    assert result["steps_per_epoch"] == 8
    for row in result["rows"]:
        assert set(row["criteria"]) == {"bmrs_n", "bmrs_u4", "bmrs_u8"}
        for scored in row["criteria"].values():
            # Started narrow at mu = 0, no posterior is prunable after 16 steps under any exact rule.
            assert scored["kept"] == scored["structures"] == 220 and scored["compression"] == 0.0
            assert 0.0 <= scored["val_accuracy"] <= 1.0
    # Under the tempered KL every log sigma rises by at most Adam's step, lr per step, from -5.
    last = result["rows"][-1]
    assert -5.0 < last["log_sigma_median"] <= -5.0 + 16 * result["lr"] * 1.01
    assert "| 2 |" in out.with_suffix(".md").read_text()


def test_unknown_flow_is_one_line_and_exit_2(tmp_path, capsys):
    assert prunable_by_epoch.main(["--flow", "no_such_flow", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown flow 'no_such_flow'" in err[0]
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--val-examples", "0"]])
def test_counts_below_one_are_refused(bad):
    assert prunable_by_epoch.main(["--flow", "default", *bad]) == 2
