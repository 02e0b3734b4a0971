"""The comparison directory's parts: which dense checkpoint a run accepts, how it is shared, and
what an existing run directory is taken for."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from compare_cases import FLOW, write_flows

from bmrs.train import KLWeighting
from pipeline.compare import plan
from pipeline.compare.methods import method_config, parse_method
from pipeline.config import load_flow
from pipeline.stages import steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    base = load_flow(write_flows(folder), FLOW)
    data = steps.load_data(base)
    dense = folder / "dense"
    plan.train_dense(method_config(base, parse_method("none", base), seed=0), data, dense)
    return base, data, dense


@pytest.mark.parametrize("spec", ["none", "bmrs_n", "bmrs_u:4", "snr:threshold=2", "etheta", "l2", "grad"])
def test_one_dense_checkpoint_is_every_methods_baseline(setup, spec):
    """The fingerprint records every training setting but progress; the methods of a comparison
    differ only in the criterion, which the dense training replaces by None."""
    base, data, dense = setup
    method = parse_method(spec, base)
    config = method_config(base, method, seed=0, layer_ratios={"1.noise": 0.25, "3.noise": 0.5} if method.at_ratio_source else None)
    plan.check_dense(dense, config, data)


def test_the_dense_checkpoint_records_settings_the_dense_model_never_reads(setup):
    """Why only the criterion may vary: kl_weighting (or finetune_noise, prune_start, ...) changes
    nothing in a model without noise layers, yet the fingerprint holds it, so a run under another
    value would refuse the shared checkpoint."""
    base, data, dense = setup
    other = replace(base, train=replace(base.train, kl_weighting=KLWeighting.LAYER_MEAN))
    with pytest.raises(ValueError, match="kl_weighting: 'elbo' in the checkpoint, 'layer_mean' now"):
        plan.check_dense(dense, other, data)
    with pytest.raises(ValueError, match="seed: 0 in the checkpoint, 1 now"):
        plan.check_dense(dense, method_config(base, parse_method("snr", base), seed=1), data)


def test_sharing_links_the_baseline_and_gives_the_dense_method_its_model(setup, tmp_path):
    base, _, dense = setup
    source = dense / "baseline" / "checkpoint.pt"
    snr = method_config(base, parse_method("snr", base), seed=0)
    assert plan.share_dense(dense, tmp_path / "snr", snr) == [tmp_path / "snr" / "baseline" / "checkpoint.pt"]
    assert os.path.samefile(tmp_path / "snr" / "baseline" / "checkpoint.pt", source)
    assert (tmp_path / "snr" / "baseline" / "history.json").read_bytes() == (dense / "baseline" / "history.json").read_bytes()
    assert not (tmp_path / "snr" / "train").exists()

    none = method_config(base, parse_method("none", base), seed=0)
    placed = plan.share_dense(dense, tmp_path / "none", none)
    assert placed == [tmp_path / "none" / folder / "checkpoint.pt" for folder in ("baseline", "train")]
    assert all(os.path.samefile(path, source) for path in placed)
    # Without a baseline stage only the dense method uses it; a stale file there is replaced.
    alone = replace(none, baseline=replace(none.baseline, enabled=False))
    (tmp_path / "alone" / "train").mkdir(parents=True)
    (tmp_path / "alone" / "train" / "checkpoint.pt").write_bytes(b"stale")
    assert plan.share_dense(dense, tmp_path / "alone", alone) == [tmp_path / "alone" / "train" / "checkpoint.pt"]
    assert os.path.samefile(tmp_path / "alone" / "train" / "checkpoint.pt", source)
    assert not (tmp_path / "alone" / "baseline").exists() and not list((tmp_path / "alone" / "train").glob(".*partial"))
    pruned_alone = replace(snr, baseline=replace(snr.baseline, enabled=False))
    assert not plan.needs_dense(pruned_alone) and plan.needs_dense(alone) and plan.needs_dense(snr)


def test_an_existing_directory_is_new_begun_finished_or_refused(setup, tmp_path):
    base, _, _ = setup
    config = method_config(base, parse_method("snr", base), seed=0)
    run = tmp_path / "snr" / "seed0"
    assert plan.inspect(run, config) is plan.Found.NEW
    steps.start_run_dir(config, run)
    assert plan.inspect(run, config) is plan.Found.BEGUN
    (run / "report.json").write_text("{}")
    assert plan.inspect(run, config) is plan.Found.FINISHED
    quiet = replace(config, train=replace(config.train, progress=not config.train.progress))
    assert plan.inspect(run, quiet) is plan.Found.FINISHED  # progress bars change no result
    other = method_config(base, parse_method("snr:threshold=2", base), seed=0)
    with pytest.raises(ValueError, match=r"holds a run made under other settings \(train.criterion.threshold: 1.0 there, 2.0 now\)"):
        plan.inspect(run, other)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable run directory .*choose another --out, or delete"):
        plan.inspect(run, config)


def test_layer_ratios_unknown_yet_are_left_out_of_the_comparison(setup, tmp_path):
    base, _, _ = setup
    method = parse_method("l2", base)
    run = tmp_path / "l2"
    steps.start_run_dir(method_config(base, method, 0, {"1.noise": 0.25, "3.noise": 0.5}), run)
    later = method_config(base, method, 0, {"1.noise": 0.5, "3.noise": 0.5})
    assert plan.inspect(run, later, without_layer_ratios=True) is plan.Found.BEGUN
    with pytest.raises(ValueError, match=r"train.criterion.layer_ratios.1.noise: 0.25 there, 0.5 now"):
        plan.inspect(run, later)
    assert json.loads((run / "config.json").read_text())["train"]["criterion"]["layer_ratios"] == {"1.noise": 0.25, "3.noise": 0.5}


def test_fractions_without_checkpoint_or_history_name_the_fix(setup, tmp_path):
    base, data, _ = setup
    config = method_config(base, parse_method("bmrs_n", base), seed=0)
    with pytest.raises(ValueError, match="neither train/checkpoint.pt nor a readable train/history.json"):
        plan.layer_fractions(config, data, tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "history.json").write_text(json.dumps([{"epoch": 1, "alive": {"other.noise": 3}}]))
    with pytest.raises(ValueError, match="name other noise layers than flow 'tiny' builds"):
        plan.layer_fractions(config, data, tmp_path)
