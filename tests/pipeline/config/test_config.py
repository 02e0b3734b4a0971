"""flows.yaml parsing, --set overrides, and the errors a user sees for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmrs.criteria import BMRSLogUniform, GradientNorm, IncomingWeightNorm
from bmrs.models import build_model
from bmrs.train import KLWeighting
from pipeline.config import ConfigError, load_flow

REPO_FLOWS = Path(__file__).resolve().parents[3] / "flows.yaml"


# The shapes the built-in datasets load as; the flows' layer paths are checked against models of these.
SHIPPED_DATASET_SHAPES = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def test_every_shipped_flow_loads_and_names_layers_its_model_has():
    from types import SimpleNamespace

    import torch

    from pipeline.config import read_flows
    from pipeline.stages.steps import check_model

    with_start_on = []
    for name in read_flows(REPO_FLOWS):
        config = load_flow(REPO_FLOWS, name)
        assert config.name == name
        assert config.data.resolved_root()
        shape = SHIPPED_DATASET_SHAPES[config.data.dataset]
        # A typo in noise.start_on or train.prune_start_by_layer raises here, before any data is read.
        inputs = SimpleNamespace(images=torch.zeros(2, *shape))
        check_model(config, SimpleNamespace(input_shape=shape, num_classes=10, test=inputs))
        if config.noise.start_on:
            with_start_on.append(name)
    assert "lenet5_fmnist_bmrs_n_from_prior" in with_start_on


def test_overrides_reach_every_section():
    config = load_flow(
        REPO_FLOWS,
        "default",
        [
            "train.epochs=3",
            "train.kl_weighting=elbo",
            "train.criterion={name: bmrs_u, p1: 4}",
            "data.root=/somewhere/else",
            "model.name=mlp",
            "model.hidden_width=32",
            "noise.init_log_sigma=-3",
            "export.tolerance=0.001",
            "latency.batch_sizes=[1, 64]",
            "baseline.enabled=false",
            "output.runs_dir=/tmp/x",
        ],
    )
    assert config.train.epochs == 3
    assert config.train.kl_weighting is KLWeighting.ELBO
    assert config.method == "bmrs_u" and config.train.criterion == BMRSLogUniform(p1=4)
    assert config.data.root == "/somewhere/else"
    assert config.model.options() == {"hidden_width": 32, "hidden_layers": 1}
    assert config.noise.init_log_sigma == -3.0
    assert config.export.tolerance == 0.001
    assert config.latency.batch_sizes == (1, 64)
    assert config.baseline.enabled is False
    assert config.output.runs_dir == "/tmp/x"


def test_exponent_notation_without_a_dot_is_a_number():
    # YAML 1.1 reads 1e-3 as a string; it must still reach train.lr as 0.001.
    assert load_flow(REPO_FLOWS, "default", ["train.lr=1e-3"]).train.lr == 0.001
    with pytest.raises(ConfigError, match="finite number"):
        load_flow(REPO_FLOWS, "default", ["train.lr=.nan"])


def test_null_criterion_is_the_dense_method():
    config = load_flow(REPO_FLOWS, "default", ["train.criterion=null"])
    assert config.train.criterion is None and config.method == "none"


def test_a_criterion_is_one_typed_value_in_either_form():
    by_name = load_flow(REPO_FLOWS, "default", ["train.criterion=bmrs_u"]).train.criterion
    assert by_name == BMRSLogUniform()
    by_mapping = load_flow(REPO_FLOWS, "default", ["train.criterion={name: l2, ratio: 0.3}"]).train.criterion
    assert by_mapping == IncomingWeightNorm(ratio=0.3)
    assert load_flow(REPO_FLOWS, "mlp_fmnist_bmrs_u8").train.criterion == BMRSLogUniform(p1=8)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochz=3", "default.train.epochz: unknown setting"),
        ("train.criterion=magic", "unknown pruning criterion 'magic'"),
        ("train.criterion=none", "for the unpruned model write null"),
        ("train.criterion={p1: 4}", "a criterion given as a mapping needs its name"),
        ("train.criterion={name: bmrs_n, p1: 4}", "criterion 'bmrs_n' has no setting 'p1'"),
        ("model.name=resnet", "unknown model 'resnet'"),
        ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
        ("train.lr=fast", "default.train.lr: expected a finite number"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.kl_weighting=strong", "not one of ['elbo', 'layer_mean']"),
        ("train.criterion_settings={p1: 4}", "a criterion now carries its own settings"),
        ("train=3", "expected a mapping"),
        ("noise.start_on=features", "default.noise.start_on: expected a list"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_flow(REPO_FLOWS, "default", [override])
    assert fragment in str(error.value)


def test_unknown_flow_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown flow 'nope'.*choose one of \['default'"):
        load_flow(REPO_FLOWS, "nope")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("flows: [1, 2", "not valid YAML"),
        ("something: else\n", "top-level 'flows:'"),
        ("flows:\n  broken: 3\n", "expected a mapping of sections"),
    ],
)
def test_malformed_flows_file(tmp_path, text, fragment):
    path = tmp_path / "flows.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_flow(path, "broken")


def test_missing_flows_file(tmp_path):
    with pytest.raises(ConfigError, match="no such flows file"):
        load_flow(tmp_path / "absent.yaml", "default")


def test_mlp_presets_and_their_conflicts():
    config = load_flow(REPO_FLOWS, "default", ["model.name=mlp", "model.preset=mnist"])
    assert config.model.options() == {"hidden_width": 100, "hidden_layers": 7}
    agreeing = load_flow(REPO_FLOWS, "default", ["model.name=mlp", "model.preset=cifar10", "model.hidden_width=150"])
    assert agreeing.model.options() == {"hidden_width": 150, "hidden_layers": 5}
    with pytest.raises(ConfigError, match="preset 'mnist' has hidden_width=100 but hidden_width=64 is also given"):
        load_flow(REPO_FLOWS, "default", ["model.name=mlp", "model.preset=mnist", "model.hidden_width=64"])
    with pytest.raises(ConfigError, match="unknown mlp preset 'svhn'"):
        load_flow(REPO_FLOWS, "default", ["model.name=mlp", "model.preset=svhn"])
    with pytest.raises(ConfigError, match=r"hidden_width applies to the mlp only, not to 'lenet5'.*model.hidden_width=null"):
        load_flow(REPO_FLOWS, "default", ["model.hidden_width=64"])


def test_prune_start_by_layer_from_the_command_line():
    config = load_flow(REPO_FLOWS, "default", ["train.epochs=20", "train.prune_start_by_layer={classifier.1: 9, classifier.3: 15}"])
    assert config.train.prune_start_by_layer == {"classifier.1": 9, "classifier.3": 15}
    with pytest.raises(ConfigError, match=r"prune_start_by_layer\['classifier.1'\] must be an epoch from 1 to train.epochs \(5\)"):
        load_flow(REPO_FLOWS, "default", ["train.prune_start_by_layer={classifier.1: 9}"])


def test_lenet5_widths_reach_the_model_and_are_checked_at_load():
    config = load_flow(REPO_FLOWS, "default", ["model.widths=[6, 10, 20, 20]"])
    assert config.model.options() == {"widths": (6, 10, 20, 20)}
    model = build_model(config.model.name, (1, 28, 28), 10, **config.model.options())
    assert model.classifier[1].in_features == 10 * 5 * 5 and model.classifier[3].out_features == 20
    assert load_flow(REPO_FLOWS, "default").model.options() == {}
    with pytest.raises(ConfigError, match=r"lenet5 widths are four integers >= 1.*got \(6, 10, 20\)"):
        load_flow(REPO_FLOWS, "default", ["model.widths=[6, 10, 20]"])
    with pytest.raises(ConfigError, match=r"widths applies to the lenet5 only, not to 'mlp'.*model.widths=null"):
        load_flow(REPO_FLOWS, "default", ["model.name=mlp", "model.widths=[6, 10, 20, 20]"])


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    """A user model module in the current directory, as `bmrs run` sees one next to flows.yaml."""
    import sys

    (tmp_path / "my_config_models.py").write_text(
        "from torch import nn\n"
        "def make(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 8),"
        " nn.ReLU(), nn.Linear(8, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("my_config_models", None)


def test_user_model_and_noise_points_round_trip(factory_dir):
    import yaml

    from bmrs.models import build_model, noise_points_for

    # `[1]` is read by YAML as an integer: nn.Sequential's child names must still work unquoted
    overrides = ["model.name=my_config_models:make", "model.noise_points=[1]", "data.dataset=npz", "data.root=data.npz"]
    config = load_flow(REPO_FLOWS, "default", overrides)
    assert config.model.name == "my_config_models:make" and config.model.noise_points == ("1",)
    assert config.model.options() == {} and config.data.resolved_root() == "data.npz"
    model = build_model(config.model.name, (1, 4, 4), 3, **config.model.options())
    points = noise_points_for(config.model.name, model, config.model.noise_points, input_shape=(1, 4, 4))
    assert [p.source for p in points] == ["1"]
    # the resolved config, written back as a flow, loads to the same config
    tree = config.to_dict()
    tree.pop("name")
    (factory_dir / "flows.yaml").write_text(yaml.safe_dump({"flows": {"default": tree}}))
    assert load_flow(factory_dir / "flows.yaml", "default") == config


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.name=my_config_models:mkae", "has no attribute 'mkae'; its public callables are ['make']"),
        ("model.name=absent_models_xyz:make", "no module 'absent_models_xyz'"),
        ("model.name=my-models:make", "is not of the form package.module:factory"),
        ("model.noise_points=[]", "noise_points is empty"),
        ("model.noise_points=[a, a]", "must be distinct"),
        ("model.noise_points=features.0", "expected a list"),
        ("data.dataset=image_folder", "default.data.root: image_folder has no default location"),
        ("data.dataset=npz", "set data.root (--set data.root=PATH) to an .npz file"),
    ],
)
def test_bad_model_and_data_settings(factory_dir, override, fragment):
    overrides = [override, "data.root=null"] if override.startswith("data.dataset") else [override]
    with pytest.raises(ConfigError) as error:
        load_flow(REPO_FLOWS, "default", overrides)
    assert fragment in str(error.value)
    assert str(error.value).startswith("default.")


def test_post_training_section_defaults_and_the_shipped_flow():
    from bmrs.criteria import ranking_criteria

    default = load_flow(REPO_FLOWS, "default")
    assert default.post_training.enabled is False  # the default flow's stages are unchanged
    # Every criterion with a ranking of its own: snr_ratio's curve would be snr's.
    assert default.post_training.criteria == tuple(cls() for cls in ranking_criteria().values())
    assert "snr_ratio" not in [type(c).registry_name for c in default.post_training.criteria]
    flow = load_flow(REPO_FLOWS, "lenet5_fmnist_post_training")
    section = flow.post_training
    assert section.enabled and section.steps == 10 and section.finetune_epochs == 1 and section.epochs is None
    unpruned = section.train_config(flow.train)  # the model the curves start from: 50 epochs, no pruning
    assert (unpruned.epochs, unpruned.finetune_epochs, unpruned.criterion) == (50, 0, None)
    assert unpruned.lr == flow.train.lr and unpruned.batch_size == flow.train.batch_size


def test_post_training_overrides_reach_the_library_config():
    from pipeline.config import flow_config_from_dict

    config = load_flow(REPO_FLOWS, "default", [
        "post_training.enabled=true", "post_training.criteria=[{name: bmrs_u, p1: 4}, grad]", "post_training.steps=4",
        "post_training.finetune_epochs=0", "post_training.epochs=3", "train.seed=5",
    ])  # fmt: skip
    section = config.post_training
    assert section.criteria == (BMRSLogUniform(p1=4), GradientNorm()) and section.train_config(config.train).epochs == 3
    library = section.for_criterion(section.criteria[0], config.train)
    assert (library.criterion, library.steps, library.finetune_epochs) == (BMRSLogUniform(p1=4), 4, 0)
    assert (library.lr, library.batch_size, library.seed) == (config.train.lr, config.train.batch_size, 5)
    assert flow_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config  # config.json round trip


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("post_training.criteria=[magic]", "unknown pruning criterion 'magic'; choose one of ['bmrs_n', 'bmrs_u', 'etheta', 'grad', 'l2', 'snr', 'snr_ratio']"),
        ("post_training.criteria=[none]", "'none' is not a criterion"),
        ("post_training.criteria=[]", "criteria is empty"),
        ("post_training.criteria=[l2, l2]", "names a criterion twice"),
        ("post_training.criteria=l2", "post_training.criteria: expected a list"),
        ("post_training.criteria=[bmrs_u, {name: bmrs_u, p1: 4}]", "names a criterion twice"),
        ("post_training.criteria=[{name: bmrs_n, p1: 4}]", "criterion 'bmrs_n' has no setting 'p1'"),
        ("post_training.criteria=[3]", "a criterion is a name such as 'bmrs_n'"),
        ("post_training.criterion_settings={l2: {ratio: 0.3}}", "a criterion now carries its own settings"),
        ("post_training.steps=0", "post_training.steps must be an integer >= 1"),
        ("post_training.finetune_epochs=-1", "post_training.finetune_epochs must be an integer >= 0"),
        ("post_training.epochs=0", "epochs must be >= 1, or null for train.epochs"),
        ("post_training.enabled=maybe", "post_training.enabled: expected true or false"),
        ("post_training.stepz=3", "post_training.stepz: unknown setting"),
    ],
)
def test_bad_post_training_settings(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_flow(REPO_FLOWS, "default", [override])
    assert fragment in str(error.value) and str(error.value).startswith("default.post_training")


def test_post_training_criteria_are_checked_against_the_prior_only_when_the_stage_runs():
    # The default list holds BMRS_U at p2 = 23, which needs noise.log_a <= -15.9.
    config = load_flow(REPO_FLOWS, "default", ["noise.log_a=-10", "train.criterion=bmrs_n"])
    assert config.noise.log_a == -10.0
    with pytest.raises(ConfigError, match=r"post_training.criteria\[1\]: criterion 'bmrs_u': p2 = 23"):
        load_flow(REPO_FLOWS, "default", ["noise.log_a=-10", "train.criterion=bmrs_n", "post_training.enabled=true"])
