"""``bmrs compare --methods`` with BMR on weights: ``bmr_weights`` alone and ``<criterion>+bmr_weights``,
their folders, what each run's config is, and one clear line for a bad spec."""
from __future__ import annotations

import pytest
from compare_cases import FLOW, write_flows

from pipeline.compare.methods import method_config, parse_method, parse_methods
from pipeline.config import load_flow


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    return write_flows(tmp_path_factory.mktemp("flows"))


@pytest.fixture(scope="module")
def base(flows):
    return load_flow(flows, FLOW)


@pytest.mark.parametrize(
    "spec, label, method, criterion, override",
    [
        ("bmr_weights", "bmr_weights", "bmr_weights", None, "null"),
        ("bmrs_n+bmr_weights", "bmrs_n+bmr_weights", "bmrs_n+bmr_weights", {"name": "bmrs_n"}, "bmrs_n"),
        ("bmrs_u:8+bmr_weights", "bmrs_u-p1=8+bmr_weights", "bmrs_u+bmr_weights", {"name": "bmrs_u", "p1": 8},
         "{name: bmrs_u, p1: 8}"),
        ("l2:ratio=0.3 + bmr_weights", "l2-ratio=0.3+bmr_weights", "l2+bmr_weights", {"name": "l2", "ratio": 0.3},
         "{name: l2, ratio: 0.3}"),
    ],
)  # fmt: skip
def test_a_weights_spec_becomes_the_criterion_and_sparsify_on(flows, base, spec, label, method, criterion, override):
    parsed = parse_method(spec, base)
    assert (parsed.label, parsed.name, parsed.criterion, parsed.sparsify) == (label, method, criterion, True)
    config = method_config(base, parsed, seed=5)
    same = load_flow(flows, FLOW, [f"train.criterion={override}", "sparsify.enabled=true", "train.seed=5"])
    assert config == same and config.method == method


def test_every_method_says_whether_it_sparsifies_whatever_the_flow_says(flows):
    enabled = load_flow(flows, FLOW, ["sparsify.enabled=true", "sparsify.epochs=2"])
    for spec, method in (("none", "none"), ("bmrs_n", "bmrs_n"), ("bmr_weights", "bmr_weights")):
        config = method_config(enabled, parse_method(spec, enabled), seed=0)
        assert config.method == method and config.sparsify.epochs == 2  # the flow's settings, the method's switch


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("+bmr_weights", "nothing precedes '+bmr_weights'"),
        ("none+bmr_weights", "write bmr_weights alone"),
        ("bmr_weights+bmr_weights", "write bmr_weights alone"),
        ("bmrs_n+bmr_weights+bmr_weights", "names +bmr_weights twice"),
        ("bmr_weights:epochs=3", "its settings are the flow's sparsify section (--set sparsify.key=value)"),
        ("magic+bmr_weights", "unknown method 'magic'"),
        ("bmrs_n+weights", "unknown method 'bmrs_n+weights'"),
    ],
)
def test_a_bad_weights_spec_is_one_line_naming_it_and_the_known_methods(base, spec, problem):
    with pytest.raises(ValueError) as raised:
        parse_method(spec, base)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"--methods {spec!r}: ") and problem in message
    assert "known methods: none, bmrs_n, bmrs_u, snr, etheta, l2, grad, snr_ratio, bmr_weights" in message


def test_run_order_labels_and_the_ratio_source(base):
    methods, added = parse_methods(["l2+bmr_weights", "bmrs_n+bmr_weights", "bmr_weights", "none"], base)
    assert [m.label for m in methods] == ["bmr_weights", "none", "bmrs_n+bmr_weights", "bmrs_n", "l2+bmr_weights"]
    # l2 prunes at plain bmrs_n's fractions: bmrs_n followed by BMR on weights is another method.
    assert added is not None and added.label == "bmrs_n" and not added.sparsify
    assert [m.is_ratio_source for m in methods] == [False, False, False, True, False]
    assert parse_methods(["bmrs_n", "bmrs_n+bmr_weights"], base)[1] is None
    config = method_config(base, methods[-1], seed=0, layer_ratios={"1.noise": 0.5, "3.noise": 0.25})
    assert config.method == "l2+bmr_weights" and config.train.criterion.layer_ratios == {"1.noise": 0.5, "3.noise": 0.25}


@pytest.mark.parametrize("specs", [["bmr_weights", "bmr_weights"], ["bmrs_u:8+bmr_weights", "bmrs_u:p1=8.0+bmr_weights"]])
def test_the_same_weights_method_twice_is_refused(base, specs):
    with pytest.raises(ValueError, match="which are the same method; list it once"):
        parse_methods(specs, base)
