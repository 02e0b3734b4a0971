"""The noise-point survey of torchvision architectures, on a small image."""
from __future__ import annotations

import json

from benchmarks.noise_points import main


def test_survey_of_resnet18_finds_the_block_convs_and_names_the_residual_groups(tmp_path):
    out = tmp_path / "noise_points.json"
    main(["--models", "resnet18", "--size", "32", "--out", str(out)])
    row = json.loads(out.read_text())["models"]["resnet18"]
    # Each basic block's first conv feeds only its own BatchNorm: 8 blocks, 8 carriers.
    assert row["carriers"] == [f"layer{stage}.{block}.conv1" for stage in (1, 2, 3, 4) for block in (0, 1)]
    assert row["layers"] == 21
    assert row["refused_by_cause"]["its output channels are coupled"] == 12  # stem, conv2s, downsamples
    assert row["refused_by_cause"]["its outputs are the model's outputs"] == 1
