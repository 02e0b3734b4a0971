#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Fashion-MNIST from Debian, a virtual environment in .venv
# with the project and its test extras. Re-running it is cheap: pip runs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte" ]; then
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup: need root to run 'apt-get install -y dataset-fashion-mnist'; run it as root, or set data.root to your copy" >&2
    exit 2
  fi
  $SUDO apt-get update -qq
  # --reinstall restores the files if the package is registered but its files were removed.
  reinstall=""; dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && reinstall="--reinstall"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $reinstall dataset-fashion-mnist >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.bmrs-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the project into .venv (first time: torch is a large download)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "WARNING: Location" || true
  # torch is left unpinned on purpose: the machine's local torch 2.13.0+cpu wheel cannot load PyPI's torchvision.
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, torch_pruning, onnxruntime, prefect, prefect_dask, distributed" \
    || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
