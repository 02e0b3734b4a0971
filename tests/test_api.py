"""The Python API: the README's example runs as written, and ``import bmrs`` stays a cheap facade.

The example runs in a fresh interpreter, as a user's script would, from a scratch directory (it
writes ``out/model.onnx`` relative to where it runs).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import bmrs
from benchmarks.latency import BatchResult, LatencyReport, LatencyStats, Provider, ProviderResult

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="apt-get install -y dataset-fashion-mnist"
)
EXAMPLE = re.compile(r"<!-- api-example:start -->\s*```python\n(?P<code>.*?)```\s*<!-- api-example:end -->", re.DOTALL)
PRINTED = re.compile(
    r"accuracy (?P<accuracy>[\d.]+)%, compression (?P<compression>[\d.]+)%, p50 (?P<p50>[\d.]+) ms at batch 1 "
    r"\((?P<speedup>[\d.]+)x dense\)"
)
# What the facade must not pull in: the heavy runtimes, and the layers above bmrs (an import cycle).
NOT_EAGER = ("prefect", "pipeline", "export", "benchmarks", "onnxruntime", "torch")


def readme_example() -> str:
    found = EXAMPLE.findall(README.read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md must hold exactly one ```python block between the api-example markers"
    return found[0]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # One thread: the suite may share two cores with other jobs, where torch's default thread count
    # oversubscribes them (several times slower); the noise kernels run eagerly, the same math, since
    # compiling them costs more than these few hundred steps.
    env.update(OMP_NUM_THREADS="1", BMRS_COMPILE="0")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@needs_fmnist
def test_readme_api_example_trains_exports_and_measures(tmp_path):
    code = readme_example()
    assert "bmrs.criteria.BMRSLogNormal()" in code and "max_train_examples" in code
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    printed = PRINTED.search(result.stdout)
    assert printed, f"the example's last line is not the summary it promises: {result.stdout[-500:]!r}"
    # Three epochs on 2,000 images: far above chance (10%), far below what the recipes reach.
    assert 50.0 < float(printed["accuracy"]) < 100.0
    assert 0.0 <= float(printed["compression"]) < 100.0
    assert float(printed["p50"]) > 0 and float(printed["speedup"]) > 0
    onnx_file = tmp_path / "out" / "model.onnx"
    assert onnx_file.is_file() and (tmp_path / "out" / "dense.onnx").is_file()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((3, 1, 28, 28), dtype=np.float32)})
    assert logits.shape == (3, 10)


def test_import_bmrs_imports_nothing_heavy(tmp_path):
    probe = f"import sys, json, bmrs; print(json.dumps([m for m in {list(NOT_EAGER)!r} if m in sys.modules]))"
    result = run_python(probe, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_every_public_name_resolves_to_its_owner():
    assert len(set(bmrs.__all__)) == len(bmrs.__all__)
    for name in bmrs.__all__:
        value = getattr(bmrs, name)
        assert value is not None, name
        if name in bmrs._SUBPACKAGES:
            assert value is sys.modules[f"bmrs.{name}"]
        else:
            assert value is getattr(sys.modules[bmrs._NAMES[name]], name)
    assert set(bmrs.__all__) <= set(dir(bmrs))
    assert bmrs.TrainConfig is bmrs.train.TrainConfig and bmrs.NoiseInit is bmrs.models.NoiseInit
    with pytest.raises(AttributeError, match="no_such_verb"):
        bmrs.no_such_verb  # noqa: B018


def test_latency_report_lookups_name_what_was_measured():
    stats = LatencyStats(p50_ms=2.0, p90_ms=3.0, p99_ms=4.0, mean_ms=2.5, runs=5)
    faster = LatencyStats(p50_ms=1.0, p90_ms=1.5, p99_ms=2.0, mean_ms=1.2, runs=5)
    batch = BatchResult(batch_size=1, models=(("dense", stats), ("pruned", faster)), speedup_p50=2.0)
    report = LatencyReport(
        onnxruntime_version=ort.__version__, machine={}, input_shape=(1, 28, 28), model_paths=(), warmup=0, repeats=5,
        seed=0, intra_op_threads=None, thread_spinning=False, results=(ProviderResult(Provider.CPU, (batch,)),),
    )  # fmt: skip
    assert report.batch(1) is batch and report.batch(1, "CPUExecutionProvider") is batch
    assert report.batch(1).stats("pruned") is faster
    with pytest.raises(ValueError, match=r"batch size 256 .*\('CPUExecutionProvider', 1\)"):
        report.batch(256)
    with pytest.raises(ValueError, match=r"no model 'sliced' .*\['dense', 'pruned'\]"):
        batch.stats("sliced")
