#!/usr/bin/env bash
# Issue 13's scale numbers: build one rank of a very large layout on this machine with
# `llmpre plan --materialize` (the trainer's own code, no peers) and record the measured
# bytes, the build time and the peak resident memory (also from /usr/bin/time).
#   bash bench/scale/materialize.sh [OUT_DIR]      (default: bench/scale/out)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/scale/out}
mkdir -p "$out"
llmpre=${LLMPRE:-.venv/bin/llmpre}
common="--seq-length 4096 --micro-batch 1 --bf16 --fp16-opt-level O2 --recompute --materialize"
run() {
  local name=$1; shift
  echo "== $name: llmpre plan $*" | tee "$out/$name.txt"
  /usr/bin/time -v "$llmpre" plan "$@" >>"$out/$name.txt" 2>"$out/$name.time" || { cat "$out/$name.time"; exit 1; }
  grep -A12 "^materialized" "$out/$name.txt"
  grep "Maximum resident set size\|Elapsed (wall clock)" "$out/$name.time"
}
run llama2-70b-rank0   --model llama2-70b --tp 8 --pp 8 --sharding 4 --stage 1 $common --rank 0
run llama2-70b-rank255 --model llama2-70b --tp 8 --pp 8 --sharding 4 --stage 1 $common --rank 255
run qwen-72b-rank0     --model qwen-72b   --tp 8 --pp 8 $common --rank 0
run qwen-72b-rank63    --model qwen-72b   --tp 8 --pp 8 $common --rank 63
run gpt3-175b-rank0    --model gpt3-175b-en --tp 8 --pp 16 --sharding 4 --stage 1 $common --rank 0
run gpt3-175b-rank511  --model gpt3-175b-en --tp 8 --pp 16 --sharding 4 --stage 1 $common --rank 511
# issue 14: DeepSeek-V3's 61 layers on pp16 (uneven split 3,3,4x13,3), experts over ep 64 of the
# 64 sharding ranks (1024 ranks); rank 0 holds the embedding and the three dense layers, rank 1023
# (the plan's peak stage) MoE layers 58-60, the final norm and the LM head
run deepseek-v3-pp16-rank0    --model deepseek-v3 --pp 16 --expert_parallel_degree 64 --sharding 64 --stage 1 $common --rank 0
run deepseek-v3-pp16-rank1023 --model deepseek-v3 --pp 16 --expert_parallel_degree 64 --sharding 64 --stage 1 $common --rank 1023
