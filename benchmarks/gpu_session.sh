#!/usr/bin/env bash
# What one lent GPU session runs (the device tool; CI never has a GPU): the fixture world's LoRAs trained
# on CUDA, then the SD 1.5-sized probe benchmark. Wheels for what the GPU image lacks travel in .whl/.
# Results land in $OUT (the device tool brings them back).
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"

started=$(date +%s)
OMP_NUM_THREADS=1 timeout "${LORA_TIMEOUT:-330}" python3 -m fixtures.build --stage loras --device cuda \
    --lora-steps "${LORA_STEPS:-2000}" --jobs "${LORA_JOBS:-10}" >"$OUT/loras.log" 2>&1
echo "loras: exit $? after $(( $(date +%s) - started )) s"
grep -E "^\[.*(/[0-9]+ [a-z_]+: loss|done in)" "$OUT/loras.log" | tail -24
tar czf "$OUT/loras.tgz" fixtures/world/loras fixtures/manifest.json

timeout "${BENCH_TIMEOUT:-260}" python3 -m benchmarks.sd15_probe --loras 3 2>&1 \
    | grep -v -E "Loading|Writing|torchvision|should be kept in float32" | tee "$OUT/sd15_probe.txt"
