#!/usr/bin/env bash
# The GPU checks the issues ask for (#5, #6, #7), in one run (about 12 minutes on one H100).
# Needs a CUDA torch, transformers >= 5.24, triton; random weights, nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}:$PWD"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run() { echo; echo "### $*"; timeout 240 python "$@" 2>&1 | grep -v "Loading weights"; }
# 6: the fused sampler at 2 x {1,16,64} x 16384, then with top-k/top-p and logprobs
run benchmarks/bench_sampler.py
run benchmarks/bench_sampler.py --top-k 50 --top-p 0.9 --logprobs
# 6: generation on Janus-Pro-7B shapes, random bf16, 16 prompts: tokens/s, ms/step vs roofline
run benchmarks/bench_generation.py --arch 7b --batch 16 --repeats 1
# 5: SFT train step on Janus-Pro-1B shapes: tokens/s and MFU
run benchmarks/bench_sft.py --arch 1b --batch 8 --steps 10
run benchmarks/bench_grpo.py --arch 1b --group 7 --prompts 2 --micro-batch 7 --steps 1
