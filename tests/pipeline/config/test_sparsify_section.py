"""The ``sparsify`` section (BMR on individual weights): its settings are ``SparsifyConfig``'s, the
method it names, the shipped flows that use it, and bad values refused in one line with exit 2."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pipeline_data import write_blobs

from bmrs.criteria import BMRSLogUniform
from bmrs.sparsify import SparsifyConfig, SparsifyOptimizer
from pipeline.cli import main
from pipeline.config import ConfigError, flow_config_from_dict, load_flow
from pipeline.config.schema import SparsifySection
from pipeline.stages.sparsifying import check_sparsifiable

FLOWS = Path(__file__).resolve().parents[3] / "flows.yaml"
FLOW_DECIDES = {"seed", "progress", "device"}  # train.seed, train.progress, the CPU the flow trains on


def test_the_section_holds_every_library_setting_but_those_the_flow_decides_with_its_defaults():
    section = {f.name: f.default for f in dataclasses.fields(SparsifySection)}
    library = {f.name: f.default for f in dataclasses.fields(SparsifyConfig) if f.name not in FLOW_DECIDES}
    assert section.pop("enabled") is False
    assert section == library


def test_off_by_default_and_the_method_names_what_runs():
    default = load_flow(FLOWS, "default")
    assert default.sparsify.enabled is False and default.method == "bmrs_u"
    assert load_flow(FLOWS, "default", ["train.criterion=null"]).method == "none"
    combined = load_flow(FLOWS, "default", ["sparsify.enabled=true"])
    assert combined.method == "bmrs_u+bmr_weights" and combined.train.criterion == BMRSLogUniform(p1=8)
    weights = load_flow(FLOWS, "default", ["sparsify.enabled=true", "train.criterion=null"])
    assert weights.method == "bmr_weights"


def test_the_shipped_flows_are_the_default_flow_with_bmr_on_weights():
    default = load_flow(FLOWS, "default")
    weights, combined = load_flow(FLOWS, "lenet5_bmr_weights"), load_flow(FLOWS, "lenet5_combined")
    assert (weights.method, combined.method) == ("bmr_weights", "bmrs_u+bmr_weights")
    assert weights.sparsify == combined.sparsify and weights.sparsify.enabled
    # Everything else is the default flow's: its data, model, budget (bar the criterion) and measurements.
    assert combined.train == default.train and weights.train == dataclasses.replace(default.train, criterion=None)
    for name in ("data", "model", "noise", "baseline", "export", "latency", "energy", "checks"):
        assert getattr(weights, name) == getattr(default, name) == getattr(combined, name), name


def test_overrides_reach_the_library_config_and_round_trip_through_config_json():
    config = load_flow(FLOWS, "default", [
        "sparsify.enabled=true", "sparsify.epochs=3", "sparsify.max_rounds=2", "sparsify.spike_ratio=0",
        "sparsify.optimizer=adabelief", "sparsify.lr=1e-4", "train.seed=7", "train.progress=false",
    ])  # fmt: skip
    library = config.sparsify_config()
    assert (library.epochs, library.max_rounds, library.spike_ratio, library.lr) == (3, 2, 0.0, 1e-4)
    assert library.optimizer is SparsifyOptimizer.ADABELIEF
    assert (library.seed, library.progress, library.device) == (7, False, "cpu")
    assert config.to_dict()["sparsify"]["optimizer"] == "adabelief"
    assert flow_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # A run directory written before the section existed still resumes, with it off.
    tree = load_flow(FLOWS, "default").to_dict()
    del tree["sparsify"]
    assert flow_config_from_dict(tree).sparsify == SparsifySection()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("sparsify.epochz=3", "default.sparsify.epochz: unknown setting; valid settings of default.sparsify are"),
        ("sparsify.seed=3", "default.sparsify.seed: unknown setting"),  # train.seed seeds it
        ("sparsify.device=cuda", "default.sparsify.device: unknown setting"),
        ("sparsify.enabled=maybe", "default.sparsify.enabled: expected true or false"),
        ("sparsify.epochs=0", "sparsify.epochs must be >= 1, got 0"),
        ("sparsify.epochs=two", "default.sparsify.epochs: expected an integer"),
        ("sparsify.finetune_epochs=-1", "sparsify.finetune_epochs must be >= 0"),
        ("sparsify.lr=2", "sparsify.lr 2 is above 1"),
        ("sparsify.init_std=0", "sparsify.init_std must be > 0"),
        ("sparsify.spike_ratio=1", "sparsify.spike_ratio must be in [0, 1)"),
        ("sparsify.optimizer=sgd", "default.sparsify.optimizer: 'sgd' is not one of ['adam', 'adabelief']"),
        ("sparsify=3", "default.sparsify: expected a mapping of settings"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_flow(FLOWS, "default", [override])
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("override, fragment", [
    ("sparsify.max_rounds=0", "sparsify.max_rounds must be >= 1"),
    ("sparsify.optimizer=sgd", "'sgd' is not one of ['adam', 'adabelief']"),
    ("sparsify.epochz=1", "sparsify.epochz: unknown setting"),
])  # fmt: skip
def test_the_command_line_refuses_a_bad_setting_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, override, fragment):
    write_blobs(tmp_path / "blobs.npz", train=64, test=32)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipeline.cli._prefect_environment", lambda: None)
    monkeypatch.setattr("pipeline.cli._execute", lambda *a, **k: pytest.fail("a run started for a refused setting"))
    code = main(["run", str(FLOWS), "--flow", "lenet5_bmr_weights", "--no-progress", "--set", "data.dataset=npz",
                 "--set", "data.root=blobs.npz", "--set", "model.name=mlp", "--set", override])  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bmrs: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_a_model_whose_weights_bmr_could_not_remove_is_refused_with_the_fix():
    config = load_flow(FLOWS, "default", ["sparsify.enabled=true"])
    single = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"only Linear/Conv2d layer \('1'\) is its output layer.*prune_output_layer=true"):
        check_sparsifiable(config, single)
    check_sparsifiable(load_flow(FLOWS, "default", ["sparsify.enabled=true", "sparsify.prune_output_layer=true"]), single)
    with pytest.raises(ValueError, match="no Linear or Conv2d layer"):
        check_sparsifiable(config, torch.nn.Sequential(torch.nn.Flatten()))
    # The shipped flows' LeNet5 has layers to sparsify (checked before any data is read, as `bmrs run` checks).
    from pipeline.stages.steps import check_model

    shape = (1, 28, 28)
    check_model(load_flow(FLOWS, "lenet5_combined"),
                SimpleNamespace(input_shape=shape, num_classes=10, test=SimpleNamespace(images=torch.zeros(2, *shape))))
