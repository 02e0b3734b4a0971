"""flows.yaml parsing, --set overrides, and the errors a user sees for bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from bmrs.train import KLWeighting
from pipeline.config import ConfigError, load_flow

REPO_FLOWS = Path(__file__).resolve().parents[2] / "flows.yaml"


def test_every_shipped_flow_loads():
    from pipeline.config import read_flows

    for name in read_flows(REPO_FLOWS):
        config = load_flow(REPO_FLOWS, name)
        assert config.name == name
        assert config.data.resolved_root()


def test_overrides_reach_every_section():
    config = load_flow(
        REPO_FLOWS,
        "default",
        [
            "train.epochs=3",
            "train.kl_weighting=elbo",
            "train.criterion=bmrs_u",
            "train.criterion_settings={p1: 4}",
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
    assert config.method == "bmrs_u" and config.train.criterion_settings == {"p1": 4}
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


def test_none_method_means_no_noise():
    assert load_flow(REPO_FLOWS, "default", ["train.criterion=none"]).train.criterion is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochz=3", "default.train.epochz: unknown setting"),
        ("train.criterion=magic", "unknown method 'magic'"),
        ("model.name=resnet", "unknown model 'resnet'"),
        ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
        ("train.lr=fast", "default.train.lr: expected a finite number"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.kl_weighting=strong", "not one of ['elbo', 'layer_mean']"),
        ("train.criterion_settings={p1: 4}", "bmrs_n has no such setting"),
        ("train=3", "expected a mapping"),
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
