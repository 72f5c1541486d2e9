# Issue 23's goals run on one GPU, every part in one process after another: the inference rows (bf16 and
# torchao float8 beside diffusers compiled), then bf16 and float8 training from the same init and data order
# with the step's profile, then the loss gap. A part that fails leaves the others to run.
#
#     bash benchmarks/fp8_goals.sh WORK [--tiny]      # results in WORK/*.json, profiles in WORK/*.profile.log
#     TRAIN_STEPS=200 bash benchmarks/fp8_goals.sh WORK   # shorter loss curves (default 300)
#
# Longer than one device call: start it through benchmarks/gpu_chain.sh (docs/benchmarks.md says how). It ends
# with the goals table (benchmarks/fp8_goals_table.py), which reads whatever parts finished.

set -u
work=${1:?usage: fp8_goals.sh WORK [--tiny]}
shift
mkdir -p "$work"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# 2B at 480p with no block recomputed peaks at 87 GiB (one H200, 2026-12-01): an 80 GB card recomputes half
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1)
fraction=0
[ "${mib:-0}" -lt 100000 ] && fraction=0.5
train=(--train-steps "${TRAIN_STEPS:-300}" --compile-blocks --checkpoint-fraction "$fraction" --compile-memory-budget 0.5 --profile 40)
[ "${1:-}" = "--tiny" ] && train=(--train-steps "${TRAIN_STEPS:-300}" --profile 10)
echo "fp8_goals: GPU memory ${mib:-none} MiB; training with ${train[*]}"

python -m benchmarks.fp8_compare inference --out "$work/inference.json" "$@"
python -m benchmarks.fp8_compare train --float8 off --out "$work/train_off.json" "$@" "${train[@]}"
python -m benchmarks.fp8_compare train --float8 rowwise --out "$work/train_rowwise.json" "$@" "${train[@]}"
python -m benchmarks.fp8_compare losses "$work/train_off.json" "$work/train_rowwise.json" --out "$work/loss_gap.json"
python -m benchmarks.fp8_goals_table "$work"
