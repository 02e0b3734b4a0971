"""The noise-point survey of torchvision architectures, on a small image."""
from __future__ import annotations

import json

from benchmarks.noise_points import main


def test_survey_of_resnet18_finds_the_block_convs_and_names_the_residual_groups(tmp_path):
    out = tmp_path / "noise_points.json"
    main(["--models", "resnet18", "--size", "32", "--out", str(out)])
    row = json.loads(out.read_text())["models"]["resnet18"]
    # Every conv carries noise after its BatchNorm; only the classifier (the classes) does not.
    assert row["layers"] == 21 and len(row["carriers"]) == 20 and "fc" not in row["carriers"]
    assert row["refused_by_cause"] == {"its outputs are the model's outputs": 1}
    # One coupled group per stage's residual stream: its blocks' conv2s, the stem or the downsample.
    assert row["coupled_groups"] == {
        "conv1": ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        **{f"layer{stage}.0.conv2": [f"layer{stage}.0.conv2", f"layer{stage}.0.downsample.0", f"layer{stage}.1.conv2"] for stage in (2, 3, 4)},
    }
