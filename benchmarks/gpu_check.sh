#!/usr/bin/env bash
# The GPU checks, in one script for a lent GPU machine that reaches no package index or hub
# (the `device` tool: PyTorch with CUDA is there; ~15 minutes of device time per task).
#
# Prepared here first (both folders are git-ignored and travel with `carry`):
#   .whl/        wheels of our pins that the machine lacks or has at other versions
#                (transformers, peft, trl, datasets, dill, multiprocess) and bitsandbytes
#                unpacked into .whl/bnb with only its CUDA 13.0 library (the wheel is 43 MB)
#   .devcarry/   python benchmarks/gpu_models.py pack .devcarry/student2
# Then, there: bash benchmarks/gpu_check.sh      (writes logs and JSON under $OUT)
#
# 1. the QLoRA, LoRA and DPO training tests on the GPU (bf16 / NF4 paths), with the embedded
#    model's 2-layer cut as the tests' student;
# 2. benchmarks/train_vs_trl.py on a SmolLM2-1.7B-shaped student (random weights): bf16 LoRA SFT
#    supervised tokens/s, peak GPU memory, MFU and held-out loss, ours against TRL's configurations;
# 3. benchmarks/gpu_profile.py: where a step of ours spends its time on that student.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false SPROUT_HOME=/tmp/sprout-home
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
cp -r .whl/bnb/. /tmp/site/
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, trl, datasets, bitsandbytes, accelerate, pyarrow
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft',
      peft.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'bitsandbytes',
      bitsandbytes.__version__, 'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/gpu_models.py unpack .devcarry/student2 "$SPROUT_HOME/models/SmolLM2-135M-Instruct" 2>&1 | tail -1

echo "== 1. training tests on the GPU"
start=$(date +%s)
timeout "${TEST_SECONDS:-200}" python3 -m pytest -q -p no:cacheprovider -m "slow or not slow" -rfE --timeout 90 \
  ${TESTS:-tests/test_qlora.py tests/test_train.py tests/test_dpo.py tests/test_packing.py} 2>&1 | tee "$OUT/pytest.log" | tail -40
echo "tests: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"

echo "== 2. bf16 LoRA SFT: ours vs TRL, SmolLM2-1.7B shape"
start=$(date +%s)
python3 benchmarks/gpu_models.py random "$SPROUT_HOME/models/SmolLM2-135M-Instruct" /tmp/m17 smollm2-1.7b 2>&1 | tail -1
timeout "${BENCH_SECONDS:-300}" python3 benchmarks/train_vs_trl.py --model /tmp/m17 --steps "${STEPS:-60}" \
  --batch-size 16 --ours-configs "${OURS_CONFIGS:-default,packing,padded}" \
  --trl-configs "${TRL_CONFIGS:-packing,group_by_length,padding_free,default}" --json "$OUT/train_gpu.json" 2>&1 | grep -v -i warn | tee "$OUT/train_gpu.txt" | tail -30
echo "benchmark: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"

echo "== 3. profile of a training step of ours"
[ "${PROFILE_SECONDS:-90}" = 0 ] && exit 0
timeout "${PROFILE_SECONDS:-90}" python3 benchmarks/gpu_profile.py /tmp/m17 2>&1 | grep -v -i warn \
  | tee "$OUT/profile.txt" | tail -45
