"""``bmrs compare --methods`` specs: what each becomes, its folder, and one clear line for a bad one."""
from __future__ import annotations

import pytest
from compare_cases import FLOW, write_flows

from pipeline.compare.methods import method_config, parse_method, parse_methods
from pipeline.config import ConfigError, load_flow


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    return write_flows(tmp_path_factory.mktemp("flows"))


@pytest.fixture(scope="module")
def base(flows):
    return load_flow(flows, FLOW)


@pytest.mark.parametrize(
    "spec, label, criterion, at_ratio_source",
    [
        ("none", "none", None, False),
        ("bmrs_n", "bmrs_n", {"name": "bmrs_n"}, False),
        ("bmrs_u:8", "bmrs_u-p1=8", {"name": "bmrs_u", "p1": 8}, False),
        ("bmrs_u:p1=4", "bmrs_u-p1=4", {"name": "bmrs_u", "p1": 4}, False),
        ("bmrs_u:p2=20,p1=4.5", "bmrs_u-p1=4.5-p2=20", {"name": "bmrs_u", "p2": 20, "p1": 4.5}, False),
        ("snr:threshold=2", "snr-threshold=2", {"name": "snr", "threshold": 2}, False),
        ("etheta", "etheta", {"name": "etheta"}, False),
        # Fixed-fraction criteria prune at bmrs_n's per-layer fractions unless given a fraction.
        ("l2", "l2", {"name": "l2"}, True),
        ("grad", "grad", {"name": "grad"}, True),
        ("snr_ratio", "snr_ratio", {"name": "snr_ratio"}, True),
        ("snr_ratio:ratio=0.4", "snr_ratio-ratio=0.4", {"name": "snr_ratio", "ratio": 0.4}, False),
        ("l2:ratio=0.3", "l2-ratio=0.3", {"name": "l2", "ratio": 0.3}, False),
        ("l2:layer_ratios={1.noise: 0.5, 3.noise: 0.25}", "l2-layer_ratios=__1.noise__0.5__3.noise__0.25_",
         {"name": "l2", "layer_ratios": {"1.noise": 0.5, "3.noise": 0.25}}, False),
    ],
)  # fmt: skip
def test_a_spec_becomes_the_criterion_the_config_takes(flows, base, spec, label, criterion, at_ratio_source):
    method = parse_method(spec, base)
    assert (method.label, method.criterion, method.at_ratio_source) == (label, criterion, at_ratio_source)
    if not at_ratio_source:
        config = method_config(base, method, seed=5)
        # The very config `--set train.criterion=...` builds, with only the seed changed.
        override = "null" if criterion is None else str(criterion).replace("'", "")
        same = load_flow(flows, FLOW, [f"train.criterion={override}", "train.seed=5"])
        assert config == same
        assert config.train.seed == 5 and config.method == ("none" if criterion is None else criterion["name"])


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("magic", "unknown method 'magic'"),
        ("BMRS_N", "unknown method 'BMRS_N'"),
        ("none:1", "'none' (the dense model) has no settings"),
        ("snr:2", "name:VALUE is shorthand for bmrs_u p1 only; write snr:key=value with one of its settings ['threshold']"),
        ("bmrs_u:", "nothing follows ':'"),
        ("bmrs_u:q=1", "criterion 'bmrs_u' has no setting 'q'; its settings are ['p1', 'p2']"),
        ("bmrs_u:p1=50", "p1 must be a number with 0 <= p1 < p2"),
        ("l2:ratio=1.5", "ratio must be a number in [0, 1)"),
        ("snr:threshold=1,threshold=2", "sets 'threshold' twice"),
        ("snr:threshold=[1", "the value of 'threshold' is not valid YAML"),
        ("snr:threshold=1,oops", "got '1,oops'"),  # the comma is part of the value: not a number
    ],
)
def test_a_bad_spec_is_one_line_naming_it_and_the_known_methods(base, spec, problem):
    with pytest.raises(ValueError) as raised:
        parse_method(spec, base)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"--methods {spec!r}: ")
    assert problem in message or problem.strip("'") in message
    assert "known methods: none, bmrs_n, bmrs_u, snr, etheta, l2, grad, snr_ratio" in message


def test_a_bad_setting_reads_as_the_same_set_override_does(flows, base):
    with pytest.raises(ConfigError) as from_set:
        load_flow(flows, FLOW, ["train.criterion={name: bmrs_u, q: 1}"])
    with pytest.raises(ValueError) as from_spec:
        parse_method("bmrs_u:q=1", base)
    assert str(from_set.value) in str(from_spec.value)


def test_run_order_puts_the_dense_model_first_and_bmrs_n_before_the_methods_at_its_fractions(base):
    methods, added = parse_methods(["grad", "snr", "l2", "none"], base)
    assert [m.label for m in methods] == ["none", "snr", "bmrs_n", "grad", "l2"]
    assert added is not None and added.label == "bmrs_n"
    methods, added = parse_methods(["l2", "bmrs_n", "bmrs_u:4"], base)
    assert [m.label for m in methods] == ["bmrs_n", "bmrs_u-p1=4", "l2"] and added is None
    # A fixed fraction needs no ratio source; bmrs_n with other settings is not it.
    assert parse_methods(["l2:ratio=0.5", "none"], base)[1] is None
    methods, added = parse_methods(["l2", "bmrs_n:margin=1"], base)
    assert [m.label for m in methods] == ["bmrs_n-margin=1", "bmrs_n", "l2"] and added is not None
    assert [m.is_ratio_source for m in methods] == [False, True, False]
    # bmrs_n written with its default settings is bmrs_n: it is the ratio source, nothing is added.
    methods, added = parse_methods(["l2", "bmrs_n:margin=0"], base)
    assert [(m.label, m.is_ratio_source) for m in methods] == [("bmrs_n-margin=0", True), ("l2", False)] and added is None


@pytest.mark.parametrize("specs", [["bmrs_u", "bmrs_u:8"], ["snr", "snr"], ["bmrs_u:8", "bmrs_u:p1=8.0"], ["none", "none"]])
def test_the_same_method_twice_is_refused(base, specs):
    with pytest.raises(ValueError, match="which are the same method; list it once"):
        parse_methods(specs, base)


def test_no_method_is_refused(base):
    with pytest.raises(ValueError, match="--methods needs at least one method"):
        parse_methods([], base)


def test_a_method_at_the_ratio_source_gets_its_fractions_as_layer_ratios(base):
    method = parse_method("grad", base)
    config = method_config(base, method, seed=1, layer_ratios={"1.noise": 0.375, "3.noise": 0.0})
    assert config.train.criterion.layer_ratios == {"1.noise": 0.375, "3.noise": 0.0}
    assert config.train.criterion.ratio_for("1.noise") == 0.375
    with pytest.raises(ValueError, match="needs the per-layer fractions of the 'bmrs_n' run of seed 1"):
        method_config(base, method, seed=1)


def test_widths_of_another_method_makes_it_the_ratio_source(base):
    methods, added = parse_methods(["l2", "snr_ratio", "none", "grad"], base, "bmrs_u:4")
    assert [m.label for m in methods] == ["none", "bmrs_u-p1=4", "l2", "snr_ratio", "grad"] and added.label == "bmrs_u-p1=4"
    assert [m.is_ratio_source for m in methods] == [False, True, False, False, False]
    assert [m.to_dict()["layer_ratios_from"] for m in methods] == [None, None, "bmrs_u:4", "bmrs_u:4", "bmrs_u:4"]
    # Listed under another spelling, the listed run is the source; bmrs_n is then an ordinary method.
    methods, added = parse_methods(["bmrs_n", "bmrs_u:p1=4", "l2"], base, "bmrs_u:4")
    assert [(m.label, m.is_ratio_source) for m in methods] == [("bmrs_n", False), ("bmrs_u-p1=4", True), ("l2", False)]
    assert added is None
    with pytest.raises(ValueError, match="per-layer fractions of the 'bmrs_u:4' run of seed 3"):
        method_config(base, methods[2], 3)


@pytest.mark.parametrize("source", ["none", "l2", "grad", "snr_ratio", "bmr_weights", "bmrs_n+bmr_weights", "nothing"])
def test_widths_of_a_method_without_fractions_of_its_own_is_refused(base, source):
    with pytest.raises(ValueError, match="--widths-of") as error:
        parse_methods(["l2"], base, source)
    assert source in str(error.value) and "\n" not in str(error.value)
