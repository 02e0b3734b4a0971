"""Where noise can go in torchvision's architectures, and what finding and checking it costs.

    python -m benchmarks.noise_points [--models resnet18 mobilenet_v2 vit_b_16] [--size 224]

Each model is built untrained (no weights are downloaded) with 10 classes, traced once by
``bmrs.models.structures.analyse_structures`` (which Linear/Conv2d layers can carry noise, which of
them form coupled groups decided as one, and why the others cannot), given noise on every layer that can, and checked by
``export.slicing.check_sliceable`` (masked == sliced under randomised normalisation statistics), as
a run does before training. Results go to ``benchmarks/results/noise_points.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
import torchvision

from bmrs.models import insert_noise
from bmrs.models.structures import analyse_structures
from export.slicing import check_sliceable

RESULTS = Path(__file__).parent / "results" / "noise_points.json"


def survey(name: str, size: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    example = torch.randn(1, 3, size, size)
    started = time.perf_counter()
    structures = analyse_structures(model, example)
    analysed = time.perf_counter() - started
    insert_noise(model, structures.default_points())
    started = time.perf_counter()
    check_sliceable(model, example)
    checked = time.perf_counter() - started
    # The first clause of each reason ("its output channels are coupled with ...") groups the causes.
    causes = Counter(reason.split(" (")[0].split(":")[0].split(" with ")[0] for reason in structures.skipped().values())
    return {
        "layers": len(structures.verdicts),
        "carriers": structures.carriers(),
        "coupled_groups": {name: list(members) for name, members in structures.groups().items()},
        "refused_by_cause": dict(causes),
        "analyse_seconds": round(analysed, 2),
        "check_seconds": round(checked, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "vit_b_16"])
    parser.add_argument("--size", type=int, default=224, help="image side (vit_b_16 needs 224)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {}
    for name in args.models:
        results[name] = survey(name, args.size)
        row = results[name]
        print(f"{name}: {len(row['carriers'])} of {row['layers']} layers can carry noise; refused: {row['refused_by_cause']}; "
              f"analyse {row['analyse_seconds']} s, check {row['check_seconds']} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "torch": torch.__version__, "models": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
