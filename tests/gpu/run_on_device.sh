#!/bin/bash
# Runs the GPU tests on the device machine in one go and prints a short table last.
# Build here first (no GPU needed): make -j2 all, which builds build/tests/gpu/*; carry build
# (or stripped copies of its tests/gpu binaries under another folder, passed as BUILD_DIR) and
# .models (stories260K copied to .models/models/stories260K).
# test_hf_parity.py also needs BUILD_DIR/tests/gpu/parity_tool.
# Usage: tests/gpu/run_on_device.sh [BUILD_DIR]   (logs go to $OUT when set)
#        SLUICE_GPU_TESTS="test_hf_parity" tests/gpu/run_on_device.sh [BUILD_DIR]   (a subset)
#        SLUICE_GPU_TESTS=kernels/attention_test SLUICE_GPU_ONLY=attention_window \
#          tests/gpu/run_on_device.sh [BUILD_DIR]   (attention's window cases alone)
# By default it runs every kernel's test (kernels/<op>_test.c, built as
# BUILD_DIR/tests/gpu/kernels/<op>_test; named kernels/<op>_test in SLUICE_GPU_TESTS), then the
# tests of tests/gpu below.
# test_decode_speed (an older speed run, ~17 GB of GPU memory), test_fp8_speed (FP8 against
# bf16 on Llama-3-8B's shape, ~25 GB) and test_moe_speed (Mixtral 8x7B's and Qwen3-30B-A3B's MoE
# shapes against the roofline, ~8 GB) run only when named there.
BUILD=${1:-build}
OUTDIR=${OUT:-/tmp/sluice_gpu_out}
mkdir -p "$OUTDIR"
export SLUICE_TEST_DATA=${SLUICE_TEST_DATA:-$PWD/.models}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
probe="$BUILD/tests/gpu/kernels/attention_test"
[ -x "$probe" ] || probe="$BUILD/tests/gpu/parity_tool"
. "$(dirname "$0")/../bench/cuda_trio.sh"
cuda_lib_path "$probe"
summary=()
# SLUICE_GPU_TESTS picks a subset, e.g. "test_hf_parity" for the transformers parity test alone.
kernel_tests=""
for f in "$(dirname "$0")"/../../kernels/*_test.c; do kernel_tests+="kernels/$(basename "$f" .c) "; done
TESTS=${SLUICE_GPU_TESTS:-"${kernel_tests}test_gemm test_backend test_kv_fp8 test_sampling_constraints test_prompt_outputs test_batch_invariance test_fp8 test_moe test_families test_comm_nccl test_tp_cuda test_tp_sharded test_hf_parity"}
for t in $TESTS; do
    [ "$t" = test_hf_parity ] && continue
    bin="$BUILD/tests/gpu/$t"
    log="$OUTDIR/${t##*/}.log"
    [ -x "$bin" ] || { summary+=("$t: not built"); continue; }
    echo "== $t"
    start=$(date +%s)
    SLUICE_GPU_BENCH=1 timeout 240 "$bin" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    summary+=("$t: rc=$rc ${last:-no summary} (${secs}s)")
done
# Random-weight models of real widths against transformers in float32 (python3 there has torch,
# transformers and safetensors): needs parity_tool from the same build.
if [[ " $TESTS " == *" test_hf_parity "* ]]; then
    echo "== test_hf_parity.py"
    start=$(date +%s)
    SLUICE_PARITY_TOOL="$PWD/$BUILD/tests/gpu/parity_tool" PYTHONUNBUFFERED=1 timeout 420 \
        python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_hf_parity.py 2>&1 | tee "$OUTDIR/test_hf_parity.log"
    rc=${PIPESTATUS[0]}
    last=$(grep -E '[0-9]+ (passed|failed|skipped)' "$OUTDIR/test_hf_parity.log" | tail -1)
    summary+=("test_hf_parity.py: rc=$rc ${last:-no summary} ($(($(date +%s) - start))s)")
fi
echo
echo "==== summary"
grep -h "FAIL" "$OUTDIR"/*.log | head -40
grep -h "bench\|tok/s\|roofline\|stories260K greedy\|rel err vs" "$OUTDIR"/*.log | head -40
grep -h "^hf parity" "$OUTDIR"/*.log | cut -c1-400 | head -12
printf '%s\n' "${summary[@]}"
