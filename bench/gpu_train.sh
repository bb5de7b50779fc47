#!/usr/bin/env bash
# The GPU training check of docs/training.md ("On a GPU"): tunesmith vs TRL on one CUDA GPU, then the
# training tests on that GPU. Run from the repository root on a machine with a GPU and no registry:
#   .whl/         wheels of the Python packages the machine lacks, for its Python 3.12, made here with
#                 python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl peft==0.21.2 \
#                   accelerate==1.16.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 \
#                   pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9 gguf==0.19.0
#                 The machine's own transformers (5.17), huggingface_hub and tokenizers are used: carrying
#                 transformers 5.25 brought huggingface_hub 2.x (httpx2) and `kernels`, with which transformers
#                 fetches hub kernels for training on CUDA and fails offline (seen 2026-12-04).
#   .gpu/smollm2-135m/   config and tokenizer of the default model (its weights are too large to travel)
# Logs go to $OUT (default bench/out/gpu). STEPS, SKIP_LARGE=1 and SKIP_TESTS=1 trim the run.
set -u
OUT=${OUT:-bench/out/gpu}
STEPS=${STEPS:-30}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
rm -rf /tmp/site   # a warm machine keeps the last call's packages; --upgrade would not remove extra ones
if [ -d "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# USE_HUB_KERNELS=NO: with `kernels` installed, transformers 5 fetches CUDA kernels from the hub for every
# from_pretrained (TRL's too); tunesmith passes use_kernels=False itself (models/load.py).
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TUNESMITH_HOME=/tmp/tunesmith-home TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 USE_HUB_KERNELS=NO
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "
import importlib, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())
for m in ['transformers', 'peft', 'trl', 'accelerate', 'datasets', 'pyarrow', 'pydantic']:
    try: print(m, importlib.import_module(m).__version__)
    except Exception as e: print(m, 'FAILED', type(e).__name__, e)
"
python3 bench/random_model.py --like .gpu/smollm2-135m --out /tmp/m135 || exit 1
# The tests' tokenizer fixture reads the default model's converted folder: the random copy stands in for it
# (slow tests, which need the real weights, are not run here).
mkdir -p "$TUNESMITH_HOME/models" && cp -r /tmp/m135 "$TUNESMITH_HOME/models/SmolLM2-135M-Instruct" &&
    echo '{"format_version": 1, "source": "bench/random_model.py"}' > "$TUNESMITH_HOME/models/SmolLM2-135M-Instruct/tunesmith.json"
# On a GPU TRL's default configuration is its bf16 one (SFTConfig turns bf16 on there): not run twice.
timeout 200 python3 bench/train_throughput.py --model /tmp/m135 --steps "$STEPS" --micro 24 \
    --systems trl_bf16,trl_bf16_packing,tunesmith 2>&1 | tee "$OUT/train_135m.log"
timeout 60 python3 bench/train_throughput.py --model /tmp/m135 --steps "$STEPS" --micro 6 --systems tunesmith 2>&1 \
    | tee "$OUT/train_135m_micro6.log"
if [ "${SKIP_LARGE:-0}" != 1 ]; then
    python3 bench/random_model.py --like .gpu/smollm2-135m --preset smollm2-1.7b --out /tmp/m1700 &&
    timeout 180 python3 bench/train_throughput.py --model /tmp/m1700 --steps "$STEPS" --micro 24 \
        --systems trl_bf16,trl_bf16_packing,tunesmith 2>&1 | tee "$OUT/train_1.7b.log"
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout 90 python3 -m pytest -q -p no:cacheprovider --timeout 60 -o addopts="" -m "not slow and not acceptance" tests/train/test_engine.py \
        tests/train/test_loss.py tests/train/test_fused_lora.py tests/train/test_precision.py tests/train/test_outputs.py \
        tests/train/test_preference_training.py 2>&1 | tee "$OUT/tests_train_gpu.log" | tail -40
fi
