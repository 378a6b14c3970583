#!/usr/bin/env bash
# One pass of the GPU benchmarks at 7B shapes (random bf16 weights, no download), each part under its own time
# limit so that one slow part cannot starve the rest; results and one log go to OUT_DIR.
#   bash benchmarks/gpu_suite.sh OUT_DIR
# MISTRAL / MAMBA / DEVICE / PYTHON override the presets and device (e.g. tiny-mistral, tiny-mamba2, cpu to try it here).
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")"
mistral=${MISTRAL:-mistral-7b-v0.3}
mamba=${MAMBA:-mamba-codestral-7b-v0.1}
device=${DEVICE:-cuda}
log="$out/suite.log"
part() {  # part SECONDS NAME ARGS...: run one benchmark under a time limit, logging its output
    local limit=$1 name=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "${PYTHON:-python3}" "$@" --device "$device" --out "$out/$name.json" 2>&1 | grep -v "falling back" | tee -a "$log"
    echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}
part 140 batched_mistral batched_throughput.py --preset "$mistral" --prompts 32 --new-tokens 24 --repeats 1 --thresholds 0.5
part 140 batched_mamba batched_throughput.py --preset "$mamba" --prompts 32 --new-tokens 16 --repeats 1 --thresholds 0.5
part 50 overhead decode_overhead.py --preset "$mistral" --preset "$mamba" --new-tokens 32 --repeats 3
part 80 speedup_mistral realised_speedup.py --preset "$mistral" --new-tokens 32 --repeats 3
part 80 speedup_mamba realised_speedup.py --preset "$mamba" --new-tokens 32 --repeats 3
part 60 head_cost head_cost.py --preset "$mistral" --preset "$mamba" --dtype bfloat16 --repeats 5
