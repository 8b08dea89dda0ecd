#!/usr/bin/env bash
# The CUDA checks, on a machine with an NVIDIA GPU and PyTorch, transformers, pytest and hypothesis
# installed (nothing is downloaded): the CUDA tests (fused kernels against the portable one, the
# engine and an extended model on the GPU against the CPU), then the speed of each method on a
# model of Llama 3.2 1B's shape at 16k and 32k tokens. Writes to ${OUT:-results/device}.
#
#     bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/device}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible"; print(torch.__version__, torch.cuda.get_device_name())'
python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py 2>&1 | tee "$out/cuda-tests.log"
python3 benchmarks/cuda_speed.py --lengths 16k,32k --out "$out/cuda-speed.jsonl"
