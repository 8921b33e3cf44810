#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks into DIR (default .whl), for `gpu_checks.sh --wheels DIR`.
#
#   bash benchmarks/gpu_wheels.sh            # here, with PyPI reachable; then carry .whl to the GPU machine
#
# The GPU machine (Python 3.12, torch 2.11, transformers 5.17, no diffusers) reaches no registry.
# Carried, installed there with --no-deps over its own packages: transformers (this project's
# floor is 5.18), diffusers (absent) and regex (transformers 5.24 checks regex >= 2025.10.22 at
# import). The versions are the ones the CPU suite runs. About 21 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
mkdir -p "$DIR"
grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude # never committed
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	-d "$DIR" transformers==5.24.0 diffusers==0.42.1 regex==2026.11.19
ls -l "$DIR"
