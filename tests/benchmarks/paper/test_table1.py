"""benchmarks.paper.table1 end to end on a tiny budget: the real command path, in process."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.paper import table1
from benchmarks.paper.experiment import run_record, train_and_measure
from benchmarks.paper.table1_report import PAPER
from bmrs.train import KLWeighting

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"Fashion-MNIST is not installed at {FASHION_MNIST}"
)
# Posteriors started near the reduced prior, so that bmrs_n prunes within two tiny epochs and l2/grad get
# fractions other than zero to follow.
NEAR_ZERO = {"init_mu": -16.0, "init_log_sigma": 1.0}
SMALL = ("data.max_train_examples=256",)
NOISE = tuple(f"noise.{key}={value}" for key, value in NEAR_ZERO.items())
TINY = ["--models", "mlp", "--seeds", "0", "--epochs", "2", "--finetune-epochs", "1",
        *(arg for pair in SMALL + NOISE for arg in ("--set", pair))]  # fmt: skip
RECIPE = table1.Recipe(epochs=2, finetune_epochs=1, overrides=SMALL + NOISE)


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch):
    monkeypatch.setenv("BMRS_COMPILE", "0")  # compiling the noise kernels costs more than these runs


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BMRS_COMPILE", "0")
        table1.main([*TINY, "--out", str(out)])
    return out


def raw(out: Path, method: str) -> Path:
    return out / "raw" / f"fashion_mnist-mlp-{method}-seed0.json"


def load(out: Path, method: str) -> dict:
    return json.loads(raw(out, method).read_text())


def mtimes(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted((out / "raw").glob("*.json"))}


def test_every_method_stored_with_its_spec(first_run):
    assert len(mtimes(first_run)) == len(table1.METHODS)
    bmrs_n = load(first_run, "bmrs_n")
    for method in table1.METHODS:
        stored = load(first_run, method)
        ratios = table1.pruned_fractions(bmrs_n) if method in ("l2", "grad") else None
        assert stored["spec"] == run_record(table1.run_config("mlp", method, 0, RECIPE, ratios))
        assert stored["method"] == method and stored["model"] == "mlp" and stored["seed"] == 0
        assert stored["spec"]["train"]["batch_size"] == 128 and stored["spec"]["train"]["lr"] == 1.5e-3
        assert stored["spec"]["model_options"] == {"hidden_width": 150, "hidden_layers": 1}
        assert 0.0 <= stored["test"]["accuracy"] <= 1.0 and len(stored["history"]) == 3
    assert load(first_run, "none")["spec"]["noise"] is None
    assert load(first_run, "none")["test"]["compression"] == 0.0


def test_l2_and_grad_prune_at_bmrs_n_fractions(first_run):
    bmrs_n = load(first_run, "bmrs_n")
    fractions = {name: (size - bmrs_n["history"][-1]["alive"][name]) / size for name, size in bmrs_n["layer_sizes"].items()}
    assert set(fractions) == {"1.noise"} and 0.0 < fractions["1.noise"] < 1.0
    for method in ("l2", "grad"):
        stored = load(first_run, method)
        assert stored["layer_ratios"] == fractions
        assert stored["spec"]["train"]["criterion_settings"]["layer_ratios"] == fractions
        assert stored["spec"]["train"]["prune_start"] == 2
        alive = [record["alive"]["1.noise"] for record in stored["history"]]
        assert alive == [150, *[bmrs_n["history"][-1]["alive"]["1.noise"]] * 2], "pruned once, after the last training epoch"
        assert stored["test"]["compression"] == pytest.approx(bmrs_n["test"]["compression"])


def test_l2_after_a_bmrs_n_that_removed_nothing_is_that_run(tmp_path):
    # The authors' initialisation (theta ~ 1) prunes nothing in two tiny epochs.
    table1.main(["--models", "mlp", "--seeds", "0", "--epochs", "2", "--finetune-epochs", "1", "--set", SMALL[0],
                 "--methods", "l2", "--out", str(tmp_path)])  # fmt: skip
    bmrs_n, derived = load(tmp_path, "bmrs_n"), load(tmp_path, "l2")
    assert bmrs_n["test"]["compression"] == 0.0
    assert derived["derived_from"] == raw(tmp_path, "bmrs_n").name
    recipe = table1.Recipe(epochs=2, finetune_epochs=1, overrides=SMALL)
    _, trained = train_and_measure(table1.run_config("mlp", "l2", 0, recipe, {"1.noise": 0.0}))
    assert derived["spec"] == trained["spec"]
    assert derived["test"] == trained["test"], "training it gives the same numbers, bit for bit"
    assert [r["alive"] for r in derived["history"]] == [r["alive"] for r in trained["history"]]
    assert [r["val_nll"] for r in derived["history"]] == [r["val_nll"] for r in trained["history"]]


def test_layer_ratios_prune_once_after_training():
    config = table1.run_config("mlp", "l2", 0, table1.Recipe(epochs=2, finetune_epochs=1, overrides=SMALL), {"1.noise": 0.4})
    _, result = train_and_measure(config)
    assert [record["alive"]["1.noise"] for record in result["history"]] == [150, 90, 90]
    assert result["test"]["compression"] > 0.3


def test_second_invocation_recomputes_nothing(first_run, capsys):
    before = mtimes(first_run)
    capsys.readouterr()
    table1.main([*TINY, "--out", str(first_run)])
    printed = capsys.readouterr().out
    assert mtimes(first_run) == before
    assert printed.count(": cached;") == len(table1.METHODS) and "computed in" not in printed


def test_changed_train_setting_recomputes_only_what_it_changes(first_run, tmp_path):
    shutil.copytree(first_run / "raw", tmp_path / "raw")
    before = mtimes(tmp_path)
    table1.main([*TINY, "--out", str(tmp_path), "--methods", "none", "bmrs_n", "--set", "train.kl_scale=0.5"])
    after = mtimes(tmp_path)
    assert after[raw(tmp_path, "bmrs_n").name] != before[raw(tmp_path, "bmrs_n").name]
    assert after[raw(tmp_path, "none").name] == before[raw(tmp_path, "none").name], "kl_scale cannot change a dense run"
    assert load(tmp_path, "bmrs_n")["spec"]["train"]["kl_scale"] == 0.5


def test_table_has_one_row_per_method_with_the_papers_numbers(first_run):
    with open(first_run / "table1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == list(table1.METHODS)
    for row in rows:
        stored = load(first_run, row["method"])
        assert float(row["accuracy_mean"]) == pytest.approx(100 * stored["test"]["accuracy"])
        assert row["seeds"] == "0"
        paper = PAPER.get(("mlp", row["method"]))
        if paper is None:
            assert row["method"] == "grad" and row["paper_accuracy_mean"] == ""
        else:
            assert float(row["paper_compression_mean"]) == paper[0] and float(row["paper_accuracy_mean"]) == paper[2]
    markdown = (first_run / "table1.md").read_text()
    assert "| mlp | BMRS_N | 1 |" in markdown and "93.20 ± 0.66 | 84.99 ± 0.35 |" in markdown
    assert "python -m benchmarks.paper.table1 --models mlp" in markdown and "`train.lr=0.0015`" in markdown
    table = (first_run / "table1.csv").read_text()
    (first_run / "table1.csv").unlink()
    table1.main(["--models", "mlp", "--out", str(first_run), "--aggregate-only"])
    assert (first_run / "table1.csv").read_text() == table


def test_a_failed_run_is_reported_and_the_others_kept(first_run, tmp_path):
    shutil.copytree(first_run / "raw", tmp_path / "raw")
    damaged = load(tmp_path, "bmrs_n")
    del damaged["layer_sizes"]  # still cached (same spec), but no longer a usable ratio source
    raw(tmp_path, "bmrs_n").write_text(json.dumps(damaged))
    with pytest.raises(SystemExit) as exit_info:
        table1.main([*TINY, "--out", str(tmp_path), "--methods", "none", "bmrs_n", "l2"])
    message = str(exit_info.value.code)
    assert message.startswith("2 run(s) failed")
    assert "mlp bmrs_n seed 0: ValueError: the result records no layer_sizes" in message
    assert "mlp l2 seed 0: not run, because mlp bmrs_n seed 0 failed" in message
    assert (tmp_path / "table1.md").is_file() and raw(tmp_path, "none").is_file()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--set", "train.no_such_key=1"], "lenet5_fmnist_paper.train.no_such_key: unknown setting; valid settings of"),
        (["--set", "train.epochs=3"], "--set train.epochs cannot be overridden here: set by --epochs"),
        (["--set", "train.criterion=snr"], "set by --methods"),
        (["--set", "train.lr=fast"], "lenet5_fmnist_paper.train.lr: expected a finite number, got 'fast'"),
        (["--set", "train.kl_weighting=sum"], "is not one of ['elbo', 'layer_mean']"),
        (["--set", "noise.log_b=0.5"], "lenet5_fmnist_paper.noise: need log_a < log_b <= 0"),
        (["--set", "latency.repeats=3"], "benchmark runs use only the data, model, noise and train sections"),
        (["--set", "lr"], "expected key=value"),
        (["--methods", "bogus"], "unknown method 'bogus'; choose from none, l2"),
        (["--models", "resnet"], "unknown model 'resnet'"),
    ],
)
def test_bad_options_fail_before_training_in_one_line(arguments, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        table1.main(["--models", "lenet5", "--out", str(tmp_path), *arguments])
    assert exit_info.value.code == 2, "bad input exits as bmrs run does"
    err = capsys.readouterr().err
    assert err.startswith("table1: error: ") and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "raw").exists()


def test_set_reaches_every_run_typed_as_bmrs_run_types_it():
    recipe = table1.Recipe(overrides=("train.lr=1e-3", "train.kl_weighting=LAYER_MEAN", "train.prune_every=2", "noise.init_mu=-16"))
    config = table1.run_config("lenet5", "bmrs_u4", 1, recipe)
    assert (config.train.lr, config.train.kl_weighting, config.train.prune_every) == (1e-3, KLWeighting.LAYER_MEAN, 2)
    record = run_record(config)
    assert record["train"]["lr"] == 1e-3 and record["train"]["kl_weighting"] == "layer_mean" and record["noise"]["init_mu"] == -16.0
    assert record["train"]["criterion"] == "bmrs_u" and record["train"]["criterion_settings"]["p1"] == 4.0
    assert (record["train"]["batch_size"], record["train"]["seed"], record["train"]["epochs"]) == (32, 1, 50), "the flow's budget"
    dense = run_record(table1.run_config("lenet5", "none", 1, recipe))
    assert dense["noise"] is None and dense["train"]["criterion"] is None and dense["train"]["lr"] == 1e-3
    assert (dense["train"]["kl_weighting"], dense["train"]["prune_every"]) == ("elbo", 1), "noise-only settings stay at their defaults"
