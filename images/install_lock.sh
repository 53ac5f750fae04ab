#!/bin/sh
# Install an image's lock file inside its Dockerfile:  install_lock.sh LOCK
# Every package is pinned (transitive ones included), so pip installs exactly the lock with
# --no-deps, then `pip check` proves it is complete and consistent.
# TORCH_INDEX_URL (a build argument) swaps torch's CUDA flavour: the lock's torch and torchvision
# are PyPI's CUDA 13 wheels (NVIDIA driver >= 580 on the nodes); with e.g.
# https://download.pytorch.org/whl/cu126 (older drivers) or .../whl/cpu (a CPU-only export image)
# the same versions come from that index with that flavour's own CUDA packages, and the lock's
# CUDA 13 packages (nvidia-*, cuda-*, triton) are left out.
# Extra CA certificates arrive as the build secret extra_ca (never stored in a layer).
set -eu
lock="$1"
if [ -s /run/secrets/extra_ca ]; then export PIP_CERT=/run/secrets/extra_ca; fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  grep -Ev '^(torch|torchvision|triton|nvidia-[A-Za-z0-9_.-]+|cuda-[A-Za-z0-9_.-]+)==' "$lock" > /tmp/base.lock
  pip install --no-deps -r /tmp/base.lock
  pins="$(grep -E '^(torch|torchvision)==' "$lock" | tr '\n' ' ')"
  echo "torch from $TORCH_INDEX_URL: $pins"
  # shellcheck disable=SC2086
  pip install --index-url "$TORCH_INDEX_URL" $pins
  rm /tmp/base.lock
else
  pip install --no-deps -r "$lock"
fi
pip check
rm -f "$lock"
