"""``pipeline/`` is the only layer that knows the orchestrators: every module of ``bmrs/`` and
``export/``, and the measurement modules of ``benchmarks/``, imports in an interpreter where Prefect,
prefect-dask and Dask cannot be imported at all, and none of them is loaded on the way. So is
``pipeline.cache``, which Dask workers and the reuse checks import. A fresh interpreter, since this
one has Prefect loaded already (about 15 s: it imports every module once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = ("prefect", "prefect_dask", "dask", "distributed")

class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)", name=name)
        return None

sys.meta_path.insert(0, Unimportable())
names = []
for package in ("bmrs", "export"):
    module = importlib.import_module(package)
    names.append(package)
    names += [info.name for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")]
from pipeline.cache import MEASUREMENT_MODULES
names += [f"benchmarks.{name}" for name in (*MEASUREMENT_MODULES, "plots")] + ["pipeline.cache"]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
print(json.dumps({"imported": names, "failed": failed,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_libraries_and_measurements_import_without_prefect_or_dask(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", BMRS_COMPILE="0")
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["failed"] == {} and found["loaded"] == []
    imported = set(found["imported"])
    for expected in ("bmrs.train.loop", "bmrs.criteria.bmr", "export.onnx_export", "export.slicing",
                     "benchmarks.latency", "benchmarks.energy_pair", "benchmarks.stage_energy"):  # fmt: skip
        assert expected in imported
    assert len([name for name in imported if name.startswith("bmrs.")]) > 20
