"""One real multi-seed `bmrs run` with post-training curves, shared by the tests that read its output.

Every `bmrs run` process pays Prefect's start-up (and a fresh PREFECT_HOME its database set-up), so
the post-training and multi-seed tests share this single run of a tiny MLP on synthetic blobs.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect_env import prefect_environment

from pipeline_data import REPO, write_blobs


# The smallest budget that still exercises every stage: 1 epoch, a 24-wide MLP, 2 curve steps.
TINY = [
    "--no-progress",
    "--set", "data.dataset=npz", "--set", "data.root=blobs.npz",
    "--set", "model.name=mlp", "--set", "model.hidden_width=24",
    "--set", "train.epochs=1", "--set", "train.finetune_epochs=0", "--set", "train.lr=0.01",
    "--set", "train.criterion={name: l2, ratio: 0.3}",
    "--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "latency.batch_sizes=[1]",
    "--set", "post_training.enabled=true", "--set", "post_training.criteria=[bmrs_n, l2]",
    "--set", "post_training.steps=2",
    "--set", "energy.window_s=0.2", "--set", "energy.rounds=1",
]  # fmt: skip


@dataclass(frozen=True)
class SeedGroup:
    cwd: Path  # where `bmrs run` ran: data.root and runs/ are relative to it
    env: dict[str, str]
    group_dir: Path
    result: subprocess.CompletedProcess

    def bmrs(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=False, cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def seed_group(tmp_path_factory) -> SeedGroup:
    """``bmrs run flows.yaml --flow default TINY --seeds 0 1`` in a fresh folder."""
    cwd = tmp_path_factory.mktemp("seed_group")
    write_blobs(cwd / "blobs.npz")
    env = prefect_environment(cwd)
    command = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), "--flow", "default", *TINY, "--seeds", "0", "1"]
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    groups = list((cwd / "runs" / "default").glob("*")) if (cwd / "runs" / "default").is_dir() else []
    assert result.returncode == 0 and len(groups) == 1, result.stderr
    return SeedGroup(cwd, env, groups[0], result)
