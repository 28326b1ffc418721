#!/usr/bin/env bash
# One device call's worth of GPU measurements (DEVELOPERS.md "A lent GPU"), run on the lent machine as
#   bash .gpu/remote.sh bash bench/gpu-session.sh "$OUT" [--tune]
# after `npm ci && npm run build && bash ../shared/gpu/pack.sh` here, with carry [".gpu", "dist"].
# --tune first searches the fused forward's blocking for this adapter on a dense problem (stored in
#   OUT/tuning.json, used by the rest of the call); without it the built-in rows are used.
# Then bench/gpu.ts: forward vs SDPA and FlexAttention, forward+backward, the backward on uploaded
# schedules on every case; then LongHeads prefill against full causal attention at 16k-128k tokens; then a
# blocking sweep around the built-in rows (gpu-blocking).
set -uo pipefail
out=${1:?usage: gpu-session.sh OUT [--tune]}
if [ "${2:-}" = --tune ]; then
  node dist/src/cli/main.js profile --tune --tune-rounds 2 --backend webgpu --pattern dense --shape 4096 --heads 32 --dim 64 \
    --tuning-file "$out/tuning.json" --repeat 3 >"$out/tune.txt" 2>&1
  tail -4 "$out/tune.txt"
  export TILEWISE_TUNING="$out/tuning.json"
fi
# the built-in blocking on uploaded (cached) schedules: in-kernel walks against them (other blockings:
# the gpu-blocking sweep at the end)
tunings='[{"analytic":false}]'
node dist/bench/gpu.js --backward --bwd-tunings "$tunings" --out "$out" 2>&1 | tee "$out/gpu-log.txt"
timeout 100 node dist/bench/longheads-prefill.js --backend webgpu --lengths 16384,65536,131072 --heads 8 --dim 64 \
  --budget 4096 --chunk 256 2>&1 | tee "$out/longheads.txt"
# blocking sweep around the built-in rows (bench/gpu-blocking.ts), each row checked against float64 first
node dist/bench/gpu-blocking.js --out "$out" \
  --fwd '[{"rm":1,"tx":8},{"rm":2,"tx":16},{"rm":4,"tx":16},{"rm":4,"tx":8},{"pad":false}]' \
  --bwd '[{"rm":2,"tx":8},{"rm":4,"tx":16},{"pad":false}]' 2>&1 | tee "$out/blocking-log.txt" | grep -v '^forward\|^backward'
