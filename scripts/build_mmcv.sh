#!/usr/bin/env bash
# Build mmcv 2.1.0 with CPU ops against the torch installed in the given Python.
#
# OpenMMLab ships no mmcv 2.1.0 wheel for torch > 2.1, and mmdet 3.3 / mmseg 1.2 refuse mmcv >= 2.2.
# torch >= 2.10 headers need C++20 while mmcv's setup.py hard-codes -std=c++17, so we patch the flag
# in the unpacked sdist. The wheel is cached under a directory named after the torch version, so a
# wheel built against another torch is never reused.
#
# usage: scripts/build_mmcv.sh PYTHON   (prints the wheel path on its last line)
set -euo pipefail
PY="$(cd "$(dirname "${1:?usage: build_mmcv.sh PYTHON}")" && pwd)/$(basename "$1")"
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
CACHE=${BEIT3_WHEEL_CACHE:-$HOME/.cache/beit3-harness/wheels}/torch-$TORCH
mkdir -p "$CACHE"
WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  "$PY" -m pip download -q --no-deps --no-binary :all: mmcv==2.1.0 -d "$WORK" 2>&1 | grep -v "WARNING: Location" || true
  tar xzf "$WORK"/mmcv-2.1.0.tar.gz -C "$WORK"
  sed -i 's/-std=c++1[47]/-std=c++20/g' "$WORK"/mmcv-2.1.0/setup.py
  echo "building mmcv 2.1.0 (CPU ops) against torch $TORCH; this takes ~30 min on 2 cores" >&2
  (cd "$WORK"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps --no-cache-dir -w "$WORK/dist" . ) >&2
  cp "$WORK"/dist/mmcv-2.1.0-*.whl "$CACHE"/
  WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl | head -1)
fi
echo "$WHEEL"
