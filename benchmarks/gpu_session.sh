#!/usr/bin/env bash
# What one lent GPU session runs (the device tool; CI never has a GPU): the fixture world's VAE, base and
# LoRAs trained with the GPU profile (python -m fixtures.build --profile gpu), which caps each stage's wall
# time to fit a lease. The embedder and the measurements then run on the CPU here. Wheels for what the GPU
# image lacks travel in .whl/. Results land in $OUT (the device tool brings them back).
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }

WORLD_BUILD_THREADS=8 timeout "${BASE_TIMEOUT:-300}" python3 -m fixtures.build --profile gpu \
    --stage vae --stage base --stage refine >"$OUT/base.log" 2>&1
status=$?
echo "vae+base: exit $status after $(elapsed) s"
grep -E "saved|ms a step|step +[0-9]+/[0-9]+ (mse|loss)" "$OUT/base.log" | awk 'NR % 8 == 1' | tail -16
grep -A 20 "profile of steps" "$OUT/base.log" | cut -c1-160
tail -3 "$OUT/base.log"
tar czf "$OUT/base.tgz" fixtures/world/base fixtures/manifest.json
[ $status -eq 0 ] || exit $status

# Many small LoRA trainings share the GPU: MPS lets their kernels run side by side instead of time-sliced.
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d \
        && timeout 40 python3 -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
    echo "MPS on after $(elapsed) s"
else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS off after $(elapsed) s"
fi
timeout "${LORA_TIMEOUT:-240}" python3 -m fixtures.build --profile gpu --stage loras --jobs "${LORA_JOBS:-20}" \
    >"$OUT/loras.log" 2>&1
echo "loras: exit $? after $(elapsed) s"
grep -E "^\[.*/[0-9]+ [a-z_]+: loss" "$OUT/loras.log" | tail -22
grep -E "step +[0-9]+/" "$OUT/loras.log" | tail -3
tar czf "$OUT/loras.tgz" fixtures/world/loras fixtures/manifest.json
echo "done after $(elapsed) s"
