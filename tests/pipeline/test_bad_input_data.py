"""`bmrs run` refuses data it cannot train on faithfully: one `bmrs: error:` line, exit 2, nothing written.

Most cases call ``main`` in this process (a `bmrs` subprocess costs seconds of imports each); one
case runs the real command line, to show that no traceback reaches the terminal.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from prefect_env import prefect_environment

from bmrs.data import load_dataset
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_idx_root(folder: Path) -> Path:
    """A tiny Fashion-MNIST-style root (plain IDX files): 20 training and 10 test images of 10 classes."""
    folder.mkdir(parents=True)
    for prefix, count in (("train", 20), ("t10k", 10)):
        for kind, array in (("images-idx3", np.zeros((count, 28, 28))), ("labels-idx1", np.arange(count) % 10)):
            # IDX: 0x0000 08 <ndim> (unsigned bytes), each dimension as a big-endian int32, the bytes
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())
    return folder


def npz(**arrays: np.ndarray) -> Callable[[Path], list[str]]:
    def write(tmp_path: Path) -> list[str]:
        np.savez(tmp_path / "data.npz", **arrays)
        return ["data.dataset=npz", f"data.root={tmp_path / 'data.npz'}"]

    return write


def stale_cache_empty_root(tmp_path: Path) -> list[str]:
    # A staged copy of other data sits in the cache: it must not stand in for the empty root.
    load_dataset("fashion_mnist", write_idx_root(tmp_path / "other"), cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    return [f"data.root={tmp_path / 'empty'}"]


def image_folder(classes: str, *, damaged: bool = False) -> Callable[[Path], list[str]]:
    def write(tmp_path: Path) -> list[str]:
        for name in classes:
            (tmp_path / "images" / name).mkdir(parents=True)
            for index in range(4):
                Image.new("L", (8, 8), index).save(tmp_path / "images" / name / f"{index}.png")
        if damaged:
            noise = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)
            Image.fromarray(noise).save(tmp_path / "images" / classes[0] / "cut.png")
            data = (tmp_path / "images" / classes[0] / "cut.png").read_bytes()
            (tmp_path / "images" / classes[0] / "cut.png").write_bytes(data[: data.index(b"IDAT") + 12])
        return ["data.dataset=image_folder", f"data.root={tmp_path / 'images'}", "data.val_fraction=0.5"]

    return write


def cache_dir(where: str) -> Callable[[Path], list[str]]:
    def write(tmp_path: Path) -> list[str]:
        (tmp_path / "a_file").write_text("keep me")
        root = write_idx_root(tmp_path / "idx")
        return [f"data.root={root}", f"data.cache_dir={tmp_path / where}"]

    return write


X = np.zeros((12, 4, 4), np.uint8)
CASES = {
    "stale cache, empty root": (stale_cache_empty_root, "does not hold train-images-idx3-ubyte(.gz)"),
    "empty-string root": (lambda tmp_path: ["data.root=''"], "dataset root for fashion_mnist is an empty string"),
    "single-class npz": (npz(x=X, y=np.zeros(12, np.int64)), "every training example has the label 0"),
    "single-class image folder": (image_folder("a"), "every training example has the label 0"),
    "test labels never trained": (
        npz(x=X, y=np.arange(12) % 2, x_test=X[:3], y_test=np.array([0, 1, 2])),
        "the test split has the labels [2], which no training example has",
    ),
    "labels beyond classes": (
        npz(x=X, y=np.arange(12) % 3, classes=np.array(["cat", "dog"])), "names 2 classes but has the label 2"
    ),
    "non-integer labels": (npz(x=X, y=(np.arange(12) % 2).astype(np.float32)), "save y.astype(np.int64)"),
    "x/y lengths differ": (npz(x=X, y=np.arange(11) % 2), "11 labels for 12 images"),
    "test x/y lengths differ": (npz(x=X, y=np.arange(12) % 2, x_test=X[:3], y_test=np.array([0, 1])), "2 labels for 3 images"),
    "truncated PNG": (image_folder("ab", damaged=True), "cut.png is not a readable image (image file is truncated)"),
    "cache_dir is a file": (cache_dir("a_file"), "data.cache_dir) '{tmp}/a_file' is not a folder"),
    "cache_dir under a file": (cache_dir("a_file/cache"), "is not a folder ('{tmp}/a_file' is a file)"),
}


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, case):
    prepare, fragment = CASES[case]
    monkeypatch.chdir(tmp_path)
    settings = [f"output.runs_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *prepare(tmp_path)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(["run", str(REPO / "flows.yaml"), "--flow", "default", "--no-progress",
                 *[arg for setting in settings for arg in ("--set", setting)]])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: "), err
    assert fragment.format(tmp=tmp_path) in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()
    assert snapshot(tmp_path) == before, "nothing written, nothing changed"


def test_truncated_png_from_the_command_line(tmp_path):
    """The case that printed a traceback (exit 1): the real `bmrs` process, its stderr as a user sees it."""
    settings = [*image_folder("ab", damaged=True)(tmp_path), "output.runs_dir=runs"]
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), "--no-progress",
                             *[arg for setting in settings for arg in ("--set", setting)]],
                            cwd=tmp_path, env=prefect_environment(tmp_path), capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: image_folder: "), result.stderr
    assert "cut.png is not a readable image" in lines[0] and "re-save it or remove it from the folder" in lines[0]
    assert not (tmp_path / "runs").exists()
