#!/usr/bin/env bash
# Wheels that bench/gpu.py needs on the device machine and its image lacks (or holds in another version):
# its Python is 3.12 and its transformers 5.17, prefer is tested on 5.24. Downloads them into .whl/ (ignored by
# git; a device call carries it: docs/benchmarks.md, "On a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.24.0 omegaconf==2.4.0 pycodestyle==2.15.0 pysbd==0.3.4 regex==2026.11.19
ls -l .whl
